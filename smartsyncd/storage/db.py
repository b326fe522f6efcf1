"""The metadata database object every storage module works on: ``MetadataDB`` and ``Dialect``.

``MetadataDB`` is one DB-API connection (autocommit mode; transactions are explicit) with its
``Dialect`` and the small helpers the domain modules share (``execute``/``one``/``all``,
``write``/``read`` transactions, the engagement head and id). It must only ever be used from
the DB thread that owns it (SQLite connections belong to the thread that opened them). The SQL
is plain with ``?`` placeholders; everything that differs between databases (connecting,
pragmas, the write-transaction statement, locking the engagement row, type names, which driver
errors mean "unreachable") is in a ``Dialect`` (``storage/sqlite.py`` defines the SQLite one,
``storage/postgres.py`` the PostgreSQL one).

The domain operations are functions over a ``MetadataDB``, one module per role:
``accounts`` (users, engagements, grants, sessions, sign-in failures), ``chunks`` (packs and
chunk rows, manifests), ``changelog`` (head, feed, snapshot), ``commit`` (the commit
transaction), ``headview``, ``workflow``/``locks``/``copies``/``audit``/``gc``, ``history`` and
``fsck``. ``sqlstore.SqlServerStore`` runs them on the thread pools. This module imports none
of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from twisted.python.threadpool import ThreadPool

from smartsyncd.core import manifest
from smartsyncd.core.errors import BadRequest, NotFound

T = TypeVar("T")


class PoolFactory(Protocol):
    """Makes a thread pool as ``twisted.python.threadpool.ThreadPool(...)`` does (the default)."""

    def __call__(self, *, minthreads: int, maxthreads: int, name: str) -> ThreadPool: ...

ENGAGEMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CONTROL = re.compile("[\x00-\x1f\x7f]")
IN_BATCH = 500  # hashes per IN (...) query: well under every database's parameter limit
MAX_BATCH_KEY = 200
MAX_REASON = 1000  # characters of a workflow reason (lock break, finalize, reopen)


@dataclass(frozen=True)
class Dialect:
    """What differs between database engines; the domain SQL itself does not."""

    name: str
    types: Mapping[str, str]  # {id_pk}, {blob}, {fold_text} in schema.py
    begin_write: str  # starts a transaction that holds the write lock from the start
    begin_read: str
    lock_engagement: str | None  # row lock for commit where begin_write does not serialize
    table_exists_sql: str  # one ? parameter: the table name
    unavailable_errors: tuple[type[BaseException], ...]  # driver errors meaning "unreachable"
    integrity_errors: tuple[type[BaseException], ...]
    placeholder: str = "?"
    binary: Callable[[bytes], Any] = field(default=bytes)
    # Several daemons (PostgreSQL): a lock held around ``schema.migrate`` so migrations run
    # once, and a statement run inside a commit that wakes the other daemons' long-polls
    # (one ? parameter: "<engagement id>:<new head>"; delivered only if the commit is).
    migration_lock: str | None = None
    migration_unlock: str | None = None
    notify_commit: str | None = None
    # Driver errors after which the whole transaction may simply run again (deadlock,
    # serialization failure): the store retries those a few times before giving up.
    retry_errors: tuple[type[BaseException], ...] = ()
    # Whether a connection is unusable after an error (then the store opens a new one).
    is_broken: Callable[[Any], bool] = field(default=lambda conn: False)
    # Which of ``unavailable_errors`` really mean an outage (answered 503, retried by clients);
    # the rest (an SQL mistake, a missing table) propagate as the bugs they are (500, logged).
    is_outage: Callable[[BaseException], bool] = field(default=lambda error: True)

    def sql(self, query: str) -> str:
        return query if self.placeholder == "?" else query.replace("?", self.placeholder)

    def table_exists(self, conn: Any, name: str) -> bool:
        return conn.execute(self.sql(self.table_exists_sql), (name,)).fetchone() is not None


# ---------------------------------------------------------------------------------- helpers


def ts(value: datetime) -> str:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise BadRequest("times must be timezone-aware datetimes")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def dt_or_none(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def hash_bytes(value: object, what: str = "hash") -> bytes:
    if not manifest.is_hash(value):
        raise BadRequest(f"{what} must be 64 lowercase hex characters", value=str(value)[:80])
    assert isinstance(value, str)
    return bytes.fromhex(value)


def hex_or_none(value: Any) -> str | None:
    return None if value is None else bytes(value).hex()


def checked_text(value: object, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or CONTROL.search(value):
        raise BadRequest(f"{what} must be a non-empty string of at most {max_len} characters")
    return value



def checked_line(value: object, what: str, max_len: int = 256) -> str:
    """A workflow text (reason, host, actor): one non-blank line of at most ``max_len``."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_len or CONTROL.search(value):
        raise BadRequest(f"{what} must be a non-empty line of at most {max_len} characters")
    return value


def chunks_of(items: Sequence[T], size: int = IN_BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MetadataDB:
    """One connection and its dialect; use only from the DB thread."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    # -- plumbing

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.dialect.sql(query), tuple(params))

    def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(query, params).fetchone()

    def all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(query, params).fetchall())

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        cur = self.conn.cursor()  # DB-API: executemany lives on cursors (psycopg has no conn.executemany)
        try:
            cur.executemany(self.dialect.sql(query), rows if isinstance(rows, list) else list(rows))
        finally:
            cur.close()

    def write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one write transaction: commit on return, roll back on any error."""
        self.conn.execute(self.dialect.begin_write)
        try:
            result = fn()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent view across its queries)."""
        self.conn.execute(self.dialect.begin_read)
        try:
            return fn()
        finally:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    def ping(self) -> None:
        self.one("SELECT 1")

    def engagement_head(self, engagement_id: int) -> int:
        if not isinstance(engagement_id, int) or isinstance(engagement_id, bool):
            raise BadRequest("engagement id must be an integer")
        row = self.one("SELECT head FROM engagements WHERE id = ?", (engagement_id,))
        if row is None:
            raise NotFound(f"no engagement with id {engagement_id}")
        return int(row[0])

    def _engagement_id(self, name: str) -> int:
        row = self.one("SELECT id FROM engagements WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no engagement named {name!r}", engagement=name)
        return int(row[0])


def engagement_name(db: MetadataDB, engagement_id: int) -> str:
    row = db.one("SELECT name FROM engagements WHERE id = ?", (engagement_id,))
    if row is None:
        raise NotFound(f"no engagement with id {engagement_id}")
    return str(row[0])


def lock_engagement(db: MetadataDB, engagement_id: int) -> None:
    """Hold the engagement row for the rest of the write transaction (where the dialect needs it)."""
    if db.dialect.lock_engagement:
        db.execute(db.dialect.lock_engagement, (engagement_id,))
