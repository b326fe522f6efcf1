"""A branch office's metadata: a PostgreSQL hot standby of the central database (issue 18).

The branch daemon (``service/branch.py``) reads its metadata from a physical streaming standby
of the central primary (set up with ``pg_basebackup -R``, docs/branch-offices.md) and never
writes to it: every connection is set ``default_transaction_read_only``, the schema is checked
instead of migrated, and ``open_standby_store`` refuses a database that is not in recovery
(``pg_is_in_recovery()``): a branch pointed at a primary would otherwise be a second writer.

``BranchStore`` is the SQL store with what a read-only replica cannot do turned off: a session
is neither slid forward nor deleted here (central does both, and the rows replay), read events
are spooled for central (``storage/readspool.py``, sent by ``service/readforward.py``), chunk payloads come from
the branch's own cache (``storage/branchcache.py``, trimmed to ``[branch] cache_max_bytes``),
not from the pack rows, which name central's packs.

``replay_state`` is the cheap question the branch asks every few hundred milliseconds: the
replayed WAL position and how old the last replayed transaction is. LISTEN/NOTIFY does not
work on a standby (PostgreSQL delivers notifications only on the server where they were sent),
so long-polls are woken by polling this instead (``service/branch.py``).

Everything here blocks except the store's async methods: call it on a DB thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from smartsyncd.core.errors import Unavailable
from smartsyncd.core.model import VerifiedChunk
from smartsyncd.storage.api import SessionRecord, StoredChunk
from smartsyncd.storage.branchcache import ChunkCache, TrimReport
from smartsyncd.storage.db import MetadataDB, PoolFactory
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.postgres import POOL_THREADS, connect_postgres, postgres_dialect
from smartsyncd.storage.readaudit import ReadEvent
from smartsyncd.storage.readspool import ReadSpool
from smartsyncd.storage.schema import LATEST_VERSION, current_version
from smartsyncd.storage.sqlstore import SqlServerStore

log = Logger(namespace="smartsyncd.storage")


class NotAStandby(Unavailable):
    """The branch's database is a primary (or the schema does not match): refuse to start."""


def connect_read_only(url: str, application_name: str = "smartsyncd-branch") -> Any:
    """A connection whose every transaction is read-only (blocking)."""
    conn = connect_postgres(url, application_name)
    conn.execute("SET default_transaction_read_only = on")
    return conn


def in_recovery(conn: Any) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row[0])


def replay_state(conn: Any) -> tuple[str | None, float | None]:
    """(replayed WAL position, lag in seconds): the lag is 0 while everything received is
    replayed (an idle primary is not lag), else the age of the last replayed transaction;
    None for each when nothing has been replayed yet."""
    row = conn.execute(
        "SELECT pg_last_wal_replay_lsn()::text,"
        " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0"
        " ELSE EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp()))::float8"
        " END"
    ).fetchone()
    return (row[0], None if row[1] is None else max(0.0, float(row[1])))


def engagement_heads(conn: Any) -> dict[int, int]:
    """Every engagement's head (one small query)."""
    return {int(i): int(h) for i, h in conn.execute("SELECT id, head FROM engagements").fetchall()}


def check_standby(url: str) -> int:
    """Refuse (``NotAStandby``) unless ``url`` is a hot standby at this code's schema version;
    returns the version."""
    conn = connect_read_only(url)
    try:
        if not in_recovery(conn):
            raise NotAStandby(
                "[branch] needs [database] url to name a hot standby of the central database"
                " (pg_is_in_recovery() is false: this is a primary, and a branch never writes"
                " to it); see docs/branch-offices.md"
            )
        version = current_version(conn, postgres_dialect())
        if version != LATEST_VERSION:
            raise NotAStandby(
                f"the standby's schema is version {version}, this smartsyncd needs"
                f" {LATEST_VERSION}: upgrade the central daemons first (their migration replays"
                " here), or this branch to the central's version"
            )
        return version
    finally:
        conn.close()


