"""The ServerStore test-suite, run against both metadata backends with real pack files.

Every test runs twice (the ``backend`` fixture's params): on SQLite in tmp_path, and on a fresh
database in a real PostgreSQL 15 cluster started once per session (tests/integration/pg.py; it
fails the run with its log if it cannot start). Tests touch the database underneath only
through ``backend.raw(...)``, so the same test checks both.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard

from smartsyncd.core.errors import (
    BadRequest,
    BatchReused,
    InvalidPath,
    MissingChunks,
    NotFound,
    PathClash,
    Unavailable,
    UnknownContent,
)
from smartsyncd.core.manifest import content_id, make_delta
from smartsyncd.core.model import ChunkRef, ProposedChange
from smartsyncd.storage.api import (
    CommitResultItem,
    Grant,
    PutManifest,
    SessionRecord,
    VerifiedChunk,
)
from smartsyncd.storage.schema import SchemaTooNew
from smartsyncd.storage.sqlite import DB_FILENAME
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from pg import PgCluster  # noqa: E402

T0 = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Backend:
    """One metadata backend for one test: where its data lives and raw access underneath."""

    name: str
    data_dir: Path
    url: str | None  # None: SQLite in data_dir

    async def open(self, **kwargs: Any) -> SqlServerStore:
        """The real store on synchronous pools (no reactor runs; async like the real opener)."""
        return open_sync_store(str(self.data_dir), self.url, **kwargs)

    @property
    def integrity_or_raise(self) -> type[BaseException]:
        """What a failing trigger raises through the store (the driver's own error)."""
        if self.url is None:
            return sqlite3.IntegrityError
        import psycopg

        return psycopg.Error

    def raw(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement directly on the database (committed) and return its rows."""
        if self.url is None:
            conn = sqlite3.connect(self.data_dir / DB_FILENAME)
            try:
                rows = conn.execute(statement, params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            cur = pg.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path / "data", None)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return Backend("postgresql", tmp_path / "data", cluster.fresh_url())


@pytest.fixture
def sync_store(backend) -> Iterator[SqlServerStore]:
    """The ``store`` on synchronous pools (``smartsyncd.testing.syncpool``): no reactor runs."""
    s = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


def sync_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test that awaits only synchronous work (``sync_store``) to its end
    inside ``run_sync``, without a reactor."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        run_sync(test(*args, **kwargs))

    return run


def on_sync_store(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def test_x(store, ...)`` without a reactor: ``store`` is ``sync_store``
    and the coroutine completes inside ``run_sync``. For tests that need no real concurrency."""
    sig = inspect.signature(test)
    params = [p.replace(name="sync_store") if p.name == "store" else p for p in sig.parameters.values()]

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        if "sync_store" in kwargs:
            kwargs["store"] = kwargs.pop("sync_store")
        run_sync(test(*args, **kwargs))

    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return run


def chunk(data: bytes, codec: int = 0) -> VerifiedChunk:
    payload = zstandard.ZstdCompressor().compress(data) if codec == 1 else data
    return VerifiedChunk(hash=blake3.blake3(data).hexdigest(), codec=codec, raw_size=len(data), payload=payload)


# ---------------------------------------------------------------- users, engagements, grants


@on_sync_store
async def test_open_creates_and_migrates_the_database(store, backend, tmp_path) -> None:
    assert backend.raw("SELECT MAX(version) FROM schema_version")[0][0] >= 1
    if backend.name == "sqlite":
        assert (tmp_path / "data" / DB_FILENAME).exists()
        assert backend.raw("PRAGMA journal_mode")[0][0] == "wal"
    else:
        assert not (tmp_path / "data" / DB_FILENAME).exists()
    assert (tmp_path / "data" / "chunks").is_dir()


@sync_test
async def test_reopen_keeps_data(backend) -> None:
    s = await backend.open()
    await s.add_user("alice", "hash1")
    await s.close()
    s = await backend.open()
    try:
        user = await s.get_user("alice")
        assert user is not None and user.password_hash == "hash1"
    finally:
        await s.close()


@on_sync_store
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


@on_sync_store
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


@on_sync_store
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


@on_sync_store
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


@on_sync_store
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


@on_sync_store
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


@on_sync_store
async def test_chunk_errors(store) -> None:
    e = await store.create_engagement("acme", "")
    with pytest.raises(NotFound):
        await store.missing_chunks(e.id + 100, ["a" * 64])
    with pytest.raises(BadRequest):
        await store.missing_chunks(e.id, ["NOT-HEX"])
    with pytest.raises(NotFound):
        await store.store_chunks(e.id + 100, [chunk(b"x")])


@on_sync_store
async def test_health(store, tmp_path) -> None:
    assert await store.check_health() == {"database": "ok", "storage": "ok"}
    # storage gone (a file where the folder was: fails even for root)
    root = tmp_path / "data" / "chunks"
    root.rename(tmp_path / "moved")
    root.write_bytes(b"")
    assert await store.check_health() == {"database": "ok", "storage": "error"}


@sync_test
async def test_closed_store_is_unavailable(backend) -> None:
    s = await backend.open()
    await s.close()
    with pytest.raises(Unavailable):
        await s.list_users()
    assert await s.check_health() == {"database": "error", "storage": "error"}


@sync_test
async def test_work_caught_by_a_closing_store_is_unavailable_not_a_bug(backend) -> None:
    """A request whose database work runs as the daemon shuts the store down gets a 503 to
    retry, not a 500 'internal error' (seen as a closed-database error during shutdown)."""
    s = await backend.open()

    def closed_under_us(meta: Any) -> Any:
        s._closed = True  # what close() sets first
        meta.conn.close()
        return meta.all("SELECT 1")

    try:
        with pytest.raises(Unavailable):
            await s.run_db(closed_under_us)
    finally:
        s._closed = False
        await s.close()


@sync_test
async def test_unopenable_database_is_unavailable(tmp_path) -> None:
    (tmp_path / DB_FILENAME).mkdir()  # a folder where the database file should be
    with pytest.raises(Unavailable):
        open_sync_store(str(tmp_path))


def test_sqlite_outages_are_told_from_sql_mistakes(tmp_path) -> None:
    from smartsyncd.storage.sqlite import is_sqlite_outage

    path = tmp_path / "t.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as mistake:
            other.execute("SELECT nonexistent FROM t")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()
    assert is_sqlite_outage(busy.value)  # database is locked: 503, try again
    assert not is_sqlite_outage(mistake.value)  # no such column: a bug
    assert is_sqlite_outage(sqlite3.OperationalError("raised without a code"))


@sync_test
async def test_an_sql_mistake_is_not_reported_as_an_outage(backend) -> None:
    """A bug in a statement must surface as the driver's error (a 500, logged with its
    traceback), not as ``Unavailable`` (a 503 that clients retry forever)."""
    s = await backend.open()
    try:
        with pytest.raises(Exception) as caught:
            await s.run_db(lambda meta: meta.all("SELECT no_such_column FROM users"))
        assert not isinstance(caught.value, Unavailable)
        assert await s.check_health() == {"database": "ok", "storage": "ok"}
    finally:
        await s.close()


# --------------------------------------------------------------------------------- commit


def content_of(*chunks: VerifiedChunk) -> tuple[str, int, tuple[ChunkRef, ...]]:
    refs = tuple(ChunkRef(c.hash, c.raw_size) for c in chunks)
    return content_id(refs), sum(c.raw_size for c in chunks), refs


async def upload_file(store, eid: int, *raw: bytes) -> tuple[str, int, tuple[ChunkRef, ...]]:
    chunks = [chunk(r) for r in raw]
    await store.store_chunks(eid, chunks)
    return content_of(*chunks)


def put(path: str, base: int | None, content: str, size: int) -> ProposedChange:
    return ProposedChange(path=path, kind="put", base=base, content=content, size=size)


def full(content: str, refs: tuple[ChunkRef, ...]) -> PutManifest:
    return PutManifest(content=content, chunks=refs)


async def commit(store, eid, batch, changes, manifests=None, user="alice", now=T0):
    return await store.commit(eid, user, "sess-1", batch, changes, manifests or {}, now)


async def state(store, eid) -> tuple[int, dict[str, tuple[int, str | None]], int]:
    head, files = await store.snapshot(eid)
    _, log = await store.changes_since(eid, 0, 10_000)
    return head, {f.path: (f.seq, f.content) for f in files}, len(log)


@on_sync_store
async def test_commit_applied_and_log(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"version one")
    r = await commit(store, e.id, "b1", [put("Working papers/B-1 Cash.xlsx", None, c1, s1)], {"Working papers/B-1 Cash.xlsx": full(c1, refs1)})
    assert not r.replayed and r.head == 1
    assert r.results == (CommitResultItem("Working papers/B-1 Cash.xlsx", "applied", 1),)
    assert [(c.seq, c.path, c.kind, c.content, c.size, c.prev_seq) for c in r.changes] == [
        (1, "Working papers/B-1 Cash.xlsx", "put", c1, s1, None)
    ]
    head, changes = await store.changes_since(e.id, 0, 100)
    assert head == 1 and list(r.changes) == changes
    ch = changes[0]
    assert (ch.user, ch.session, ch.time, ch.batch, ch.conflict_of) == ("alice", "sess-1", T0, "b1", None)
    assert await store.head(e.id) == 1
    assert (await store.get_engagement("acme")).head == 1
    m = await store.get_manifest(e.id, c1)
    assert m is not None and m.chunks == refs1 and m.size == s1
    assert await store.get_manifest(e.id, "f" * 64) is None

    # edit with the right base: applied, prev_seq links the versions
    c2, s2, refs2 = await upload_file(store, e.id, b"version two!")
    r = await commit(store, e.id, "b2", [put("Working papers/B-1 Cash.xlsx", 1, c2, s2)], {"Working papers/B-1 Cash.xlsx": full(c2, refs2)})
    assert r.results[0].status == "applied" and r.results[0].seq == 2
    assert r.changes[0].prev_seq == 1
    assert await state(store, e.id) == (2, {"Working papers/B-1 Cash.xlsx": (2, c2)}, 2)


@on_sync_store
async def test_commit_unchanged_conflict_stale(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"one")
    c2, s2, refs2 = await upload_file(store, e.id, b"two")
    c3, s3, refs3 = await upload_file(store, e.id, b"three")
    await commit(store, e.id, "b1", [put("a.txt", None, c1, s1)], {"a.txt": full(c1, refs1)})
    # the same content again (another copy made the same edit): unchanged, nothing written
    r = await commit(store, e.id, "b2", [put("a.txt", None, c1, s1)])
    assert r.results == (CommitResultItem("a.txt", "unchanged", None, current_seq=1),)
    assert r.head == 1 and r.changes == ()
    # edit on base 1 applied, then another edit on base 1 becomes a conflict copy
    await commit(store, e.id, "b3", [put("a.txt", 1, c2, s2)], {"a.txt": full(c2, refs2)})
    r = await commit(store, e.id, "b4", [put("a.txt", 1, c3, s3)], {"a.txt": full(c3, refs3)}, user="bob")
    item = r.results[0]
    assert item.status == "conflict" and item.seq == 3
    assert item.conflict_path == "a (conflict bob 2026-11-26 1530).txt"
    assert r.changes[0].path == item.conflict_path and r.changes[0].conflict_of == "a.txt"
    # a delete of a version no longer current is stale: nothing deleted
    r = await commit(store, e.id, "b5", [ProposedChange("a.txt", "delete", 1)])
    assert r.results == (CommitResultItem("a.txt", "stale", None, current_seq=2),)
    head, files, log_len = await state(store, e.id)
    assert head == 3 and log_len == 3
    assert files == {"a.txt": (2, c2), item.conflict_path: (3, c3)}
    # a delete of the current version: a tombstone, gone from the snapshot
    r = await commit(store, e.id, "b6", [ProposedChange("a.txt", "delete", 2)])
    assert r.results[0].status == "applied" and r.changes[0].content is None and r.changes[0].prev_seq == 2
    head, files, _ = await state(store, e.id)
    assert head == 4 and "a.txt" not in files
    # edit of the deleted file is applied (edit beats delete)
    r = await commit(store, e.id, "b7", [put("a.txt", 1, c1, s1)])
    assert r.results[0].status == "applied" and r.changes[0].prev_seq == 4


@on_sync_store
async def test_commit_rename_copy_and_case_rename(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"content")
    await commit(store, e.id, "b1", [put("a.txt", None, c1, s1)], {"a.txt": full(c1, refs1)})
    # known content: only the path travels
    r = await commit(store, e.id, "b2", [ProposedChange("a.txt", "delete", 1), put("Dir/b.txt", None, c1, s1)])
    assert [x.status for x in r.results] == ["applied", "applied"]
    # case-only rename in one batch
    r = await commit(store, e.id, "b3", [ProposedChange("Dir/b.txt", "delete", 3), put("Dir/B.txt", None, c1, s1)])
    assert [x.status for x in r.results] == ["applied", "applied"]
    head, files, _ = await state(store, e.id)
    assert files == {"Dir/B.txt": (5, c1)}


@on_sync_store
async def test_commit_path_clashes_change_nothing(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"content")
    await commit(store, e.id, "b1", [put("Folder/report.xlsx", None, c1, s1)], {"Folder/report.xlsx": full(c1, refs1)})
    before = await state(store, e.id)
    with pytest.raises(PathClash) as info:
        await commit(store, e.id, "b2", [put("new.txt", None, c1, s1), put("Folder/REPORT.xlsx", None, c1, s1)])
    assert info.value.details == {"path": "Folder/REPORT.xlsx", "existing": "Folder/report.xlsx"}
    with pytest.raises(PathClash) as info:
        await commit(store, e.id, "b3", [put("folder/other.txt", None, c1, s1)])
    assert info.value.details["existing"] == "Folder"
    with pytest.raises(PathClash):
        await commit(store, e.id, "b4", [put("FOLDER", None, c1, s1)])
    with pytest.raises(InvalidPath):
        await commit(store, e.id, "b5", [put("a/../b", None, c1, s1)])
    assert await state(store, e.id) == before


@on_sync_store
async def test_commit_missing_chunks_lists_all_and_changes_nothing(store) -> None:
    e = await store.create_engagement("acme", "")
    have = chunk(b"uploaded")
    await store.store_chunks(e.id, [have])
    lack1, lack2 = chunk(b"not uploaded 1"), chunk(b"not uploaded 2")
    ca, sa, ra = content_of(have, lack1)
    cb, sb, rb = content_of(lack2, have)
    with pytest.raises(MissingChunks) as info:
        await commit(
            store, e.id, "b1", [put("a", None, ca, sa), put("b", None, cb, sb)], {"a": full(ca, ra), "b": full(cb, rb)}
        )
    assert sorted(info.value.details["chunks"]) == sorted([lack1.hash, lack2.hash])
    assert await state(store, e.id) == (0, {}, 0)
    assert await store.get_manifest(e.id, ca) is None
    # upload and retry with the same batch key: now it applies
    await store.store_chunks(e.id, [lack1, lack2])
    r = await commit(store, e.id, "b1", [put("a", None, ca, sa), put("b", None, cb, sb)], {"a": full(ca, ra), "b": full(cb, rb)})
    assert not r.replayed and r.head == 2


@on_sync_store
async def test_commit_unknown_content_and_bad_manifests(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"content")
    with pytest.raises(UnknownContent) as info:
        await commit(store, e.id, "b1", [put("x.txt", None, c1, s1)])
    assert info.value.details == {"path": "x.txt"}
    c2, s2, refs2 = await upload_file(store, e.id, b"other")
    # manifest that does not hash to the content id
    with pytest.raises(BadRequest, match="content id"):
        await commit(store, e.id, "b2", [put("x.txt", None, c1, s1)], {"x.txt": PutManifest(content=c1, chunks=refs2)})
    # size that does not match the chunks
    with pytest.raises(BadRequest, match="size"):
        await commit(store, e.id, "b3", [put("x.txt", None, c1, s1 + 1)], {"x.txt": full(c1, refs1)})
    # one good put and one bad one: nothing of the batch applied
    with pytest.raises(BadRequest):
        await commit(
            store,
            e.id,
            "b4",
            [put("good.txt", None, c2, s2), put("x.txt", None, c1, s1)],
            {"good.txt": full(c2, refs2), "x.txt": PutManifest(content=c1)},
        )
    assert await state(store, e.id) == (0, {}, 0)
    assert await store.get_manifest(e.id, c2) is None


@on_sync_store
async def test_commit_refuses_chunk_sizes_that_differ_from_the_stored_chunks(store) -> None:
    # a member's manifest that lies about a chunk's size hashes to its own content id and adds
    # up to its own size, but every other copy's pull would stop at it: refused whole
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"good content")
    a, b = chunk(b"first part"), chunk(b"second part")
    await store.store_chunks(e.id, [a, b])
    for lie in (
        (ChunkRef(a.hash, a.raw_size + 1), ChunkRef(b.hash, b.raw_size)),
        (ChunkRef(a.hash, a.raw_size), ChunkRef(b.hash, b.raw_size - 3)),
        (ChunkRef(a.hash, 1 << 30),),
    ):
        bad, size = content_id(lie), sum(r.size for r in lie)
        with pytest.raises(BadRequest, match=r"gives chunk [0-9a-f]{64} \d+ bytes; it has") as info:
            await commit(store, e.id, "b1", [put("good.txt", None, c1, s1), put("x.bin", None, bad, size)],
                         {"good.txt": full(c1, refs1), "x.bin": full(bad, lie)})
        assert info.value.details == {"path": "x.bin"}
    # one chunk given two sizes in one batch
    twice = (ChunkRef(a.hash, a.raw_size), ChunkRef(a.hash, a.raw_size + 1))
    with pytest.raises(BadRequest, match="two sizes"):
        await commit(store, e.id, "b2", [put("y.bin", None, content_id(twice), sum(r.size for r in twice))],
                     {"y.bin": full(content_id(twice), twice)})
    assert await state(store, e.id) == (0, {}, 0)
    # the true sizes commit
    c2, s2, refs2 = content_of(a, b)
    r = await commit(store, e.id, "b3", [put("x.bin", None, c2, s2)], {"x.bin": full(c2, refs2)})
    assert r.results[0].status == "applied"


@on_sync_store
async def test_stored_manifests_read_back_as_sent(store) -> None:
    # the commit encodes each new manifest once, for its content id check and its stored body
    # (one-chunk files without a join): both shapes read back equal
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"one chunk")
    c3, s3, refs3 = await upload_file(store, e.id, b"first", b"second", b"third")
    assert len(refs1) == 1 and len(refs3) == 3
    await commit(store, e.id, "b1", [put("one.txt", None, c1, s1), put("three.txt", None, c3, s3)],
                 {"one.txt": full(c1, refs1), "three.txt": full(c3, refs3)})
    for content, size, refs in ((c1, s1, refs1), (c3, s3, refs3)):
        m = await store.get_manifest(e.id, content)
        assert m is not None and (m.content, m.size, m.chunks) == (content, size, refs)
    assert await store.fsck() == []


