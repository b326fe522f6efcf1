"""The ServerStore test-suite: real SQLite in tmp_path, real pack files.

Every test takes the ``store`` fixture, parametrized by backend so a PostgreSQL store can join
later without changing the tests.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import blake3
import pytest
import pytest_twisted
import zstandard

from smartsyncd.core.errors import BadRequest, NotFound, Unavailable
from smartsyncd.storage.api import Grant, SessionRecord, VerifiedChunk
from smartsyncd.storage.sqlite import DB_FILENAME, open_server_store
from smartsyncd.storage.sqlstore import SqlServerStore

T0 = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)


@pytest_twisted.async_yield_fixture(params=["sqlite"])
async def store(request, tmp_path) -> AsyncIterator[SqlServerStore]:
    from twisted.internet import reactor

    s = await open_server_store(str(tmp_path / "data"), reactor=reactor, now=lambda: T0)
    try:
        yield s
    finally:
        await s.close()


def chunk(data: bytes, codec: int = 0) -> VerifiedChunk:
    payload = zstandard.ZstdCompressor().compress(data) if codec == 1 else data
    return VerifiedChunk(hash=blake3.blake3(data).hexdigest(), codec=codec, raw_size=len(data), payload=payload)


# ---------------------------------------------------------------- users, engagements, grants


@pytest_twisted.ensureDeferred
async def test_open_creates_wal_database(store, tmp_path) -> None:
    db_file = tmp_path / "data" / DB_FILENAME
    assert db_file.exists()
    conn = sqlite3.connect(db_file)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] >= 1
    finally:
        conn.close()
    assert (tmp_path / "data" / "chunks").is_dir()


@pytest_twisted.ensureDeferred
async def test_reopen_keeps_data(tmp_path) -> None:
    from twisted.internet import reactor

    s = await open_server_store(str(tmp_path), reactor=reactor)
    await s.add_user("alice", "hash1")
    await s.close()
    s = await open_server_store(str(tmp_path), reactor=reactor)
    try:
        user = await s.get_user("alice")
        assert user is not None and user.password_hash == "hash1"
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_users(store) -> None:
    alice = await store.add_user("alice", "h1")
    assert alice.name == "alice" and alice.password_hash == "h1" and alice.created_at == T0
    assert not alice.disabled
    await store.add_user("bob", None)
    with pytest.raises(BadRequest, match="already exists"):
        await store.add_user("alice", "other")
    await store.set_password("alice", "h2")
    got = await store.get_user("alice")
    assert got is not None and got.password_hash == "h2"
    assert await store.get_user("carol") is None
    with pytest.raises(NotFound):
        await store.set_password("carol", "h")
    assert [u.name for u in await store.list_users()] == ["alice", "bob"]
    with pytest.raises(BadRequest):
        await store.add_user("", "h")


@pytest_twisted.ensureDeferred
async def test_engagements(store) -> None:
    e = await store.create_engagement("acme-2026", "ACME Corp audit 2026")
    assert e.name == "acme-2026" and e.head == 0 and e.id > 0 and e.created_at == T0
    with pytest.raises(BadRequest, match="already exists"):
        await store.create_engagement("acme-2026", "again")
    for bad in ["", "../x", "a b", "a/b", "-lead", "x" * 101]:
        with pytest.raises(BadRequest):
            await store.create_engagement(bad, "t")
    await store.create_engagement("beta", "")
    assert [x.name for x in await store.list_engagements()] == ["acme-2026", "beta"]
    got = await store.get_engagement("acme-2026")
    assert got == e
    assert await store.get_engagement("nope") is None
    assert await store.head(e.id) == 0
    with pytest.raises(NotFound):
        await store.head(9999)


@pytest_twisted.ensureDeferred
async def test_grants_and_roles(store) -> None:
    await store.create_engagement("acme", "A")
    await store.create_engagement("beta", "B")
    await store.grant(Grant("acme", "user", "alice", "alice", "reader"))
    await store.grant(Grant("acme", "group", "S-1-5-21-9", "Audit team", "editor"))
    await store.grant(Grant("beta", "group", "partners", "partners", "admin"))

    assert await store.role_for("acme", "alice", []) == "reader"
    assert await store.role_for("acme", "alice", ["S-1-5-21-9"]) == "editor"  # highest wins
    assert await store.role_for("acme", "bob", ["S-1-5-21-9", "other"]) == "editor"
    assert await store.role_for("acme", "bob", ["partners"]) is None
    assert await store.role_for("beta", "bob", ["partners"]) == "admin"
    assert await store.role_for("nope", "alice", []) is None
    # a group id equal to a user name does not grant as a user
    assert await store.role_for("acme", "carol", ["alice"]) is None

    # re-grant updates the role
    await store.grant(Grant("acme", "user", "alice", "alice", "admin"))
    assert await store.role_for("acme", "alice", []) == "admin"

    all_grants = await store.list_grants()
    assert [(g.engagement, g.kind, g.principal, g.role) for g in all_grants] == [
        ("acme", "group", "S-1-5-21-9", "editor"),
        ("acme", "user", "alice", "admin"),
        ("beta", "group", "partners", "admin"),
    ]
    assert [g.display_name for g in await store.list_grants("acme")] == ["Audit team", "alice"]

    assert await store.revoke("acme", "user", "alice") is True
    assert await store.revoke("acme", "user", "alice") is False
    assert await store.role_for("acme", "alice", []) is None
    with pytest.raises(NotFound):
        await store.grant(Grant("nope", "user", "alice", "alice", "reader"))
    with pytest.raises(BadRequest):
        await store.grant(Grant("acme", "user", "alice", "alice", "owner"))  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await store.list_grants("nope")


@pytest_twisted.ensureDeferred
async def test_sessions(store) -> None:
    s = SessionRecord(
        id="sess-1",
        token_hash="a" * 64,
        user="alice",
        groups=("S-1", "S-2"),
        backend="ldap",
        created_at=T0,
        expires_at=T0 + timedelta(days=30),
        refreshed_at=T0,
    )
    await store.create_session(s)
    assert await store.get_session("a" * 64) == s
    assert await store.get_session("b" * 64) is None
    with pytest.raises(BadRequest):
        await store.create_session(s)

    later = SessionRecord(
        id=s.id,
        token_hash=s.token_hash,
        user="alice",
        groups=("S-3",),
        backend="ldap",
        created_at=T0,
        expires_at=T0 + timedelta(days=31),
        refreshed_at=T0 + timedelta(hours=1),
    )
    await store.update_session(later)
    assert await store.get_session("a" * 64) == later
    await store.delete_session("a" * 64)
    assert await store.get_session("a" * 64) is None
    await store.delete_session("a" * 64)  # idempotent
    with pytest.raises(NotFound):
        await store.update_session(later)


# --------------------------------------------------------------------------------- chunks


@pytest_twisted.ensureDeferred
async def test_store_and_read_chunks(store, tmp_path) -> None:
    e = await store.create_engagement("acme", "A")
    raw_a, raw_b = b"spreadsheet " * 2000, os.urandom(5000)
    a, b = chunk(raw_a, codec=1), chunk(raw_b)
    assert await store.missing_chunks(e.id, [a.hash, b.hash]) == [a.hash, b.hash]

    assert await store.store_chunks(e.id, [a, b]) == (2, 0)
    assert await store.missing_chunks(e.id, [a.hash, b.hash]) == []
    packs = [f for _, _, files in os.walk(tmp_path / "data" / "chunks") for f in files]
    assert len(packs) == 1 and packs[0].endswith(".pack")

    got = await store.read_chunks(e.id, [b.hash, a.hash])
    assert [c.hash for c in got] == [b.hash, a.hash]
    assert got[0].codec == 0 and got[0].payload == raw_b and got[0].raw_size == 5000
    assert got[1].codec == 1 and got[1].payload == a.payload
    assert zstandard.ZstdDecompressor().decompress(got[1].payload) == raw_a

    # the same chunks again: nothing new written
    c = chunk(b"new bytes")
    assert await store.store_chunks(e.id, [a, b, c]) == (1, 2)
    assert await store.store_chunks(e.id, [a, b]) == (0, 2)
    packs = [f for _, _, files in os.walk(tmp_path / "data" / "chunks") for f in files]
    assert len(packs) == 2


@pytest_twisted.ensureDeferred
async def test_chunks_are_per_engagement(store) -> None:
    e1 = await store.create_engagement("one", "")
    e2 = await store.create_engagement("two", "")
    a = chunk(b"shared bytes")
    await store.store_chunks(e1.id, [a])
    assert await store.missing_chunks(e2.id, [a.hash]) == [a.hash]
    with pytest.raises(NotFound) as info:
        await store.read_chunks(e2.id, [a.hash])
    assert info.value.details["chunks"] == [a.hash]
    assert await store.store_chunks(e2.id, [a]) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_chunk_errors(store) -> None:
    e = await store.create_engagement("acme", "")
    with pytest.raises(NotFound):
        await store.missing_chunks(e.id + 100, ["a" * 64])
    with pytest.raises(BadRequest):
        await store.missing_chunks(e.id, ["NOT-HEX"])
    with pytest.raises(NotFound):
        await store.store_chunks(e.id + 100, [chunk(b"x")])


@pytest_twisted.ensureDeferred
async def test_health(store, tmp_path) -> None:
    assert await store.check_health() == {"database": "ok", "storage": "ok"}
    # storage gone (a file where the folder was: fails even for root)
    root = tmp_path / "data" / "chunks"
    root.rename(tmp_path / "moved")
    root.write_bytes(b"")
    assert await store.check_health() == {"database": "ok", "storage": "error"}


@pytest_twisted.ensureDeferred
async def test_closed_store_is_unavailable(tmp_path) -> None:
    from twisted.internet import reactor

    s = await open_server_store(str(tmp_path), reactor=reactor)
    await s.close()
    with pytest.raises(Unavailable):
        await s.list_users()
    assert await s.check_health() == {"database": "error", "storage": "error"}


@pytest_twisted.ensureDeferred
async def test_unopenable_database_is_unavailable(tmp_path) -> None:
    from twisted.internet import reactor

    (tmp_path / DB_FILENAME).mkdir()  # a folder where the database file should be
    with pytest.raises(Unavailable):
        await open_server_store(str(tmp_path), reactor=reactor)
