"""Principals namespaced by backend (issue 14): a local ``alice`` and the directory ``alice``
are two principals for grants, sessions and blocks; schema 5 migrates older stores; blocking
a directory principal ends its sessions and refuses its sign-ins.

The store assertions run against the in-memory fake and the real SQLite store (synchronous
pools, no reactor); the sign-in ones through ``SessionManager`` with a ``Clock``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from smartsyncd.auth.identity import Identity, SignInRefused, UnknownUser
from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.passwords import hash_password
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core.errors import AuthFailed, SessionExpired
from smartsyncd.core.principals import explicit_principal
from smartsyncd.storage import schema
from smartsyncd.storage.api import Grant, PrincipalBlock, SessionRecord
from smartsyncd.storage.sqlite import SQLITE
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_sqlite_store, open_sync_store, run_sync

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SID = "S-1-5-21-1000-2000-3000-1104"
AD_ALICE = "ad:" + SID


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
    from pg import PgCluster

    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: Any, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryServerStore(now=lambda: T0)
        return
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_cluster").fresh_url()
        s = open_sync_store(str(tmp_path / "data"), database_url=url, now=lambda: T0)
    else:
        s = open_sync_sqlite_store(str(tmp_path / "data"), now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


def session(token: str, user: str, principal: str, backend: str = "ldap") -> SessionRecord:
    return SessionRecord(
        id="s-" + token, token_hash=token * 64, user=user, groups=(), backend=backend,
        created_at=T0, expires_at=T0 + timedelta(days=1), refreshed_at=T0, principal=principal,
    )


def test_explicit_principal_forms() -> None:
    assert explicit_principal(SID) == AD_ALICE
    assert explicit_principal(AD_ALICE) == AD_ALICE
    assert explicit_principal("local:alice") == "local:alice"
    for name in ("alice", "FIRM\\alice", "alice@firm.example", "local:", "ad:alice", "S-1-x"):
        assert explicit_principal(name) is None, name


def test_a_local_and_a_directory_alice_do_not_share_grants(store: Any) -> None:
    async def body() -> None:
        await store.create_engagement("acme", "")
        await store.create_engagement("beta", "")
        await store.grant(Grant("acme", "user", "local:alice", "alice", "admin"))
        await store.grant(Grant("beta", "user", AD_ALICE, "alice", "reader"))
        assert await store.role_for("acme", "local:alice", []) == "admin"
        assert await store.role_for("acme", AD_ALICE, []) is None
        assert await store.role_for("beta", AD_ALICE, []) == "reader"
        assert await store.role_for("beta", "local:alice", []) is None
        assert await store.role_for("acme", "alice", []) is None  # a bare name is nobody

    run_sync(body())


def test_by_name_grants_are_claimed_once_keeping_the_stronger_role(store: Any) -> None:
    async def body() -> None:
        await store.create_engagement("acme", "")
        await store.create_engagement("beta", "")
        await store.grant(Grant("acme", "user", "name:alice", "alice", "editor"))
        await store.grant(Grant("beta", "user", "name:alice", "alice", "reader"))
        await store.grant(Grant("beta", "user", AD_ALICE, "alice", "admin"))
        assert await store.claim_name_grants(AD_ALICE, "bob") == 0
        assert await store.claim_name_grants(AD_ALICE, "alice") == 2
        assert await store.role_for("acme", AD_ALICE, []) == "editor"
        assert await store.role_for("beta", AD_ALICE, []) == "admin"  # not lowered
        assert [g.principal for g in await store.list_grants()] == [AD_ALICE, AD_ALICE]
        assert await store.claim_name_grants("ad:S-1-5-21-9-9-9-9", "alice") == 0  # gone

    run_sync(body())


def test_blocking_a_directory_principal_ends_its_sessions_only(store: Any) -> None:
    async def body() -> None:
        await store.add_user("alice", "h")
        await store.create_engagement("acme", "")
        await store.grant(Grant("acme", "user", AD_ALICE, "alice", "editor"))
        await store.grant(Grant("acme", "user", "name:alice", "alice", "reader"))
        await store.grant(Grant("acme", "user", "local:alice", "alice", "reader"))
        await store.create_session(session("a", "alice", AD_ALICE))
        await store.create_session(session("b", "alice", "name:alice"))  # pre-schema-5
        await store.create_session(session("c", "alice", "local:alice", "local"))

        await store.block_principal(PrincipalBlock(AD_ALICE, "alice", "disabled", T0))
        assert [s.principal for s in await store.list_sessions()] == ["local:alice"]
        with pytest.raises(AuthFailed):
            await store.create_session(session("d", "alice", AD_ALICE))
        assert await store.role_for("acme", AD_ALICE, []) == "editor"  # disabled keeps grants
        assert (await store.principal_block(AD_ALICE)).state == "disabled"

        await store.block_principal(PrincipalBlock(AD_ALICE, "alice", "removed", T0))
        assert await store.role_for("acme", AD_ALICE, []) is None
        assert [g.principal for g in await store.list_grants()] == ["local:alice"]
        assert [b.state for b in await store.list_principal_blocks()] == ["removed"]

        assert await store.unblock_principal(AD_ALICE) is True
        assert await store.unblock_principal(AD_ALICE) is False
        await store.create_session(session("d", "alice", AD_ALICE))
        assert len(await store.list_sessions("alice")) == 2
        assert [s.id for s in await store.list_sessions(AD_ALICE)] == ["s-d"]

    run_sync(body())


def test_removing_a_local_user_drops_its_grants(store: Any) -> None:
    async def body() -> None:
        await store.add_user("alice", "h")
        await store.create_engagement("acme", "")
        await store.grant(Grant("acme", "user", "local:alice", "alice", "editor"))
        await store.remove_user("alice")
        await store.add_user("alice", "h2")  # someone new
        assert await store.role_for("acme", "local:alice", []) is None

    run_sync(body())


def test_schema_5_migrates_grants_sessions_and_throttle_keys(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metadata.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
    monkeypatch.setattr(schema, "LATEST_VERSION", 4)
    assert schema.migrate(conn, SQLITE) == 4
    at = "2026-03-01T09:00:00.000000+00:00"
    conn.executescript(f"""
        INSERT INTO users VALUES ('carl', 'scrypt$x', '{at}', 0);
        INSERT INTO users VALUES ('dora', NULL, '{at}', 0);
        INSERT INTO engagements (name, title, created_at, head) VALUES ('acme', '', '{at}', 0);
        INSERT INTO grants VALUES (1, 'user', 'carl', 'carl', 'editor');
        INSERT INTO grants VALUES (1, 'user', 'dora', 'dora', 'reader');
        INSERT INTO grants VALUES (1, 'user', 'erin', 'erin', 'admin');
        INSERT INTO grants VALUES (1, 'group', '{SID}', 'Audit', 'reader');
        INSERT INTO sessions VALUES ('t1', 's1', 'carl', '[]', 'local', '{at}', '{at}', '{at}');
        INSERT INTO sessions VALUES ('t2', 's2', 'erin', '[]', 'ldap', '{at}', '{at}', '{at}');
        INSERT INTO login_failures VALUES ('sid:{SID}', 1.0);
        INSERT INTO login_failures VALUES ('local:carl', 2.0);
    """)
    monkeypatch.undo()
    assert schema.migrate(conn, SQLITE) == schema.LATEST_VERSION >= 5
    grants = conn.execute("SELECT kind, principal FROM grants ORDER BY kind, principal").fetchall()
    assert grants == [
        ("group", SID), ("user", "local:carl"), ("user", "name:dora"), ("user", "name:erin")
    ]
    assert conn.execute("SELECT id, principal FROM sessions ORDER BY id").fetchall() == [
        ("s1", "local:carl"), ("s2", "name:erin")
    ]
    keys = conn.execute("SELECT throttle_key FROM login_failures ORDER BY at").fetchall()
    assert keys == [("ad:" + SID,), ("local:carl",)]
    conn.close()


class Directory:
    """A scripted directory backend: accounts by name with a SID each (rename = new name)."""

    name = "ldap"

    def __init__(self) -> None:
        self.accounts: dict[str, tuple[str, str]] = {}  # name -> (password, sid)
        self.disabled: set[str] = set()

    async def authenticate(self, user: str, password: str) -> Identity:
        if user not in self.accounts:
            raise UnknownUser("no such account")
        if self.accounts[user][0] != password or user in self.disabled:
            raise SignInRefused("refused")
        return Identity(user=user, backend="ldap", principal="ad:" + self.accounts[user][1])

    async def refresh(self, identity: Identity) -> Identity:
        for name, (_, sid) in self.accounts.items():
            if identity.principal in ("ad:" + sid, "name:" + name):
                if name in self.disabled:
                    raise SignInRefused("account disabled")
                return Identity(user=name, backend="ldap", principal="ad:" + sid)
        raise UnknownUser("gone")


async def run_blocking(f: Any, *args: Any) -> Any:
    return f(*args)


def manager(store: Any, clock: Clock, directory: Directory) -> SessionManager:
    return SessionManager(
        store, [directory, LocalAuthenticator(store, run_blocking)], clock,
        LoginRateLimiter(clock, per_user=50, per_address=50),
        refresh_interval=timedelta(minutes=15),
    )


def test_sign_in_keys_sessions_on_the_principal_and_a_rename_keeps_grants() -> None:
    clock = Clock()
    clock.advance(T0.timestamp())
    store = MemoryServerStore(now=lambda: datetime.fromtimestamp(clock.seconds(), UTC))
    directory = Directory()
    directory.accounts["alice"] = ("dir-pw", SID)
    sessions = manager(store, clock, directory)

    async def body() -> None:
        await store.add_user("alice", hash_password("local-pw"))  # an older collision
        await store.create_engagement("acme", "")
        await store.grant(Grant("acme", "user", "name:alice", "alice", "editor"))
        local_only = SessionManager(
            store, [LocalAuthenticator(store, run_blocking)], clock, LoginRateLimiter(clock)
        )
        _, local = await local_only.sign_in("alice", "local-pw", "192.0.2.1")
        assert local.principal == "local:alice"
        assert await store.role_for("acme", local.principal, []) is None  # not hers
        token, ad = await sessions.sign_in("alice", "dir-pw", "192.0.2.1")
        assert ad.principal == AD_ALICE and ad.user == "alice"
        assert await store.role_for("acme", AD_ALICE, []) == "editor"  # claimed at sign-in

        directory.accounts["alice.smith"] = directory.accounts.pop("alice")  # renamed
        clock.advance(16 * 60)
        renamed = await sessions.resolve(token)
        assert (renamed.user, renamed.principal) == ("alice.smith", AD_ALICE)
        assert await store.role_for("acme", renamed.principal, []) == "editor"

        directory.disabled.add("alice.smith")  # disabled in the directory
        clock.advance(16 * 60)
        with pytest.raises(SessionExpired):
            await sessions.resolve(token)
        with pytest.raises(AuthFailed):
            await sessions.sign_in("alice.smith", "dir-pw", "192.0.2.1")

    run_sync(body())


def test_a_blocked_directory_principal_cannot_sign_in() -> None:
    clock = Clock()
    clock.advance(T0.timestamp())
    store = MemoryServerStore(now=lambda: T0)
    directory = Directory()
    directory.accounts["dora"] = ("pw", SID)
    sessions = manager(store, clock, directory)

    async def body() -> None:
        token, _ = await sessions.sign_in("dora", "pw", "192.0.2.1")
        await store.block_principal(PrincipalBlock(AD_ALICE, "dora", "disabled", T0))
        with pytest.raises(SessionExpired):
            await sessions.resolve(token)
        with pytest.raises(AuthFailed):
            await sessions.sign_in("dora", "pw", "192.0.2.1")
        await store.unblock_principal(AD_ALICE)
        await sessions.sign_in("dora", "pw", "192.0.2.1")

    run_sync(body())