@on_sync_store
async def test_commit_delta_manifest(store) -> None:
    e = await store.create_engagement("acme", "")
    parts = [os.urandom(100) for _ in range(5)]
    c1, s1, refs1 = await upload_file(store, e.id, *parts)
    await commit(store, e.id, "b1", [put("big.bin", None, c1, s1)], {"big.bin": full(c1, refs1)})
    edited = chunk(b"edited middle part")
    await store.store_chunks(e.id, [edited])
    new_refs = refs1[:2] + (ChunkRef(edited.hash, edited.raw_size),) + refs1[3:]
    c2, s2 = content_id(new_refs), sum(r.size for r in new_refs)
    ops = tuple(tuple(op) for op in make_delta(refs1, new_refs))
    pm = PutManifest(content=c2, delta_base=c1, delta_ops=ops)
    r = await commit(store, e.id, "b2", [put("big.bin", 1, c2, s2)], {"big.bin": pm})
    assert r.results[0].status == "applied"
    m = await store.get_manifest(e.id, c2)
    assert m is not None and m.chunks == new_refs and m.size == s2
    # a delta against an unknown base cannot be resolved
    c3 = content_id(refs1[:1])
    with pytest.raises(UnknownContent):
        await commit(
            store, e.id, "b3", [put("big.bin", 2, c3, refs1[0].size)],
            {"big.bin": PutManifest(content=c3, delta_base="e" * 64, delta_ops=(("copy", 0, 1),))},
        )
    # malformed ops
    with pytest.raises(BadRequest):
        await commit(
            store, e.id, "b4", [put("big.bin", 2, c3, refs1[0].size)],
            {"big.bin": PutManifest(content=c3, delta_base=c1, delta_ops=(("copy", 4, 9),))},
        )
    assert await store.head(e.id) == 2


