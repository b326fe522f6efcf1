"""SQLite: the dialect, the connection settings, and ``open_server_store``.

SQLite is the default metadata database: one file, ``<data_dir>/metadata.sqlite3``, on a local
disk (never on NFS: its locking is not reliable there). Settings, and why:

- ``journal_mode=WAL``: readers do not block the writer.
- ``synchronous=FULL``: a committed transaction survives power loss (NORMAL can lose the last
  commits in WAL mode, and a lost commit is an acknowledged change gone).
- ``foreign_keys=ON``: rows cannot point at engagements or packs that do not exist.
- ``busy_timeout``: another process (the admin CLI) holding the lock briefly is waited for.
- autocommit mode (``isolation_level=None``): transactions are explicit; writes start with
  ``BEGIN IMMEDIATE`` so the write lock is taken up front and a commit cannot fail half-way on
  lock upgrade.

The connection is created, used and closed on the store's single DB thread. A second
connection (``connect_sqlite(path, read_only=True)``: ``query_only``) lives on its own read
thread and answers pure reads (missing chunks, sessions, roles, change feeds): WAL lets it read
the last committed state while a commit batch holds the writer, so those answers no longer wait
behind commits. It sees committed rows only; nothing it answers is trusted for a write (a commit
checks its chunks again inside its own transaction).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from smartsyncd.core.errors import Unavailable
from smartsyncd.storage.db import Dialect, MetadataDB, PoolFactory
from smartsyncd.storage.durable import ensure_dir
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.schema import migrate
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.storage.volumes import load_placements

log = Logger(namespace="smartsyncd.storage")

# Primary result codes of an engine that cannot serve right now (busy, locked, out of memory,
# read-only, I/O error, corrupt, disk full, cannot open, protocol, not a database):
# https://www.sqlite.org/rescode.html. SQLITE_ERROR (1) is an SQL mistake: a bug, not an outage.
_OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def is_sqlite_outage(error: BaseException) -> bool:
    """Whether an ``sqlite3.OperationalError`` means the database cannot serve (vs. a bug)."""
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return True  # raised by us or without a code (e.g. WAL could not be enabled)
    return (code & 0xFF) in _OUTAGE_CODES


SQLITE = Dialect(
    name="sqlite",
    types={"id_pk": "INTEGER PRIMARY KEY", "blob": "BLOB", "fold_text": "TEXT", "path_text": "TEXT"},
    begin_write="BEGIN IMMEDIATE",
    begin_read="BEGIN",
    lock_engagement=None,  # BEGIN IMMEDIATE already serializes writers
    table_exists_sql="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    unavailable_errors=(sqlite3.OperationalError,),
    integrity_errors=(sqlite3.IntegrityError,),
    is_outage=is_sqlite_outage,
    # Blobs are bound as bytearray: the sqlite3 module binds bytearray (like int, float, str)
    # directly, but sends every bytes parameter through its adapter lookup first (a tuple, a
    # dict miss, a failed attribute lookup that formats an AttributeError). A commit binds
    # about ten hashes per new file: half the module's binding cost. Reads still return bytes.
    binary=bytearray,
)

DB_FILENAME = "metadata.sqlite3"
BUSY_TIMEOUT_MS = 10_000


def connect_sqlite(path: str, *, read_only: bool = False) -> sqlite3.Connection:
    """Open ``path`` with the settings above (blocking: call it on the thread that will use it).

    ``read_only``: the read connection (``query_only``: any write through it is an error).
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not enable WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _sqlite_path(data_dir: str, database_url: str | None) -> str:
    if database_url is None or database_url == "":
        return os.path.join(data_dir, DB_FILENAME)
    if database_url.startswith("sqlite:///"):
        return database_url[len("sqlite://") :]
    raise ValueError(f"unsupported database url scheme: {database_url.split(':', 1)[0]!r} (sqlite:/// or postgresql://)")


async def open_server_store(
    data_dir: str,
    *,
    reactor: Any,
    database_url: str | None = None,
    storage_path: str | None = None,
    volumes: Mapping[str, str] | None = None,
    now: Callable[[], datetime] | None = None,
    pool: PoolFactory = ThreadPool,
) -> SqlServerStore:
    """Open (creating and migrating as needed) the store for ``data_dir``.

    ``now`` supplies record timestamps (created_at); the default is the system clock in UTC.
    Raises ``Unavailable`` when the database or the storage folder cannot be opened.
    A ``postgresql://`` URL opens the PostgreSQL store instead (``storage/postgres.py``).
    ``pool(minthreads=, maxthreads=, name=)`` makes the thread pools (tests pass a synchronous
    stand-in, ``smartsyncd.testing.syncpool``).
    """
    if database_url is not None and database_url.startswith(("postgresql://", "postgres://")):
        from smartsyncd.storage.postgres import open_postgres_store

        return await open_postgres_store(
            database_url, data_dir=data_dir, reactor=reactor, storage_path=storage_path, volumes=volumes,
            now=now, pool=pool,
        )
    db_path = _sqlite_path(data_dir, database_url)
    packs = PackStore(storage_path or os.path.join(data_dir, "chunks"), volumes=volumes)
    db_pool = pool(minthreads=1, maxthreads=1, name="smartsyncd-db")
    read_pool = pool(minthreads=1, maxthreads=1, name="smartsyncd-db-read")
    file_pool = pool(minthreads=2, maxthreads=4, name="smartsyncd-files")
    db_pool.start()
    read_pool.start()
    file_pool.start()

    def open_db() -> MetadataDB:
        ensure_dir(os.path.dirname(os.path.abspath(db_path)))
        conn = connect_sqlite(db_path)
        try:
            migrate(conn, SQLITE)
        except BaseException:
            conn.close()
            raise
        return MetadataDB(conn, SQLITE)

    def open_reader() -> MetadataDB:  # after open_db: the file exists and is migrated
        return MetadataDB(connect_sqlite(db_path, read_only=True), SQLITE)

    meta: MetadataDB | None = None
    try:
        await deferToThreadPool(reactor, file_pool, packs.prepare)
        meta = await deferToThreadPool(reactor, db_pool, open_db)
        reader = await deferToThreadPool(reactor, read_pool, open_reader)
    except BaseException as e:
        if meta is not None:
            await deferToThreadPool(reactor, db_pool, meta.close)
        db_pool.stop()
        read_pool.stop()
        file_pool.stop()
        if isinstance(e, sqlite3.OperationalError | OSError):
            raise Unavailable(f"cannot open the store: {e}") from e
        raise
    log.info("metadata store open: {path}, chunks under {root}", path=db_path, root=packs.root)
    store = SqlServerStore(
        reactor=reactor, db=meta, packs=packs, db_pool=db_pool, file_pool=file_pool, clock=now,
        reader=reader, read_pool=read_pool,
    )
    await load_placements(store, packs)
    return store
