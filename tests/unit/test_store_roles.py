"""The accounts and change-log roles of the store, one set of assertions run against the
in-memory fake (``smartsyncd.testing.memory_store``) and the real SQLite store.

No reactor runs: the SQLite store's pools are the synchronous stand-in of
``smartsyncd.testing.syncpool``, so each coroutine completes inside ``run_sync``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import blake3
import pytest

from smartsyncd.core.errors import (
    BadRequest,
    BatchReused,
    HistoryDiverged,
    MissingChunks,
    NotFound,
    UnknownContent,
)
from smartsyncd.core.manifest import content_id, make_delta
from smartsyncd.core.model import ChunkRef, HistoryCheck, ProposedChange, VerifiedChunk
from smartsyncd.storage.api import Grant, PutManifest, SessionRecord
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_sqlite_store, run_sync

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: Any, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryServerStore(now=lambda: T0)
        return
    s = open_sync_sqlite_store(str(tmp_path / "data"), now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


def chunk(data: bytes) -> VerifiedChunk:
    return VerifiedChunk(hash=blake3.blake3(data).hexdigest(), codec=0, raw_size=len(data), payload=data)


def refs_of(*chunks: VerifiedChunk) -> tuple[str, int, tuple[ChunkRef, ...]]:
    refs = tuple(ChunkRef(c.hash, c.raw_size) for c in chunks)
    return content_id(refs), sum(c.raw_size for c in chunks), refs


def put(path: str, base: int | None, content: str, size: int) -> ProposedChange:
    return ProposedChange(path=path, kind="put", base=base, content=content, size=size)


def session(token: str, sid: str, user: str, at: datetime = T0) -> SessionRecord:
    return SessionRecord(
        id=sid, token_hash=token * 64, user=user, groups=("S-1",), backend="local",
        created_at=at, expires_at=at + timedelta(days=30), refreshed_at=at,
    )


# ------------------------------------------------------------------------------- accounts


def test_users(store: Any) -> None:
    async def body() -> None:
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
        assert await store.upgrade_password_hash("alice", "h1", "h3") is False  # not the stored one
        assert await store.upgrade_password_hash("alice", "h2", "h3") is True
        assert (await store.get_user("alice")).password_hash == "h3"
        await store.set_user_disabled("bob", True)
        assert (await store.get_user("bob")).disabled
        await store.remove_user("bob")
        assert await store.get_user("bob") is None
        with pytest.raises(NotFound):
            await store.remove_user("bob")
        with pytest.raises(NotFound):
            await store.set_user_disabled("bob", False)

    run_sync(body())


def test_engagements(store: Any) -> None:
    async def body() -> None:
        e = await store.create_engagement("acme-2026", "ACME Corp audit 2026")
        assert e.name == "acme-2026" and e.head == 0 and e.id > 0 and e.created_at == T0
        with pytest.raises(BadRequest, match="already exists"):
            await store.create_engagement("acme-2026", "again")
        for bad in ["", "../x", "a b", "a/b", "-lead", "x" * 101]:
            with pytest.raises(BadRequest):
                await store.create_engagement(bad, "t")
        await store.create_engagement("beta", "")
        assert [x.name for x in await store.list_engagements()] == ["acme-2026", "beta"]
        assert await store.get_engagement("acme-2026") == e
        assert await store.get_engagement("nope") is None

    run_sync(body())


def test_grants_and_roles(store: Any) -> None:
    async def body() -> None:
        await store.create_engagement("acme", "A")
        await store.create_engagement("beta", "B")
        await store.grant(Grant("acme", "user", "alice", "alice", "reader"))
        await store.grant(Grant("acme", "group", "S-1-5-21-9", "Audit team", "editor"))
        await store.grant(Grant("beta", "group", "partners", "partners", "admin"))
        assert await store.role_for("acme", "alice", []) == "reader"
        assert await store.role_for("acme", "alice", ["S-1-5-21-9"]) == "editor"  # highest wins
        assert await store.role_for("acme", "bob", ["partners"]) is None
        assert await store.role_for("beta", "bob", ["partners"]) == "admin"
        assert await store.role_for("nope", "alice", []) is None
        assert await store.role_for("acme", "carol", ["alice"]) is None  # a group is not a user
        await store.grant(Grant("acme", "user", "alice", "", "admin"))  # re-grant: updated
        assert await store.role_for("acme", "alice", []) == "admin"
        assert [(g.engagement, g.kind, g.principal, g.display_name, g.role) for g in await store.list_grants()] == [
            ("acme", "group", "S-1-5-21-9", "Audit team", "editor"),
            ("acme", "user", "alice", "alice", "admin"),
            ("beta", "group", "partners", "partners", "admin"),
        ]
        assert [g.principal for g in await store.list_grants("beta")] == ["partners"]
        assert await store.revoke("acme", "user", "alice") is True
        assert await store.revoke("acme", "user", "alice") is False
        assert await store.role_for("acme", "alice", []) is None
        with pytest.raises(NotFound):
            await store.grant(Grant("nope", "user", "alice", "alice", "reader"))
        with pytest.raises(NotFound):
            await store.revoke("nope", "user", "alice")
        with pytest.raises(BadRequest):
            await store.grant(Grant("acme", "user", "alice", "alice", "owner"))  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await store.list_grants("nope")

    run_sync(body())


def test_sessions(store: Any) -> None:
    async def body() -> None:
        s = session("a", "sess-1", "alice")
        await store.create_session(s)
        assert await store.get_session("a" * 64) == s
        assert await store.get_session("b" * 64) is None
        with pytest.raises(BadRequest):
            await store.create_session(s)
        later = SessionRecord(
            id=s.id, token_hash=s.token_hash, user="alice", groups=("S-3",), backend="local",
            created_at=T0, expires_at=T0 + timedelta(days=31), refreshed_at=T0 + timedelta(hours=1),
        )
        await store.update_session(later)
        assert await store.get_session("a" * 64) == later
        await store.delete_session("a" * 64)
        assert await store.get_session("a" * 64) is None
        await store.delete_session("a" * 64)  # idempotent
        with pytest.raises(NotFound):  # ended meanwhile: stays ended
            await store.update_session(later)

    run_sync(body())


def test_listing_and_ending_sessions(store: Any) -> None:
    async def body() -> None:
        await store.add_user("alice", "h")
        await store.create_session(session("c", "s3", "alice", T0 + timedelta(minutes=2)))
        await store.create_session(session("a", "s1", "alice"))
        await store.create_session(session("b", "s2", "bob", T0 + timedelta(minutes=1)))
        assert [x.id for x in await store.list_sessions()] == ["s1", "s2", "s3"]  # oldest first
        assert [x.id for x in await store.list_sessions("alice")] == ["s1", "s3"]
        assert await store.end_sessions(user="alice", keep="s1") == 1
        assert [x.id for x in await store.list_sessions()] == ["s1", "s2"]
        assert await store.end_sessions(session_id="s2") == 1
        assert await store.end_sessions(session_id="s2") == 0
        with pytest.raises(ValueError):
            await store.end_sessions(user="alice", session_id="s1")
        await store.set_password("alice", "h2")  # ends the local sessions
        assert await store.list_sessions() == []

    run_sync(body())


def test_login_failures(store: Any) -> None:
    async def body() -> None:
        for at in (100.0, 105.0, 110.0, 120.0):
            await store.record_login_failure("u:alice", at, forget_before=0.0)
        await store.record_login_failure("a:192.0.2.1", 121.0, forget_before=0.0)
        assert await store.login_failures_since("u:alice", 100.0, 10) == [105.0, 110.0, 120.0]
        assert await store.login_failures_since("u:alice", 0.0, 2) == [110.0, 120.0]  # the latest
        await store.record_login_failure("u:bob", 130.0, forget_before=108.0)  # forgets old ones
        assert await store.login_failures_since("u:alice", 0.0, 10) == [110.0, 120.0]
        await store.clear_login_failures("u:alice")
        assert await store.login_failures_since("u:alice", 0.0, 10) == []
        assert await store.login_failures_since("a:192.0.2.1", 0.0, 10) == [121.0]

    run_sync(body())


# ----------------------------------------------------------------------------- change log


def test_commit_feed_snapshot_and_replay(store: Any) -> None:
    async def body() -> None:
        e = await store.create_engagement("acme", "")
        a, b = chunk(b"first version"), chunk(b"second version")
        ca, sa, ra = refs_of(a)
        cb, sb, rb = refs_of(b)
        with pytest.raises(UnknownContent):
            await store.commit(e.id, "alice", "s1", "b0", [put("x.txt", None, ca, sa)], {}, T0)
        with pytest.raises(MissingChunks):
            await store.commit(e.id, "alice", "s1", "b0", [put("x.txt", None, ca, sa)],
                               {"x.txt": PutManifest(ca, ra)}, T0)
        assert await store.store_chunks(e.id, [a, b, a]) == (2, 1)
        assert await store.missing_chunks(e.id, [a.hash, b.hash]) == []
        r = await store.commit(e.id, "alice", "s1", "b1", [put("x.txt", None, ca, sa)],
                               {"x.txt": PutManifest(ca, ra)}, T0)
        assert r.head == 1 and [(x.path, x.status, x.seq) for x in r.results] == [("x.txt", "applied", 1)]
        assert r.head_hash == await store.record_token(e.id, 1) and r.head_hash is not None
        again = await store.commit(e.id, "alice", "s1", "b1", [put("x.txt", None, ca, sa)], {}, T0)
        assert again.replayed and again.head == 1 and again.results == r.results
        with pytest.raises(BatchReused):
            await store.commit(e.id, "alice", "s1", "b1", [put("y.txt", None, ca, sa)], {}, T0)
        # a delta against the stored manifest; a stale base becomes a conflict copy
        delta = PutManifest(cb, None, delta_base=ca, delta_ops=make_delta(ra, rb))
        r2 = await store.commit(e.id, "bob", None, "b2", [put("x.txt", 1, cb, sb)], {"x.txt": delta}, T0)
        assert [(x.status, x.seq) for x in r2.results] == [("applied", 2)]
        r3 = await store.commit(e.id, "alice", "s1", "b3", [put("x.txt", 1, ca, sa)], {}, T0)
        assert r3.results[0].status == "conflict" and r3.results[0].conflict_path
        assert await store.head(e.id) == 3
        head, files = await store.snapshot(e.id)
        assert head == 3 and [(f.path, f.seq, f.content) for f in files] == [
            (r3.results[0].conflict_path, 3, ca), ("x.txt", 2, cb),  # by path: " " < "."
        ]
        head, log = await store.changes_since(e.id, 1, 10)
        assert head == 3 and [(c.seq, c.user, c.prev_seq) for c in log] == [(2, "bob", 1), (3, "alice", None)]
        assert [c.record_hash for c in log] == [r2.head_hash, r3.head_hash]
        _, limited = await store.changes_since(e.id, 0, 1)
        assert [c.seq for c in limited] == [1]
        manifest = await store.get_manifest(e.id, cb)
        assert manifest is not None and manifest.chunks == rb and manifest.size == sb
        assert [c.payload for c in await store.read_chunks(e.id, [b.hash])] == [b"second version"]
        with pytest.raises(BadRequest):
            await store.changes_since(e.id, -1, 10)
        with pytest.raises(NotFound):
            await store.head(9999)

    run_sync(body())


def test_history_checks(store: Any) -> None:
    async def body() -> None:
        e = await store.create_engagement("acme", "")
        a = chunk(b"content")
        await store.store_chunks(e.id, [a])
        ca, sa, ra = refs_of(a)
        r = await store.commit(e.id, "alice", "s1", "b1", [put("x.txt", None, ca, sa)],
                               {"x.txt": PutManifest(ca, ra)}, T0)
        ident, gen = await store.store_identity()
        good = HistoryCheck(seq=1, hash=r.head_hash, store=ident, generation=gen)
        assert (await store.changes_since(e.id, 1, 10, good))[0] == 1
        for bad, reason in [
            (HistoryCheck(seq=1, hash="0" * 64), "another record"),
            (HistoryCheck(seq=5), "log ends at 1"),
            (HistoryCheck(seq=1, store="elsewhere"), "another store"),
        ]:
            with pytest.raises(HistoryDiverged, match=reason):
                await store.changes_since(e.id, 1, 10, bad)
        with pytest.raises(HistoryDiverged):  # a commit's bases are checked too
            await store.commit(e.id, "alice", "s1", "b2", [put("y.txt", None, ca, sa)], {},
                               T0, check=HistoryCheck(seq=1, hash="0" * 64))
        assert await store.head(e.id) == 1
        assert await store.bump_generation() == (ident, gen + 1)
        with pytest.raises(HistoryDiverged, match="restored or rolled back"):
            await store.changes_since(e.id, 1, 10, good)

    run_sync(body())