@on_sync_store
async def test_commit_idempotent_replay(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"one")
    c2, s2, refs2 = await upload_file(store, e.id, b"two")
    await commit(store, e.id, "b1", [put("a", None, c1, s1)], {"a": full(c1, refs1)})
    batch = [put("a", None, c2, s2), put("b", None, c2, s2)]  # "a" conflicts: base None on a live file
    first = await commit(store, e.id, "retry-me", batch, {"a": full(c2, refs2)}, user="bob")
    before = await state(store, e.id)
    again = await commit(store, e.id, "retry-me", batch, {"a": full(c2, refs2)}, user="bob", now=T0 + timedelta(hours=1))
    assert again.replayed and again.changes == ()
    assert again.results == first.results and again.head == first.head
    assert await state(store, e.id) == before
    # the key is per user: another member's use of it is a batch of its own, never a replay
    # of bob's answer
    mine = await commit(store, e.id, "retry-me", [put("c", None, c1, s1)], user="mallory")
    assert not mine.replayed and mine.results[0].status == "applied"
    # and bound to its request: the same key with other changes is refused, nothing applied
    before = await state(store, e.id)
    with pytest.raises(BatchReused) as info:
        await commit(store, e.id, "retry-me", [put("d", None, c1, s1)], user="bob")
    assert info.value.status == 409 and info.value.details == {"batch": "retry-me"}
    with pytest.raises(BatchReused):
        await commit(store, e.id, "retry-me", batch[:1], {"a": full(c2, refs2)}, user="bob")
    assert await state(store, e.id) == before
    # the key is per engagement
    other = await store.create_engagement("other", "")
    await store.store_chunks(other.id, [chunk(b"two")])
    r = await commit(store, other.id, "retry-me", [put("b", None, c2, s2)], {"b": full(c2, refs2)})
    assert not r.replayed