class BranchStore(SqlServerStore):
    """The SQL store on a standby: no writes, chunk payloads from the branch's cache."""

    cache: ChunkCache
    spool: ReadSpool | None = None  # with a branch credential: read events wait here for central

    async def update_session(self, session: SessionRecord) -> None:
        """Sliding and group refreshes stay in memory: central keeps the session row."""

    async def delete_session(self, token_hash: str) -> None:
        """An expired session is refused without deleting its row (central deletes it)."""

    async def record_reads(self, events: Sequence[ReadEvent]) -> int:
        """Kept in the spool for central (``service/readforward.py``); without a branch
        credential they cannot be sent, and are dropped."""
        spool = self.spool
        if spool is None:
            log.debug("{n} read event(s) not recorded at the branch", n=len(events))
            return 0
        await self.run_file(lambda _packs: spool.add(events))
        return len(events)

    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]:
        """The chunks from the cache; the web layer fetched the missing ones first
        (``web/branch.py``), so a chunk still absent is not known here (404)."""
        found = await self.run_file(lambda _packs: self.cache.read(engagement_id, hashes))
        lacking = [h for h in hashes if h not in found]
        if lacking:  # the fetch brought them: trimmed since (a size limit); the retry fetches
            raise Unavailable(
                f"{len(lacking)} chunk(s) left this branch's cache meanwhile; try again", chunks=lacking
            )
        return [found[h] for h in hashes]

    async def read_record_spans(
        self, engagement_id: int, hashes: Sequence[str], max_bytes: int, max_spans: int,
        piece_bytes: int,
    ) -> list[bytes] | None:
        """Never: chunks here come from the cache (``read_chunks``), not the packs."""
        return None

    async def cache_chunks(self, engagement_id: int, chunks: Sequence[VerifiedChunk]) -> int:
        """Keep verified chunks fetched from central (one durable pack)."""
        return await self.run_file(lambda _packs: self.cache.add(engagement_id, chunks))

    async def trim_cache(self, max_bytes: int, carried: set[int], protected: set[tuple[int, str]]) -> TrimReport:
        """Trim the chunk cache to its limit, off the reactor (``ChunkCache.trim``)."""
        return await self.run_file(lambda _packs: self.cache.trim(max_bytes, carried, protected))

    async def replay_state(self) -> tuple[str | None, float | None]:
        return await self.run_read(lambda meta: replay_state(meta.conn))

    async def engagement_heads(self) -> dict[int, int]:
        return await self.run_read(lambda meta: engagement_heads(meta.conn))


async def open_standby_store(
    database_url: str,
    *,
    data_dir: str,
    reactor: Any,
    storage_path: str | None = None,
    now: Callable[[], datetime] | None = None,
    threads: int = POOL_THREADS,
    pool: PoolFactory = ThreadPool,
) -> BranchStore:
    """Open the branch's store: check it is a standby, load the chunk cache's index."""
    dialect = postgres_dialect()
    root = storage_path or os.path.join(data_dir, "chunks")
    packs = PackStore(root)
    cache = ChunkCache(packs)
    db_pool = pool(minthreads=threads, maxthreads=threads, name="smartsyncd-db")
    file_pool = pool(minthreads=2, maxthreads=4, name="smartsyncd-files")
    db_pool.start()
    file_pool.start()
    try:
        version = await deferToThreadPool(reactor, db_pool, check_standby, database_url)
        cached = await deferToThreadPool(reactor, file_pool, cache.load)
    except BaseException as e:
        db_pool.stop()
        file_pool.stop()
        if isinstance(e, (*dialect.unavailable_errors, OSError)):
            raise Unavailable(f"cannot open the standby: {type(e).__name__}: {e}") from e
        raise
    log.info(
        "branch metadata: PostgreSQL hot standby (schema {version}, read-only), chunk cache"
        " under {root} ({chunks} chunks)", version=version, root=packs.root, chunks=cached,
    )
    store = BranchStore(
        reactor=reactor,
        db=None,
        connect=lambda: MetadataDB(connect_read_only(database_url), dialect),
        dialect=dialect,
        packs=packs,
        db_pool=db_pool,
        file_pool=file_pool,
        clock=now,
    )
    store.cache = cache
    return store
