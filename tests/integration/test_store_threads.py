"""The store on its real thread pools (so here, not in tests/unit, which runs no reactor).

Pure reads beside a writer: the store's read path (``SqlServerStore.run_read``).

On SQLite the store has a second, read-only connection on its own thread; on PostgreSQL the
pool's connections already read concurrently. Both backends (the fixtures of
tests/unit/test_storage.py):
while a write transaction holds the writer, with a pack and its chunk rows inserted but not
committed, missing-chunk queries, session and role look-ups and the change feed still answer,
and they answer from committed data only (the chunk is "missing" until its pack row commits;
it is "present" right after). The read connection refuses writes.

Several daemons on one PostgreSQL database: stores opening together migrate once, concurrent
commits from two stores leave no gap or duplicate, dropped connections are replaced.
"""

# ruff: noqa: F811  (the fixtures imported from test_storage are test arguments here)

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from smartsyncd.core.errors import Unavailable
from smartsyncd.storage.schema import MIGRATIONS
from smartsyncd.storage.sqlite import DB_FILENAME, open_server_store
from smartsyncd.storage.sqlstore import MetadataDB, SqlServerStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_storage import (  # noqa: E402, F401 - fixtures and helpers of the store suite
    T0,
    Backend,
    backend,
    chunk,
    commit,
    full,
    pg_cluster,
    put,
    upload_file,
)

pytestmark = pytest.mark.integration

HOLD_LIMIT_S = 30.0  # the held writer gives up after this (a broken test must not hang)
READ_DEADLINE_S = 10.0  # a read queued behind the held writer fails the test after this


@pytest_twisted.async_yield_fixture()
async def store(backend: Backend) -> AsyncIterator[SqlServerStore]:
    """The store of ``backend`` on its real thread pools."""
    s = await open_threaded(backend, now=lambda: T0)
    try:
        yield s
    finally:
        await s.close()


async def open_threaded(backend: Backend, **kwargs: Any) -> SqlServerStore:
    return await open_server_store(str(backend.data_dir), reactor=reactor, database_url=backend.url, **kwargs)


async def _within(d: defer.Deferred[Any], seconds: float = READ_DEADLINE_S) -> Any:
    d.addTimeout(seconds, reactor)
    return await d


def _hold_writer_with_pack(
    meta: MetadataDB, engagement_id: int, hash_hex: str, inside: threading.Event, release: threading.Event
) -> None:
    """A write transaction that records a pack and one chunk row, then waits (not committed)."""

    def tx() -> None:
        _insert_pack_rows(meta, engagement_id, hash_hex, "held-pack")
        inside.set()
        if not release.wait(HOLD_LIMIT_S):
            raise RuntimeError("the test never released the writer")

    meta.write(tx)


@pytest_twisted.ensureDeferred
async def test_reads_answer_while_a_write_transaction_holds_the_writer(store: SqlServerStore) -> None:
    eng = await store.create_engagement("reads", "Reads")
    c = chunk(b"x" * 4096)
    inside, release = threading.Event(), threading.Event()
    held = defer.ensureDeferred(store.run_db(_hold_writer_with_pack, eng.id, c.hash, inside, release))
    try:
        # the writer is inside its transaction, rows inserted, not committed
        assert await _within(defer.ensureDeferred(_wait_event(inside)))
        # every pure read answers now, from committed data only
        assert await _within(defer.ensureDeferred(store.missing_chunks(eng.id, [c.hash]))) == [c.hash]
        got = await _within(defer.ensureDeferred(store.get_engagement("reads")))
        assert got is not None and got.head == 0
        assert await _within(defer.ensureDeferred(store.changes_since(eng.id, 0, 10))) == (0, [])
        assert await _within(defer.ensureDeferred(store.get_session("no such token hash"))) is None
        assert await _within(defer.ensureDeferred(store.role_for("reads", "nobody", ()))) is None
    finally:
        release.set()
    await _within(held, HOLD_LIMIT_S)
    # committed now: the very next read sees it
    assert await store.missing_chunks(eng.id, [c.hash]) == []


@pytest_twisted.ensureDeferred
async def test_a_rolled_back_pack_is_never_answered_present(store: SqlServerStore) -> None:
    eng = await store.create_engagement("rolled", "Rolled back")
    c = chunk(b"y" * 4096)
    inside, release = threading.Event(), threading.Event()

    def hold_then_fail(meta: MetadataDB) -> None:
        def tx() -> None:
            _insert_pack_rows(meta, eng.id, c.hash, "doomed-pack")
            inside.set()
            if not release.wait(HOLD_LIMIT_S):
                raise RuntimeError("the test never released the writer")
            raise ValueError("the pack could not be made durable")  # rolls the transaction back

        meta.write(tx)

    held = defer.ensureDeferred(store.run_db(hold_then_fail))
    try:
        assert await _within(defer.ensureDeferred(_wait_event(inside)))
        assert await _within(defer.ensureDeferred(store.missing_chunks(eng.id, [c.hash]))) == [c.hash]
    finally:
        release.set()
    with pytest.raises(ValueError):
        await _within(held, HOLD_LIMIT_S)
    assert await store.missing_chunks(eng.id, [c.hash]) == [c.hash]
    # an upload then stores it for real, and it is present
    assert await store.store_chunks(eng.id, [c]) == (1, 0)
    assert await store.missing_chunks(eng.id, [c.hash]) == []
    assert [s.payload for s in await store.read_chunks(eng.id, [c.hash])] == [c.payload]