@on_sync_store
async def test_commit_bad_input(store) -> None:
    e = await store.create_engagement("acme", "")
    with pytest.raises(NotFound):
        await commit(store, e.id + 50, "b", [])
    with pytest.raises(BadRequest):
        await commit(store, e.id, "", [])
    with pytest.raises(BadRequest):
        await commit(store, e.id, "b", [], now=datetime(2026, 1, 1))  # naive time
    r = await commit(store, e.id, "empty", [])
    assert r.head == 0 and r.results == ()


@on_sync_store
async def test_changes_since_pages(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"x")
    await commit(store, e.id, "b1", [put(f"f{i}", None, c1, s1) for i in range(7)], {"f0": full(c1, refs1)})
    head, page = await store.changes_since(e.id, 0, 3)
    assert head == 7 and [c.seq for c in page] == [1, 2, 3]
    head, page = await store.changes_since(e.id, 6, 3)
    assert [c.seq for c in page] == [7]
    assert await store.changes_since(e.id, 7, 3) == (7, [])
    with pytest.raises(BadRequest):
        await store.changes_since(e.id, -1, 3)
    with pytest.raises(BadRequest):
        await store.changes_since(e.id, 0, 0)


# ----------------------------------------------------------------------------------- fsck


async def populated(store) -> int:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"alpha " * 500, b"beta")
    await store.store_chunks(e.id, [chunk(b"gamma " * 1000, codec=1)])
    await commit(store, e.id, "b1", [put("a", None, c1, s1)], {"a": full(c1, refs1)})
    return e.id


def pack_files(tmp_path) -> list[str]:
    root = tmp_path / "data" / "chunks"
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".pack"))


@on_sync_store
async def test_fsck_clean(store) -> None:
    await populated(store)
    assert await store.fsck() == []


@on_sync_store
async def test_fsck_reports_corrupt_byte(store, tmp_path) -> None:
    await populated(store)
    path = pack_files(tmp_path)[-1]
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = await store.fsck()
    assert [(p.engagement, p.kind) for p in problems] == [("acme", "bad_chunk")]


@on_sync_store
async def test_fsck_reports_missing_pack_and_log_gap(store, backend, tmp_path) -> None:
    eid = await populated(store)
    os.unlink(pack_files(tmp_path)[0])
    backend.raw("UPDATE engagements SET head = 2 WHERE id = ?", (eid,))
    kinds = sorted(p.kind for p in await store.fsck())
    assert kinds == ["bad_log", "missing_pack"]


FAILING_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER fail_batch BEFORE INSERT ON batches"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION fail_batch() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
        "CREATE TRIGGER fail_batch BEFORE INSERT ON batches FOR EACH ROW EXECUTE FUNCTION fail_batch()",
    ],
}


@on_sync_store
async def test_commit_failing_late_rolls_back_everything(store, backend) -> None:
    """A failure after the change rows were inserted (here: the last insert) undoes them all."""
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"one")
    for statement in FAILING_TRIGGER[backend.name]:
        backend.raw(statement)
    with pytest.raises(backend.integrity_or_raise, match="injected"):
        await commit(store, e.id, "b1", [put("a", None, c1, s1)], {"a": full(c1, refs1)})
    assert await state(store, e.id) == (0, {}, 0)
    assert await store.get_manifest(e.id, c1) is None
    backend.raw("DROP TRIGGER fail_batch" + (" ON batches" if backend.name == "postgresql" else ""))
    r = await commit(store, e.id, "b1", [put("a", None, c1, s1)], {"a": full(c1, refs1)})
    assert r.head == 1 and not r.replayed