@pytest_twisted.ensureDeferred
async def test_the_sqlite_read_connection_cannot_write(tmp_path) -> None:
    s = await open_server_store(str(tmp_path), reactor=reactor, now=lambda: T0)
    try:
        eng = await s.create_engagement("ro", "Read only")
        await s.store_chunks(eng.id, [chunk(b"z" * 100)])

        def delete_all(meta: MetadataDB) -> None:
            meta.execute("DELETE FROM chunks")

        with pytest.raises(Unavailable):  # SQLITE_READONLY: the read connection is query_only
            await s.run_read(delete_all)
        assert await s.missing_chunks(eng.id, [chunk(b"z" * 100).hash]) == []
    finally:
        await s.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    try:
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchall() == [(1,)]
    finally:
        conn.close()


async def _wait_event(event: threading.Event) -> bool:
    """Poll a threading.Event from the reactor without blocking it (deadline: _within)."""
    while not event.is_set():
        await deferLater(reactor, 0.005, lambda: None)
    return True


def _insert_pack_rows(meta: MetadataDB, engagement_id: int, hash_hex: str, pack: str) -> None:
    binary = meta.dialect.binary
    meta.execute(
        "INSERT INTO packs (engagement_id, id, size, created_at) VALUES (?, ?, ?, ?)",
        (engagement_id, pack, 4096, T0.isoformat()),
    )
    meta.execute(
        "INSERT INTO chunks (engagement_id, hash, pack_id, pack_offset, stored_size, codec, raw_size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (engagement_id, binary(bytes.fromhex(hash_hex)), pack, 0, 4096, 0, 4096),
    )


@pytest_twisted.ensureDeferred
async def test_postgres_stores_opening_together_migrate_once(pg_cluster, tmp_path) -> None:
    """Four stores (four daemons starting at once) on one fresh database: all open, one schema."""
    from twisted.internet.defer import Deferred, gatherResults

    url = pg_cluster.url(pg_cluster.create_database())
    backend = Backend("postgresql", tmp_path / "data", url)
    stores = await gatherResults([Deferred.fromCoroutine(open_threaded(backend)) for _ in range(4)])
    try:
        assert backend.raw("SELECT version FROM schema_version ORDER BY version") == [
            (v,) for v, _ in MIGRATIONS
        ]
        assert await stores[0].create_engagement("acme", "")
        assert [e.name for e in await stores[3].list_engagements()] == ["acme"]
    finally:
        for s in stores:
            await s.close()


@pytest_twisted.ensureDeferred
async def test_postgres_concurrent_commits_from_two_stores_have_no_gap_or_duplicate(
    pg_cluster, tmp_path
) -> None:
    """Two stores (two daemons, 4 connections each) commit 40 batches to one engagement at once."""
    from twisted.internet.defer import Deferred, gatherResults

    url = pg_cluster.url(pg_cluster.create_database())
    a = await open_threaded(Backend("postgresql", tmp_path / "data", url))
    b = await open_threaded(Backend("postgresql", tmp_path / "data", url))
    try:
        e = await a.create_engagement("acme", "")
        c1, s1, refs1 = await upload_file(a, e.id, b"shared content")

        async def one(store, i: int):
            path = f"f{i:03d}.txt"
            return await commit(store, e.id, f"batch-{i}", [put(path, None, c1, s1)], {path: full(c1, refs1)})

        results = await gatherResults(
            [Deferred.fromCoroutine(one(a if i % 2 else b, i)) for i in range(40)]
        )
        seqs = sorted(r.results[0].seq for r in results)
        assert seqs == list(range(1, 41))
        head, changes = await b.changes_since(e.id, 0, 100)
        assert head == 40 and [c.seq for c in changes] == list(range(1, 41))
        assert len({c.path for c in changes}) == 40
        # the same batch retried through the other store applies nothing again
        again = await one(a, 0)
        assert again.replayed and (again.head, again.results) == (results[0].head, results[0].results)
        assert await a.head(e.id) == 40
        assert await a.fsck() == []
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_postgres_connections_are_replaced_after_the_server_drops_them(pg_cluster, tmp_path) -> None:
    """A database restart (here: every session terminated) heals without reopening the store."""
    url = pg_cluster.url(pg_cluster.create_database())
    backend = Backend("postgresql", tmp_path / "data", url)
    s = await open_threaded(backend)
    try:
        await s.add_user("alice", "h")
        dbname = url.rsplit("/", 1)[1]
        pg_cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        )
        outcomes = []
        for _ in range(8):  # each DB thread finds its dead connection at most once
            try:
                outcomes.append((await s.get_user("alice")) is not None)
            except Unavailable:
                outcomes.append(False)
        assert outcomes[-1] is True
        assert await s.check_health() == {"database": "ok", "storage": "ok"}
    finally:
        await s.close()