@on_sync_store
async def test_concurrent_uploads_of_the_same_chunks(store) -> None:
    from twisted.internet.defer import Deferred, gatherResults

    e = await store.create_engagement("acme", "")
    chunks = [chunk(os.urandom(1000)) for _ in range(20)]
    results = await gatherResults(
        [Deferred.fromCoroutine(store.store_chunks(e.id, chunks)) for _ in range(4)]
    )
    assert sum(stored for stored, _ in results) == 20
    assert all(stored + present == 20 for stored, present in results)
    got = await store.read_chunks(e.id, [c.hash for c in chunks])
    assert [g.payload for g in got] == [c.payload for c in chunks]
    assert await store.fsck() == []


@on_sync_store
async def test_commit_nfd_path_is_stored_nfc(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, refs1 = await upload_file(store, e.id, b"umlaut")
    nfd = "Bu\u0308ro.txt"
    r = await commit(store, e.id, "b1", [put(nfd, None, c1, s1)], {nfd: full(c1, refs1)})
    assert r.results[0].status == "applied"
    _, files, _ = await state(store, e.id)
    assert list(files) == ["B\u00fcro.txt"]


@sync_test
async def test_newer_schema_is_refused(backend) -> None:
    s = await backend.open()
    await s.close()
    backend.raw("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(SchemaTooNew, match="newer"):
        await backend.open()


@sync_test
async def test_unreachable_postgres_is_unavailable(tmp_path) -> None:
    from pg import free_port

    backend = Backend("postgresql", tmp_path / "data", f"postgresql://nobody:secret@127.0.0.1:{free_port()}/x")
    with pytest.raises(Unavailable) as caught:
        await backend.open()
    assert "secret" not in str(caught.value)


# ------------------------------------------------------------ history checks (restores)


@on_sync_store
async def test_history_check_catches_a_rolled_back_log(store, backend) -> None:
    """A copy's (store, generation, last seq, record token) is checked against the log: a log
    put back to an earlier state and then committed past the copy's seq again (the case a
    head-only check misses) is refused, as are a seq past the head and another identity or
    generation; a matching view passes. Commits are refused before anything is written."""
    from smartsyncd.core.errors import HistoryDiverged
    from smartsyncd.core.model import HistoryCheck

    e = await store.create_engagement("acme", "")
    ident, gen = await store.store_identity()
    assert len(ident) == 36 and gen == 1
    written = []
    for i in range(3):
        c, s, refs = await upload_file(store, e.id, b"version %d" % i)
        r = await commit(store, e.id, f"b{i}", [put(f"f{i}.txt", None, c, s)], {f"f{i}.txt": full(c, refs)})
        written.append(r)
    head, log = await store.changes_since(e.id, 0, 100)
    assert head == 3 and [c.record_hash for c in log] == [r.head_hash for r in written]
    assert all(c.record_hash and len(c.record_hash) == 64 for c in log)
    assert await store.record_token(e.id, 3) == log[2].record_hash
    copy_view = HistoryCheck(seq=3, hash=log[2].record_hash, store=ident, generation=gen)
    assert await store.changes_since(e.id, 3, 100, copy_view) == (3, [])
    assert (await store.changes_since(e.id, 1, 100, HistoryCheck(1, log[0].record_hash)))[1] == log[1:]

    async def refused(check: HistoryCheck) -> str:
        with pytest.raises(HistoryDiverged) as info:
            await store.changes_since(e.id, check.seq, 100, check)
        assert info.value.status == 409 and info.value.details["head"] == await store.head(e.id)
        return str(info.value.details["reason"])

    assert await refused(HistoryCheck(seq=4, store=ident, generation=gen)) == "head"
    assert await refused(HistoryCheck(seq=3, hash="0" * 64)) == "record"
    assert await refused(HistoryCheck(seq=3, store="another-store")) == "store"
    assert await refused(HistoryCheck(seq=3, generation=2)) == "generation"

    # put the log back to seq 1 (as a restore of an earlier state does), then a colleague
    # commits twice: the head is 3 again, but seq 3 is another record
    backend.raw("DELETE FROM changes WHERE engagement_id = ? AND seq > 1", (e.id,))
    backend.raw("DELETE FROM files WHERE engagement_id = ? AND seq > 1", (e.id,))
    backend.raw("DELETE FROM batches WHERE engagement_id = ?", (e.id,))
    backend.raw("UPDATE engagements SET head = 1 WHERE id = ?", (e.id,))
    for i in (7, 8):
        c, s, refs = await upload_file(store, e.id, b"after the restore %d" % i)
        await commit(store, e.id, f"n{i}", [put(f"new{i}.txt", None, c, s)], {f"new{i}.txt": full(c, refs)})
    assert await store.head(e.id) == 3
    assert await refused(copy_view) == "record"
    # a commit made on the old view is refused whole: nothing written
    c, s, refs = await upload_file(store, e.id, b"edit on the old view")
    with pytest.raises(HistoryDiverged):
        await store.commit(
            e.id, "alice", "sess-1", "old-view", [put("f2.txt", 3, c, s)], {"f2.txt": full(c, refs)}, T0,
            check=copy_view,
        )
    assert await store.head(e.id) == 3
    # the copy's seq 1 is still this log's: following from there is fine
    assert (await store.changes_since(e.id, 1, 100, HistoryCheck(1, log[0].record_hash)))[0] == 3

    # an explicit new generation (smartsync-admin restore) refuses every older view
    assert await store.bump_generation() == (ident, 2)
    assert await store.store_identity() == (ident, 2)
    assert await refused(HistoryCheck(seq=1, hash=log[0].record_hash, store=ident, generation=1)) == "generation"
