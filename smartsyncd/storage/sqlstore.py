"""The metadata store's domain logic in portable SQL, and the async ``SqlServerStore``.

Two layers:

- ``MetadataDB``: synchronous methods on one DB-API connection (autocommit mode; transactions
  are explicit). It must only ever be used from the DB thread that owns it (SQLite connections
  belong to the thread that opened them). The SQL is plain with ``?`` placeholders; everything
  that differs between databases (connecting, pragmas, the write-transaction statement, locking
  the engagement row, type names, which driver errors mean "unreachable") is in a ``Dialect``
  (``storage/sqlite.py`` defines the SQLite one, ``storage/postgres.py`` the PostgreSQL one).
- ``SqlServerStore``: implements ``storage.api.ServerStore``. Every method is a coroutine that
  runs the SQL on the DB pool and pack I/O on the file pool (``deferToThreadPool``), so the
  reactor thread never blocks. SQLite: one DB thread, one connection. PostgreSQL: N DB threads,
  each with its own connection (opened on first use, replaced when broken); commits serialize
  on the engagement row (``SELECT ... FOR UPDATE``), so several daemons can share the database.

Commit (``MetadataDB.commit``) is one write transaction: idempotency lookup by (engagement, user, batch)
-> the stored answer, replayed if the changes match its digest (else 409); else ``core.commit_rules.plan_commit`` over a ``HeadView`` backed
by the ``files`` table; then every written put's manifest is resolved (known content, a full
chunk list, or a delta against a known manifest), checked (content id, size, every chunk present)
and stored; sequence numbers head+1.. are assigned in outcome order; changes are inserted, files
upserted (tombstones stay as rows with NULL content), the head advanced and the answer stored.
Any error rolls everything back: a batch is applied whole or not at all.

Chunk upload (``SqlServerStore.store_chunks``): drop chunks already present, write the rest as one
pack (fsynced, see ``packs``), then record the pack and chunk rows in one transaction; only then
does the caller acknowledge. A crash between leaves an orphan pack, never a dangling row.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from smartsyncd.core import commit_rules, manifest
from smartsyncd.core.audit import GLOBAL_CHAIN, change_fields, engagement_chain
from smartsyncd.core.errors import (
    BadRequest,
    MissingChunks,
    NotFound,
    StorageFull,
    SyncError,
    Unavailable,
    UnknownContent,
)
from smartsyncd.core.locks import Lock
from smartsyncd.core.model import (
    ROLES,
    Change,
    ChunkRef,
    FileState,
    HistoryCheck,
    Manifest,
    Outcome,
    ProposedChange,
    Role,
)
from smartsyncd.core.paths import ancestors, fold_key, normalize_path
from smartsyncd.runtime.gcthreshold import raised_gen0_threshold
from smartsyncd.storage import history, workflow
from smartsyncd.storage.api import (
    AuditRecord,
    ChainReport,
    ChunkUpload,
    CommitResult,
    CommitResultItem,
    CopyRecord,
    EngagementRecord,
    EngagementStatus,
    ExportFile,
    FsckProblem,
    GcReport,
    Grant,
    PrincipalKind,
    PutManifest,
    SessionRecord,
    StoredChunk,
    UserRecord,
    VerifiedChunk,
    VersionRecord,
)
from smartsyncd.storage.packs import PackStore, PackWriter

T = TypeVar("T")
log = Logger(namespace="smartsyncd.storage")

_ENGAGEMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_IN_BATCH = 500  # hashes per IN (...) query: well under every database's parameter limit
_MAX_BATCH_KEY = 200


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


def _ts(value: datetime) -> str:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise BadRequest("times must be timezone-aware datetimes")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _hash_bytes(value: object, what: str = "hash") -> bytes:
    if not manifest.is_hash(value):
        raise BadRequest(f"{what} must be 64 lowercase hex characters", value=str(value)[:80])
    assert isinstance(value, str)
    return bytes.fromhex(value)


def _hex(value: Any) -> str | None:
    return None if value is None else bytes(value).hex()


def _text(value: object, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or _CONTROL.search(value):
        raise BadRequest(f"{what} must be a non-empty string of at most {max_len} characters")
    return value


def _chunks_of(items: Sequence[T], size: int = _IN_BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _user(row: Any) -> UserRecord:
    return UserRecord(name=row[0], password_hash=row[1], created_at=_dt(row[2]), disabled=bool(row[3]))


def _engagement(row: Any) -> EngagementRecord:
    return EngagementRecord(id=int(row[0]), name=row[1], title=row[2], created_at=_dt(row[3]), head=int(row[4]))


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        token_hash=row[0],
        id=row[1],
        user=row[2],
        groups=tuple(json.loads(row[3])),
        backend=row[4],
        created_at=_dt(row[5]),
        expires_at=_dt(row[6]),
        refreshed_at=_dt(row[7]),
    )


_CHANGE_COLUMNS = (
    "seq, path, kind, content, size, prev_seq, user_name, session_id, committed_at, conflict_of, batch"
)


# what the change feed reads: the columns above and the record's chain hash (its token)
_FEED_COLUMNS = _CHANGE_COLUMNS + ", record_hash"


def _change(row: Any) -> Change:
    return Change(
        seq=int(row[0]),
        path=row[1],
        kind=row[2],
        content=_hex(row[3]),
        size=int(row[4]),
        prev_seq=None if row[5] is None else int(row[5]),
        user=row[6],
        session=row[7],
        time=_dt(row[8]),
        conflict_of=row[9],
        batch=row[10],
        record_hash=_hex(row[11]) if len(row) > 11 else None,
    )


def _result_to_json(result: CommitResult, digest: str) -> str:
    return json.dumps(
        {
            "digest": digest,
            "head": result.head,
            "head_hash": result.head_hash,
            "results": [
                {
                    "path": r.path,
                    "status": r.status,
                    "seq": r.seq,
                    "conflict_path": r.conflict_path,
                    "current_seq": r.current_seq,
                }
                for r in result.results
            ],
        }
    )


def _result_from_json(text: str) -> CommitResult:
    data = json.loads(text)
    return CommitResult(
        head=data["head"],
        head_hash=data.get("head_hash"),
        results=tuple(CommitResultItem(**item) for item in data["results"]),
        changes=(),
        replayed=True,
    )


# ----------------------------------------------------------------------------- head view


class SqlHeadView:
    """``core.commit_rules.HeadView`` over the ``files`` table, inside the commit transaction."""

    def __init__(self, db: MetadataDB, engagement_id: int) -> None:
        self._db = db
        self._id = engagement_id

    def state(self, path: str) -> FileState | None:
        row = self._db.one(
            "SELECT seq, content, size FROM files WHERE engagement_id = ? AND path = ?",
            (self._id, path),
        )
        if row is None:
            return None
        return FileState(path=path, seq=int(row[0]), content=_hex(row[1]), size=int(row[2]))

    def live_path_with_key(self, key: str) -> str | None:
        row = self._db.one(
            "SELECT path FROM files WHERE engagement_id = ? AND fold_key = ?"
            " AND content IS NOT NULL ORDER BY path LIMIT 1",
            (self._id, key),
        )
        return None if row is None else str(row[0])

    def folder_spelling(self, key: str) -> str | None:
        if not key:
            return ""
        # Live files below the folder have fold keys in [key + "/", key + "0"): "0" follows "/".
        row = self._db.one(
            "SELECT path FROM files WHERE engagement_id = ? AND fold_key >= ? AND fold_key < ?"
            " AND content IS NOT NULL ORDER BY fold_key LIMIT 1",
            (self._id, key + "/", key + "0"),
        )
        if row is None:
            return None
        # casefold may change a segment's length (ß -> ss) but never the segment count.
        return "/".join(str(row[0]).split("/")[: key.count("/") + 1])


# A commit of n changes reads the engagement's whole ``files`` table in one query when it has
# at most this many rows (cost proportional to the batch): three indexed lookups per change
# were most of a 10,000-file commit's time. Larger engagements: ``KeyedHeadView`` (the rows at
# the batch's keys), so the last of five batches of 2,000 no longer reads 8,000 rows.
_LOAD_HEAD_BASE = 256
_LOAD_HEAD_PER_CHANGE = 2  # beyond that, KeyedHeadView (about one range query per change) is cheaper


class LoadedHeadView:
    """``HeadView`` over every ``files`` row of an engagement, read once inside the commit
    transaction; answers exactly as ``SqlHeadView`` does (same bytewise orderings)."""

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        """``rows``: (path, fold_key, seq, content, size) of every row, tombstones too."""
        self._states: dict[str, FileState] = {}
        live: list[tuple[str, str]] = []
        for path, key, seq, content, size in rows:
            self._states[path] = FileState(path=path, seq=int(seq), content=_hex(content), size=int(size))
            if content is not None:
                live.append((key, path))
        live.sort()  # str order is code point order: the bytewise order of UTF-8 (both DBs)
        self._live: dict[str, str] = {}
        self._folders: dict[str, str] = {}
        for key, path in live:
            self._live.setdefault(key, path)  # ORDER BY path LIMIT 1
            key_parts = key.split("/")
            if len(key_parts) == 1:
                continue
            path_parts = path.split("/")
            for i in range(1, len(key_parts)):  # ORDER BY fold_key LIMIT 1 under each folder
                self._folders.setdefault("/".join(key_parts[:i]), "/".join(path_parts[:i]))

    def state(self, path: str) -> FileState | None:
        return self._states.get(path)

    def live_path_with_key(self, key: str) -> str | None:
        return self._live.get(key)

    def folder_spelling(self, key: str) -> str | None:
        if not key:
            return ""
        return self._folders.get(key)


class KeyedHeadView:
    """``HeadView`` for a batch on an engagement too big to read whole: the ``files`` rows whose
    fold key is that of a proposed path or of one of its folders, read in ``IN`` batches (cost
    proportional to the batch, not the engagement). Those keys are answered from the rows read;
    any other key (a conflict copy's name) and every ``folder_spelling`` (one indexed range query
    per key; ``commit_rules`` asks each folder once) by ``SqlHeadView``: the same answers."""

    def __init__(self, db: MetadataDB, engagement_id: int, paths: Iterable[str], normalized: bool = False) -> None:
        """``normalized``: ``paths`` are already NFC and valid (``commit_rules.validate_batch``)."""
        keys: set[str] = set()
        for raw in paths:
            if normalized:
                path = raw
            else:
                try:
                    path = normalize_path(raw)
                except SyncError:
                    continue  # plan_commit refuses it, naming the path
            keys.add(fold_key(path))
            keys.update(fold_key(folder) for folder in ancestors(path))
        rows: list[Any] = []
        for part in _chunks_of(sorted(keys)):
            marks = ", ".join("?" for _ in part)
            rows += db.all(
                "SELECT path, fold_key, seq, content, size FROM files WHERE engagement_id = ?"
                f" AND fold_key IN ({marks})",
                (engagement_id, *part),
            )
        self._keys = keys
        self._loaded = LoadedHeadView(rows)
        self._sql = SqlHeadView(db, engagement_id)

    def state(self, path: str) -> FileState | None:
        if fold_key(path) in self._keys:  # every row with this path has this key: all read
            return self._loaded.state(path)
        return self._sql.state(path)

    def live_path_with_key(self, key: str) -> str | None:
        if key in self._keys:
            return self._loaded.live_path_with_key(key)
        return self._sql.live_path_with_key(key)

    def folder_spelling(self, key: str) -> str | None:
        # the rows read hold only names at the batch's keys, not every file below a folder
        return self._sql.folder_spelling(key)


# ----------------------------------------------------------------------- synchronous layer


class MetadataDB:
    """Domain operations on one connection; use only from the DB thread."""

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

    # -- users

    def add_user(self, name: str, password_hash: str | None, now: datetime) -> UserRecord:
        _text(name, "user name")
        if password_hash is not None:
            _text(password_hash, "password hash", 1024)

        def tx() -> UserRecord:
            cur = self.execute(
                "INSERT INTO users (name, password_hash, created_at, disabled) VALUES (?, ?, ?, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (name, password_hash, _ts(now)),
            )
            if cur.rowcount != 1:
                raise BadRequest(f"user {name!r} already exists", user=name)
            return _user(self.one("SELECT name, password_hash, created_at, disabled FROM users WHERE name = ?", (name,)))

        return self.write(tx)

    def set_password(self, name: str, password_hash: str) -> None:
        _text(password_hash, "password hash", 1024)

        def tx() -> None:
            cur = self.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
            if cur.rowcount != 1:
                raise NotFound(f"no user named {name!r}", user=name)
            # a new password ends the sessions opened with the old one
            self.execute("DELETE FROM sessions WHERE user_name = ? AND backend = 'local'", (name,))

        self.write(tx)

    def upgrade_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Replace ``old_hash`` by the same password's stronger hash; sessions stay (unlike
        ``set_password``). False when the hash changed meanwhile."""
        _text(new_hash, "password hash", 1024)

        def tx() -> bool:
            cur = self.execute(
                "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                (new_hash, name, old_hash),
            )
            return bool(cur.rowcount == 1)

        return self.write(tx)

    def get_user(self, name: str) -> UserRecord | None:
        row = self.one("SELECT name, password_hash, created_at, disabled FROM users WHERE name = ?", (name,))
        return None if row is None else _user(row)

    def list_users(self) -> list[UserRecord]:
        return [_user(r) for r in self.all("SELECT name, password_hash, created_at, disabled FROM users ORDER BY name")]

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        def tx() -> None:
            cur = self.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
            if cur.rowcount != 1:
                raise NotFound(f"no user named {name!r}", user=name)
            if disabled:
                self.execute("DELETE FROM sessions WHERE user_name = ? AND backend = 'local'", (name,))

        self.write(tx)

    def remove_user(self, name: str) -> None:
        def tx() -> None:
            cur = self.execute("DELETE FROM users WHERE name = ?", (name,))
            if cur.rowcount != 1:
                raise NotFound(f"no user named {name!r}", user=name)
            self.execute("DELETE FROM sessions WHERE user_name = ? AND backend = 'local'", (name,))

        self.write(tx)

    # -- engagements and grants

    def create_engagement(self, name: str, title: str, now: datetime) -> EngagementRecord:
        if not isinstance(name, str) or not _ENGAGEMENT_NAME.match(name):
            raise BadRequest(
                "engagement names are 1-100 characters of letters, digits, '.', '_' and '-',"
                " starting with a letter or digit",
                engagement=str(name)[:100],
            )
        if not isinstance(title, str) or len(title) > 500 or _CONTROL.search(title):
            raise BadRequest("engagement title must be a string of at most 500 characters")

        def tx() -> EngagementRecord:
            cur = self.execute(
                "INSERT INTO engagements (name, title, created_at, head) VALUES (?, ?, ?, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (name, title, _ts(now)),
            )
            if cur.rowcount != 1:
                raise BadRequest(f"engagement {name!r} already exists", engagement=name)
            found = self.get_engagement(name)
            assert found is not None
            return found

        return self.write(tx)

    def get_engagement(self, name: str) -> EngagementRecord | None:
        row = self.one("SELECT id, name, title, created_at, head FROM engagements WHERE name = ?", (name,))
        return None if row is None else _engagement(row)

    def list_engagements(self) -> list[EngagementRecord]:
        rows = self.all("SELECT id, name, title, created_at, head FROM engagements ORDER BY name")
        return [_engagement(r) for r in rows]

    def grant(self, grant: Grant, now: datetime | None = None) -> None:
        if grant.kind not in ("user", "group"):
            raise BadRequest("grant kind must be 'user' or 'group'")
        if grant.role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}")
        _text(grant.principal, "principal")
        display = grant.display_name or grant.principal
        _text(display, "display name")

        def tx() -> None:
            engagement_id = self._engagement_id(grant.engagement)
            self.execute(
                "INSERT INTO grants (engagement_id, kind, principal, display_name, role)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (engagement_id, kind, principal)"
                " DO UPDATE SET display_name = excluded.display_name, role = excluded.role",
                (engagement_id, grant.kind, grant.principal, display, grant.role),
            )
            workflow.append_audit(
                self, engagement_chain(grant.engagement), "grant", "smartsync-admin", now or datetime.now(UTC),
                grant.engagement,
                {"kind": grant.kind, "principal": grant.principal, "display_name": display, "role": grant.role},
            )

        self.write(tx)

    def revoke(
        self, engagement: str, kind: PrincipalKind, principal: str, now: datetime | None = None
    ) -> bool:
        def tx() -> bool:
            engagement_id = self._engagement_id(engagement)
            cur = self.execute(
                "DELETE FROM grants WHERE engagement_id = ? AND kind = ? AND principal = ?",
                (engagement_id, kind, principal),
            )
            if cur.rowcount == 1:
                workflow.append_audit(
                    self, engagement_chain(engagement), "revoke", "smartsync-admin", now or datetime.now(UTC),
                    engagement, {"kind": kind, "principal": principal},
                )
            return bool(cur.rowcount == 1)

        return self.write(tx)

    def list_grants(self, engagement: str | None) -> list[Grant]:
        query = (
            "SELECT e.name, g.kind, g.principal, g.display_name, g.role FROM grants g"
            " JOIN engagements e ON e.id = g.engagement_id"
        )
        params: tuple[Any, ...] = ()
        if engagement is not None:
            params = (self._engagement_id(engagement),)
            query += " WHERE g.engagement_id = ?"
        rows = self.all(query + " ORDER BY e.name, g.kind, g.principal", params)
        return [Grant(engagement=r[0], kind=r[1], principal=r[2], display_name=r[3], role=r[4]) for r in rows]

    def role_for(self, engagement: str, user: str, groups: Sequence[str]) -> Role | None:
        row = self.one("SELECT id FROM engagements WHERE name = ?", (engagement,))
        if row is None:
            return None
        engagement_id = int(row[0])
        roles = [
            r[0]
            for r in self.all(
                "SELECT role FROM grants WHERE engagement_id = ? AND kind = 'user' AND principal = ?",
                (engagement_id, user),
            )
        ]
        group_list = list(dict.fromkeys(groups))
        for part in _chunks_of(group_list):
            marks = ", ".join("?" for _ in part)
            roles += [
                r[0]
                for r in self.all(
                    "SELECT role FROM grants WHERE engagement_id = ? AND kind = 'group'"
                    f" AND principal IN ({marks})",
                    (engagement_id, *part),
                )
            ]
        ranked = [r for r in ROLES if r in roles]
        return ranked[-1] if ranked else None

    # -- sessions

    def create_session(self, s: SessionRecord) -> None:
        def tx() -> None:
            cur = self.execute(
                "INSERT INTO sessions (token_hash, id, user_name, group_ids, backend, created_at,"
                " expires_at, refreshed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    _text(s.token_hash, "token hash"),
                    _text(s.id, "session id"),
                    _text(s.user, "user"),
                    json.dumps(list(s.groups)),
                    s.backend,
                    _ts(s.created_at),
                    _ts(s.expires_at),
                    _ts(s.refreshed_at),
                ),
            )
            if cur.rowcount != 1:
                raise BadRequest("session already exists")
            # sign-ins belong to no one engagement: they are chained in the global audit trail
            workflow.append_audit(
                self, GLOBAL_CHAIN, "sign_in", s.user, s.created_at, None,
                {"session": s.id, "backend": s.backend},
            )

        self.write(tx)

    def get_session(self, token_hash: str) -> SessionRecord | None:
        row = self.one(
            "SELECT token_hash, id, user_name, group_ids, backend, created_at, expires_at,"
            " refreshed_at FROM sessions WHERE token_hash = ?",
            (token_hash,),
        )
        return None if row is None else _session(row)

    def update_session(self, s: SessionRecord) -> None:
        def tx() -> None:
            cur = self.execute(
                "UPDATE sessions SET user_name = ?, group_ids = ?, backend = ?, expires_at = ?,"
                " refreshed_at = ? WHERE token_hash = ?",
                (s.user, json.dumps(list(s.groups)), s.backend, _ts(s.expires_at), _ts(s.refreshed_at), s.token_hash),
            )
            if cur.rowcount != 1:
                raise NotFound("no such session")

        self.write(tx)

    def delete_session(self, token_hash: str) -> None:
        self.write(lambda: self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)))

    def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        query = (
            "SELECT token_hash, id, user_name, group_ids, backend, created_at, expires_at,"
            " refreshed_at FROM sessions"
        )
        if user is None:
            return [_session(r) for r in self.all(query + " ORDER BY created_at")]
        return [_session(r) for r in self.all(query + " WHERE user_name = ? ORDER BY created_at", (user,))]

    def end_sessions(
        self, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int:
        """Delete the sessions of ``user`` (but ``keep``), or the one with ``session_id``."""
        if (user is None) == (session_id is None):
            raise ValueError("end_sessions needs exactly one of user and session_id")

        def tx() -> int:
            if session_id is not None:
                cur = self.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            else:
                cur = self.execute(
                    "DELETE FROM sessions WHERE user_name = ? AND id <> ?", (user, keep or "")
                )
            return int(cur.rowcount)

        return self.write(tx)

    # -- failed sign-ins

    def record_login_failure(self, key: str, at: float, forget_before: float) -> None:
        def tx() -> None:
            self.execute("DELETE FROM login_failures WHERE at < ?", (forget_before,))
            self.execute("INSERT INTO login_failures (throttle_key, at) VALUES (?, ?)", (key, at))

        self.write(tx)

    def login_failures_since(self, key: str, since: float, limit: int) -> list[float]:
        rows = self.all(
            "SELECT at FROM login_failures WHERE throttle_key = ? AND at > ? ORDER BY at DESC"
            " LIMIT ?",
            (key, since, limit),
        )
        return sorted(float(r[0]) for r in rows)

    def clear_login_failures(self, key: str) -> None:
        self.write(
            lambda: self.execute("DELETE FROM login_failures WHERE throttle_key = ?", (key,))
        )

    # -- chunks and manifests

    def present_chunks(self, engagement_id: int, hashes: Sequence[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for part in _chunks_of(list(hashes)):
            marks = ", ".join("?" for _ in part)
            rows = self.all(
                f"SELECT hash FROM chunks WHERE engagement_id = ? AND hash IN ({marks})",
                (engagement_id, *(self.dialect.binary(h) for h in part)),
            )
            found.update(bytes(r[0]) for r in rows)
        return found

    def stored_sizes(self, engagement_id: int, hashes: Sequence[bytes]) -> dict[bytes, int]:
        """hash -> raw size of the chunks the engagement has, among ``hashes``."""
        found: dict[bytes, int] = {}
        for part in _chunks_of(list(hashes)):
            marks = ", ".join("?" for _ in part)
            rows = self.all(
                f"SELECT hash, raw_size FROM chunks WHERE engagement_id = ? AND hash IN ({marks})",
                (engagement_id, *(self.dialect.binary(h) for h in part)),
            )
            found.update((bytes(r[0]), int(r[1])) for r in rows)
        return found

    def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(hashes))
        raw = [_hash_bytes(h, "chunk hash") for h in wanted]

        def tx() -> list[str]:
            self.engagement_head(engagement_id)
            present = self.present_chunks(engagement_id, raw)
            return [h for h, b in zip(wanted, raw, strict=True) if b not in present]

        return self.read(tx)

    def record_pack(
        self,
        engagement_id: int,
        pack_name: str,
        pack_size: int,
        entries: Sequence[tuple[str, int, int, int, int]],
        now: datetime,
    ) -> int:
        """Insert a written pack and its chunks (hash, codec, raw_size, offset, stored_size).

        Returns how many chunk rows were new (another upload may have won a race for some).
        """

        def tx() -> int:
            self.engagement_head(engagement_id)
            self.execute(
                "INSERT INTO packs (engagement_id, id, size, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (engagement_id, id) DO NOTHING",
                (engagement_id, pack_name, pack_size, _ts(now)),
            )
            # One executemany, no lookup first: ON CONFLICT keeps a row that is already there
            # (an earlier upload, or a concurrent writer such as another daemon), and the
            # driver's rowcount (summed over executemany by sqlite3 and psycopg 3) counts only
            # the rows inserted here.
            binary = self.dialect.binary
            rows = [
                (engagement_id, binary(bytes.fromhex(h)), pack_name, offset, stored_size, codec, raw_size)
                for h, codec, raw_size, offset, stored_size in {e[0]: e for e in entries}.values()
            ]
            if not rows:
                return 0
            cur = self.conn.cursor()
            try:
                cur.executemany(
                    self.dialect.sql(
                        "INSERT INTO chunks (engagement_id, hash, pack_id, pack_offset, stored_size,"
                        " codec, raw_size) VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (engagement_id, hash) DO NOTHING"
                    ),
                    rows,
                )
                stored = cur.rowcount if cur.rowcount is not None and cur.rowcount >= 0 else len(rows)
            finally:
                cur.close()
            return stored

        return self.write(tx)

    def chunk_locations(self, engagement_id: int, hashes: Sequence[str]) -> dict[str, tuple[str, int, int, int, int]]:
        """hash -> (pack, offset, stored_size, codec, raw_size); NotFound lists unknown ones."""
        wanted = list(dict.fromkeys(hashes))
        raw = [_hash_bytes(h, "chunk hash") for h in wanted]

        def tx() -> dict[str, tuple[str, int, int, int, int]]:
            self.engagement_head(engagement_id)
            found: dict[str, tuple[str, int, int, int, int]] = {}
            for part in _chunks_of(raw):
                marks = ", ".join("?" for _ in part)
                rows = self.all(
                    "SELECT hash, pack_id, pack_offset, stored_size, codec, raw_size FROM chunks"
                    f" WHERE engagement_id = ? AND hash IN ({marks})",
                    (engagement_id, *(self.dialect.binary(h) for h in part)),
                )
                for r in rows:
                    found[bytes(r[0]).hex()] = (r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            unknown = [h for h in wanted if h not in found]
            if unknown:
                raise NotFound(f"{len(unknown)} chunk(s) unknown", chunks=unknown)
            return found

        return self.read(tx)

    def _manifest_row(self, engagement_id: int, content: str) -> Any:
        return self.one(
            "SELECT size, body FROM manifests WHERE engagement_id = ? AND content = ?",
            (engagement_id, self.dialect.binary(bytes.fromhex(content))),
        )

    def get_manifest(self, engagement_id: int, content: str) -> Manifest | None:
        _hash_bytes(content, "content id")

        def tx() -> Manifest | None:
            self.engagement_head(engagement_id)
            row = self._manifest_row(engagement_id, content)
            if row is None:
                return None
            return Manifest(content=content, size=int(row[0]), chunks=manifest.decode_binary(bytes(row[1])))

        return self.read(tx)

    # -- the change log

    def head(self, engagement_id: int) -> int:
        return self.engagement_head(engagement_id)

    def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]:
        """Changes after ``since`` (at most ``limit``) and the head; ``check`` (the copy's view
        of the log, ``storage/history.py``) raises ``HistoryDiverged`` when it does not hold."""
        if not isinstance(since, int) or since < 0:
            raise BadRequest("since must be a non-negative integer")
        if not isinstance(limit, int) or limit < 1:
            raise BadRequest("limit must be a positive integer")

        def tx() -> tuple[int, list[Change]]:
            head = self.engagement_head(engagement_id)
            if check is not None:
                history.check_history(self, engagement_id, head, check)
            rows = self.all(
                f"SELECT {_FEED_COLUMNS} FROM changes WHERE engagement_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (engagement_id, since, limit),
            )
            return head, [_change(r) for r in rows]

        return self.read(tx)

    def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]:
        def tx() -> tuple[int, list[FileState]]:
            head = self.engagement_head(engagement_id)
            rows = self.all(
                "SELECT path, seq, content, size FROM files WHERE engagement_id = ?"
                " AND content IS NOT NULL ORDER BY path",
                (engagement_id,),
            )
            files = [FileState(path=r[0], seq=int(r[1]), content=_hex(r[2]), size=int(r[3])) for r in rows]
            return head, files

        return self.read(tx)

    def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: Mapping[str, PutManifest],
        now: datetime,
        copy: str | None = None,
        check: HistoryCheck | None = None,
    ) -> CommitResult:
        _text(batch, "batch", _MAX_BATCH_KEY)
        _text(user, "user")
        when = _ts(now)
        with fewer_gc_passes():
            return self.write(
                lambda: self._commit_tx(
                    engagement_id, user, session, batch, changes, manifests, now, when, copy, check=check
                )
            )

    def _commit_tx(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: Mapping[str, PutManifest],
        now: datetime,
        when: str,
        copy: str | None = None,
        digest: str | None = None,
        check: HistoryCheck | None = None,
    ) -> CommitResult:
        """``digest``: what a replay of ``batch`` must match (by default the changes')."""
        head = self.engagement_head(engagement_id)
        if self.dialect.lock_engagement:
            self.execute(self.dialect.lock_engagement, (engagement_id,))
            head = self.engagement_head(engagement_id)
        key = commit_rules.batch_key(user, batch)
        if digest is None:
            digest = commit_rules.batch_digest(changes)
        previous = self.one(
            "SELECT result FROM batches WHERE engagement_id = ? AND batch = ?", (engagement_id, key)
        )
        if previous is not None:
            commit_rules.check_replay(json.loads(previous[0]).get("digest"), digest, batch)
            return _result_from_json(previous[0])
        if check is not None:  # bases are seqs of the copy's log: refuse them against another
            history.check_history(self, engagement_id, head, check)
        # abandoned copy, finalized engagement, another user's lock: refuse the whole batch
        workflow.check_commit(self, engagement_id, user, copy, changes, now)

        paths = commit_rules.validate_batch(changes)  # checked and normalized once per commit
        head_view = self._head_view(engagement_id, len(changes), paths, normalized=True)
        outcomes = commit_rules.plan_commit(changes, head_view, user, now, paths=paths)
        new_manifests = self._resolve_manifests(engagement_id, changes, outcomes, manifests)

        results: list[CommitResultItem] = []
        written: list[Change] = []
        seq = head
        for o in outcomes:
            if o.write_path is None:
                results.append(CommitResultItem(path=o.path, status=o.status, seq=None, current_seq=o.current_seq))
                continue
            seq += 1
            is_put = o.kind == "put"
            written.append(
                Change(
                    seq=seq,
                    path=o.write_path,
                    kind=o.kind,
                    content=o.content if is_put else None,
                    size=o.size if is_put else 0,
                    prev_seq=o.prev_seq,
                    user=user,
                    session=session,
                    time=now,
                    conflict_of=o.path if o.status == "conflict" else None,
                    batch=batch,
                )
            )
            results.append(
                CommitResultItem(
                    path=o.path,
                    status=o.status,
                    seq=seq,
                    conflict_path=o.write_path if o.status == "conflict" else None,
                    current_seq=o.current_seq,
                )
            )

        binary = self.dialect.binary
        self.executemany(
            "INSERT INTO manifests (engagement_id, content, size, chunk_count, body)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (engagement_id, content) DO NOTHING",
            [
                (engagement_id, binary(bytes.fromhex(c)), size, len(chunks), binary(body))
                for c, (size, chunks, body) in new_manifests.items()
            ],
        )
        # the hash chain: each record carries the hash of the one before it (core/audit.py)
        chain = workflow.chain_changes(
            self,
            engagement_id,
            head,
            [
                change_fields(
                    c.seq, c.path, c.kind, c.content, c.size, c.prev_seq, c.user, c.session, when,
                    c.conflict_of, c.batch,
                )
                for c in written
            ],
        )
        self.executemany(
            f"INSERT INTO changes (engagement_id, {_CHANGE_COLUMNS}, prev_hash, record_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    engagement_id,
                    c.seq,
                    c.path,
                    c.kind,
                    None if c.content is None else binary(bytes.fromhex(c.content)),
                    c.size,
                    c.prev_seq,
                    c.user,
                    c.session,
                    when,
                    c.conflict_of,
                    c.batch,
                    binary(prev_hash),
                    binary(record_hash),
                )
                for c, (prev_hash, record_hash) in zip(written, chain, strict=True)
            ],
        )
        self.executemany(
            "INSERT INTO files (engagement_id, path, fold_key, seq, content, size) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (engagement_id, path) DO UPDATE SET fold_key = excluded.fold_key,"
            " seq = excluded.seq, content = excluded.content, size = excluded.size",
            [
                (
                    engagement_id,
                    c.path,
                    fold_key(c.path),
                    c.seq,
                    None if c.content is None else binary(bytes.fromhex(c.content)),
                    c.size,
                )
                for c in written
            ],
        )
        self.execute("UPDATE engagements SET head = ? WHERE id = ?", (seq, engagement_id))
        if self.dialect.notify_commit and seq > head:
            self.execute(self.dialect.notify_commit, (f"{engagement_id}:{seq}",))
        for c, (_, h) in zip(written, chain, strict=True):
            # our own records, not yet shared: set in place (replace() costs ~3 us per record,
            # 30 ms on a 10,000-file commit)
            object.__setattr__(c, "record_hash", h.hex())
        result = CommitResult(
            head=seq, results=tuple(results), changes=tuple(written),
            head_hash=written[-1].record_hash if written else None,
        )
        self.execute(
            "INSERT INTO batches (engagement_id, batch, result, created_at) VALUES (?, ?, ?, ?)",
            (engagement_id, key, _result_to_json(result, digest), when),
        )
        return result

    def _head_view(
        self, engagement_id: int, changes: int, paths: Sequence[str] | None = None, normalized: bool = False
    ) -> commit_rules.HeadView:
        """The head as a commit of ``changes`` changes reads it: the whole ``files`` table in
        one query when that is at most a few rows per change; else, given the batch's
        ``paths``, the rows at their keys (``KeyedHeadView``), or one lookup at a time."""
        limit = _LOAD_HEAD_BASE + _LOAD_HEAD_PER_CHANGE * min(changes, commit_rules.MAX_CHANGES)
        # count first (an index-only scan), so a big engagement is not read to be dropped
        count = self.one(
            "SELECT COUNT(*) FROM (SELECT 1 FROM files WHERE engagement_id = ? LIMIT ?) AS f",
            (engagement_id, limit + 1),
        )[0]
        if count <= limit:
            return LoadedHeadView(
                self.all("SELECT path, fold_key, seq, content, size FROM files WHERE engagement_id = ?", (engagement_id,))
            )
        if paths is not None:
            return KeyedHeadView(self, engagement_id, paths, normalized)
        return SqlHeadView(self, engagement_id)

    def _manifest_sizes(self, engagement_id: int, contents: Iterable[str]) -> dict[str, int]:
        """content -> size of the manifests the engagement already has, among ``contents``."""
        sizes: dict[str, int] = {}
        for part in _chunks_of(list(dict.fromkeys(contents))):
            marks = ", ".join("?" for _ in part)
            rows = self.all(
                f"SELECT content, size FROM manifests WHERE engagement_id = ? AND content IN ({marks})",
                (engagement_id, *(self.dialect.binary(bytes.fromhex(c)) for c in part)),
            )
            sizes.update((bytes(r[0]).hex(), int(r[1])) for r in rows)
        return sizes

    def _resolve_manifests(
        self,
        engagement_id: int,
        proposals: Sequence[ProposedChange],
        outcomes: Sequence[Outcome],
        manifests: Mapping[str, PutManifest],
    ) -> dict[str, tuple[int, tuple[ChunkRef, ...], bytes]]:
        """The manifests this batch must add (content -> (size, chunks, stored body)), all checked."""
        new: dict[str, tuple[int, tuple[ChunkRef, ...], bytes]] = {}
        known = self._manifest_sizes(
            engagement_id,
            (o.content for o in outcomes if o.write_path is not None and o.kind == "put" and o.content is not None),
        )
        for proposal, o in zip(proposals, outcomes, strict=True):
            if o.write_path is None or o.kind != "put" or o.content is None:
                continue
            content: str = o.content
            if content in new:
                known_size: int | None = new[content][0]
            else:
                known_size = known.get(content)
            if known_size is not None:
                if known_size != o.size:
                    raise BadRequest(
                        f"size {o.size} does not match content {content} ({known_size} bytes)", path=o.path
                    )
                continue
            # keyed by the path as sent; o.path is its NFC form
            sent = manifests.get(o.path) or manifests.get(proposal.path)
            if sent is None:
                raise UnknownContent(
                    f"the server has no manifest for the content of {o.path!r}; send it", path=o.path
                )
            if sent.content != content:
                raise BadRequest("the manifest sent is for a different content", path=o.path)
            chunks = self._sent_chunks(engagement_id, o.path, sent, new)
            # the stored body is what the content id hashes (manifest.content_id): encode once
            body = manifest.encode_binary(chunks)
            if manifest.content_id_of_binary(body) != content:
                raise BadRequest("the manifest does not hash to the content id", path=o.path)
            if sum(c.size for c in chunks) != o.size:
                raise BadRequest("the manifest's chunk sizes do not add up to the size", path=o.path)
            new[content] = (o.size, chunks, body)

        # every chunk present, at the size the manifest gives it: a manifest that lies about a
        # chunk's size would stop every other copy's pull at this change
        claimed: dict[str, tuple[int, str]] = {}
        for content, (_, chunks, _) in new.items():
            for c in chunks:
                first = claimed.setdefault(c.hash, (c.size, content))
                if first[0] != c.size:
                    raise BadRequest(f"chunk {c.hash} is given two sizes ({first[0]} and {c.size})")
        wanted = list(claimed)
        raw = [bytes.fromhex(h) for h in wanted]
        stored = self.stored_sizes(engagement_id, raw)
        missing = [h for h, r in zip(wanted, raw, strict=True) if r not in stored]
        if missing:
            raise MissingChunks(f"{len(missing)} chunk(s) must be uploaded first", chunks=missing)
        for h, r in zip(wanted, raw, strict=True):
            if stored[r] != claimed[h][0]:
                raise BadRequest(
                    f"the manifest gives chunk {h} {claimed[h][0]} bytes; it has {stored[r]}",
                    path=self._path_of(outcomes, claimed[h][1]),
                )
        return new

    @staticmethod
    def _path_of(outcomes: Sequence[Outcome], content: str) -> str | None:
        return next((o.path for o in outcomes if o.content == content), None)

    def _sent_chunks(
        self,
        engagement_id: int,
        path: str,
        sent: PutManifest,
        new: Mapping[str, tuple[int, tuple[ChunkRef, ...], bytes]],
    ) -> tuple[ChunkRef, ...]:
        if sent.chunks is not None:
            for c in sent.chunks:
                if not manifest.is_hash(c.hash) or not isinstance(c.size, int) or c.size <= 0:
                    raise BadRequest("a manifest entry is malformed", path=path)
            return tuple(sent.chunks)
        if sent.delta_base is None or sent.delta_ops is None:
            raise BadRequest("a put manifest needs a chunk list or a delta", path=path)
        _hash_bytes(sent.delta_base, "delta base")
        if sent.delta_base in new:
            base: tuple[ChunkRef, ...] = new[sent.delta_base][1]
        else:
            row = self._manifest_row(engagement_id, sent.delta_base)
            if row is None:
                raise UnknownContent(
                    f"the delta base {sent.delta_base} of {path!r} is unknown; send the full manifest",
                    path=path,
                )
            base = manifest.decode_binary(bytes(row[1]))
        return manifest.apply_delta(base, sent.delta_ops)

    # -- fsck support (read-only)

    def engagement_ids(self) -> list[tuple[int, str, int]]:
        return [(int(r[0]), r[1], int(r[2])) for r in self.all("SELECT id, name, head FROM engagements ORDER BY id")]


# --------------------------------------------------------------------------- cyclic GC

# A commit of 2,000 new files allocates a few hundred thousand short-lived containers (rows,
# outcomes, records): at the default gen-0 threshold (700) that is hundreds of collections,
# and the full ones walk the daemon's whole heap. In a 10,000 x 4 KiB sync they took ~0.2 of
# the daemon's ~2.1 CPU-s. While a commit runs, gen 0 is collected every 10,000 allocations
# instead (process-wide: the GC is; smartsyncd/gcthreshold.py keeps overlapping holders, a
# client sync in the same process among them, from undoing each other).
COMMIT_GC_THRESHOLD = 10_000


def fewer_gc_passes() -> AbstractContextManager[None]:
    """Raise the gen-0 GC threshold to ``COMMIT_GC_THRESHOLD`` while a commit runs."""
    return raised_gen0_threshold(COMMIT_GC_THRESHOLD)


# ------------------------------------------------------------------------------ async layer


class SqlServerStore:
    """``storage.api.ServerStore`` over ``MetadataDB`` (DB thread) and ``PackStore`` (file pool)."""

    def __init__(
        self,
        *,
        reactor: IReactorThreads,
        db: MetadataDB | None,
        packs: PackStore,
        db_pool: ThreadPool,
        file_pool: ThreadPool,
        clock: Callable[[], datetime] | None = None,
        connect: Callable[[], MetadataDB] | None = None,
        dialect: Dialect | None = None,
        reader: MetadataDB | None = None,
        read_pool: ThreadPool | None = None,
    ) -> None:
        """``db``: the one connection, used by the DB pool's single thread (SQLite).

        Or ``db=None`` and ``connect``: each DB pool thread opens its own connection on first
        use and replaces it when the driver reports it broken (PostgreSQL: N threads, N
        connections, a database restart heals itself).

        ``reader`` and ``read_pool`` (SQLite): a second, read-only connection used only by the
        read pool's single thread, for pure reads (``run_read``): missing-chunk queries, session
        and role look-ups, change feeds. In WAL mode it reads the last committed state while a
        commit holds the writer, so those no longer queue behind commit batches. Without them
        (PostgreSQL: the pool's connections already read concurrently) reads use the DB pool.
        """
        if (reader is None) != (read_pool is None):
            raise ValueError("give reader and read_pool together")
        if (db is None) == (connect is None):
            raise ValueError("give either db or connect")
        self._reactor = reactor
        self._meta = db
        self._connect = connect
        self._dialect: Dialect = db.dialect if db is not None else dialect  # type: ignore[assignment]
        if self._dialect is None:
            raise ValueError("connect needs a dialect")
        self._local = threading.local()
        self._opened: list[MetadataDB] = []
        self._opened_lock = threading.Lock()
        self.packs = packs
        self._db_pool = db_pool
        self._file_pool = file_pool
        self._reader = reader
        self._read_pool = read_pool
        self._closed = False
        self._now = clock or (lambda: datetime.now(UTC))

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    # -- running work off the reactor

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(meta, *args)`` on the DB thread, mapping driver outages to ``Unavailable``."""
        if self._closed:
            raise Unavailable("the metadata store is closed")
        result: T = await deferToThreadPool(self._reactor, self._db_pool, self._guard_db, fn, *args)
        return result

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the pure read ``fn(meta, *args)`` on the read connection when there is one.

        It sees committed data only, as of its own read transaction: a commit finished before
        this call is visible, one still running is not. Callers must not depend on more (a
        chunk answered missing that a concurrent upload just recorded is sent again; one
        answered present is in a committed pack row, written only after the pack was durable).
        """
        if self._reader is None or self._read_pool is None:
            return await self.run_db(fn, *args)
        if self._closed:
            raise Unavailable("the metadata store is closed")
        result: T = await deferToThreadPool(self._reactor, self._read_pool, self._guard_read, fn, *args)
        return result

    def _guard_read(self, fn: Callable[..., T], *args: Any) -> T:
        reader = self._reader
        assert reader is not None
        return self._guard_with(lambda: reader, fn, *args)

    def _thread_db(self) -> MetadataDB:
        if self._meta is not None:
            return self._meta
        meta: MetadataDB | None = getattr(self._local, "meta", None)
        if meta is None:
            assert self._connect is not None
            meta = self._connect()
            self._local.meta = meta
            with self._opened_lock:
                self._opened.append(meta)
        return meta

    def _drop_thread_db(self, meta: MetadataDB) -> None:
        self._local.meta = None
        with self._opened_lock:
            if meta in self._opened:
                self._opened.remove(meta)
        try:
            meta.close()
        except Exception as e:  # noqa: BLE001 - it is broken already; a new one replaces it
            log.debug("closing a broken connection: {error}", error=repr(e))

    def _guard_db(self, fn: Callable[..., T], *args: Any) -> T:
        return self._guard_with(self._thread_db, fn, *args)

    def _guard_with(self, pick: Callable[[], MetadataDB], fn: Callable[..., T], *args: Any) -> T:
        dialect = self._dialect
        attempt = 0
        while True:
            attempt += 1
            meta: MetadataDB | None = None
            try:
                meta = pick()
                return fn(meta, *args)
            except SyncError:
                raise
            except dialect.retry_errors as e:
                # The transaction was rolled back as a whole (deadlock, serialization): rerun.
                if attempt >= 5:
                    log.warn("database conflict, giving up: {error}", error=repr(e))
                    raise Unavailable("the database is busy; retry") from e
                log.info("database conflict, retrying: {error}", error=repr(e))
            except dialect.unavailable_errors as e:
                if not dialect.is_outage(e):
                    raise
                log.warn("database error: {error}", error=repr(e))
                if meta is not None and self._meta is None and dialect.is_broken(meta.conn):
                    self._drop_thread_db(meta)
                raise Unavailable("the database is unavailable") from e
            except Exception as e:
                if self._closed:  # the store closed under a request (shutdown): not a bug
                    raise Unavailable("the metadata store is closed") from e
                raise

    async def run_file(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(packs, *args)`` on the file pool, mapping OS errors to ``Unavailable``."""
        if self._closed:
            raise Unavailable("the chunk store is closed")
        result: T = await deferToThreadPool(self._reactor, self._file_pool, self._guard_file, fn, *args)
        return result

    def _guard_file(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self.packs, *args)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("chunk storage is full: {error}", error=repr(e))
                raise StorageFull(
                    "the server's chunk storage is full; nothing was stored (ask the firm's IT "
                    "to free space, then sync again)"
                ) from e
            log.warn("chunk storage error: {error}", error=repr(e))
            raise Unavailable("chunk storage is unavailable") from e

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._reader is not None and self._read_pool is not None:
                await deferToThreadPool(self._reactor, self._read_pool, self._reader.close)
            if self._meta is not None:
                await deferToThreadPool(self._reactor, self._db_pool, self._meta.close)
            else:
                await deferToThreadPool(self._reactor, self._db_pool, self._close_opened)
        finally:
            self._closed = True
            if self._read_pool is not None:
                self._read_pool.stop()
            self._db_pool.stop()
            self._file_pool.stop()

    def _close_opened(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for meta in opened:
            try:
                meta.close()
            except Exception as e:  # noqa: BLE001 - closing; nothing more to do with it
                log.debug("closing a connection: {error}", error=repr(e))

    # -- users

    async def add_user(self, name: str, password_hash: str | None) -> UserRecord:
        return await self.run_db(MetadataDB.add_user, name, password_hash, self._now())

    async def set_password(self, name: str, password_hash: str) -> None:
        await self.run_db(MetadataDB.set_password, name, password_hash)

    async def upgrade_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        return await self.run_db(MetadataDB.upgrade_password_hash, name, old_hash, new_hash)

    async def get_user(self, name: str) -> UserRecord | None:
        return await self.run_read(MetadataDB.get_user, name)

    async def list_users(self) -> list[UserRecord]:
        return await self.run_read(MetadataDB.list_users)

    async def set_user_disabled(self, name: str, disabled: bool) -> None:
        await self.run_db(MetadataDB.set_user_disabled, name, disabled)

    async def remove_user(self, name: str) -> None:
        await self.run_db(MetadataDB.remove_user, name)

    # -- engagements and grants

    async def create_engagement(self, name: str, title: str) -> EngagementRecord:
        return await self.run_db(MetadataDB.create_engagement, name, title, self._now())

    async def get_engagement(self, name: str) -> EngagementRecord | None:
        return await self.run_read(MetadataDB.get_engagement, name)

    async def list_engagements(self) -> list[EngagementRecord]:
        return await self.run_read(MetadataDB.list_engagements)

    async def grant(self, grant: Grant) -> None:
        await self.run_db(MetadataDB.grant, grant, self._now())

    async def revoke(self, engagement: str, kind: PrincipalKind, principal: str) -> bool:
        return await self.run_db(MetadataDB.revoke, engagement, kind, principal, self._now())

    async def list_grants(self, engagement: str | None = None) -> list[Grant]:
        return await self.run_read(MetadataDB.list_grants, engagement)

    async def role_for(self, engagement: str, user: str, groups: Sequence[str]) -> Role | None:
        return await self.run_read(MetadataDB.role_for, engagement, user, tuple(groups))

    # -- sessions

    async def create_session(self, session: SessionRecord) -> None:
        await self.run_db(MetadataDB.create_session, session)

    async def get_session(self, token_hash: str) -> SessionRecord | None:
        return await self.run_read(MetadataDB.get_session, token_hash)

    async def update_session(self, session: SessionRecord) -> None:
        await self.run_db(MetadataDB.update_session, session)

    async def delete_session(self, token_hash: str) -> None:
        await self.run_db(MetadataDB.delete_session, token_hash)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        return await self.run_read(MetadataDB.list_sessions, user)

    async def end_sessions(
        self, *, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int:
        return await self.run_db(MetadataDB.end_sessions, user, session_id, keep)

    async def record_login_failure(self, key: str, at: float, forget_before: float) -> None:
        await self.run_db(MetadataDB.record_login_failure, key, at, forget_before)

    async def login_failures_since(self, key: str, since: float, limit: int) -> list[float]:
        return await self.run_read(MetadataDB.login_failures_since, key, since, limit)

    async def clear_login_failures(self, key: str) -> None:
        await self.run_db(MetadataDB.clear_login_failures, key)

    # -- chunks and manifests

    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]:
        return await self.run_read(MetadataDB.missing_chunks, engagement_id, tuple(hashes))

    async def store_chunks(self, engagement_id: int, chunks: Sequence[VerifiedChunk]) -> tuple[int, int]:
        unique = list({c.hash: c for c in chunks}.values())
        missing = set(await self.missing_chunks(engagement_id, [c.hash for c in unique]))
        to_write = [(c.hash, c.codec, c.raw_size, c.payload) for c in unique if c.hash in missing]
        if not to_write:
            return 0, len(chunks)
        pack = await self.run_file(PackStore.write_pack, engagement_id, to_write)
        entries = [(e.hash, e.codec, e.raw_size, e.offset, e.stored_size) for e in pack.entries]
        stored = await self.run_db(MetadataDB.record_pack, engagement_id, pack.name, pack.size, entries, self._now())
        return stored, len(chunks) - stored

    def open_upload(self, engagement_id: int) -> ChunkUpload:
        return _PackUpload(self, engagement_id)

    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]:
        where = await self.run_read(MetadataDB.chunk_locations, engagement_id, tuple(hashes))

        def read_all(packs: PackStore) -> dict[str, bytes]:
            by_pack: dict[str, list[tuple[str, int, int]]] = {}
            for h, (pack, offset, stored_size, _, _) in where.items():
                by_pack.setdefault(pack, []).append((h, offset, stored_size))
            out: dict[str, bytes] = {}
            for pack, wanted in by_pack.items():
                data = packs.read_ranges(engagement_id, pack, [(o, n) for _, o, n in wanted])
                out.update(zip([h for h, _, _ in wanted], data, strict=True))
            return out

        payloads = await self.run_file(read_all)
        return [
            StoredChunk(hash=h, codec=where[h][3], raw_size=where[h][4], payload=payloads[h]) for h in hashes
        ]

    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None:
        return await self.run_read(MetadataDB.get_manifest, engagement_id, content)

    # -- the change log

    async def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: dict[str, PutManifest],
        now: datetime,
        copy: str | None = None,
        check: HistoryCheck | None = None,
    ) -> CommitResult:
        return await self.run_db(
            MetadataDB.commit, engagement_id, user, session, batch, tuple(changes), dict(manifests), now, copy,
            check,
        )

    async def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]:
        return await self.run_read(MetadataDB.changes_since, engagement_id, since, limit, check)

    async def store_identity(self) -> tuple[str, int]:
        """(store id, generation): ``storage/history.py``."""
        return await self.run_read(history.store_identity)

    async def record_token(self, engagement_id: int, seq: int) -> str | None:
        """The record token at ``seq`` (``storage/history.py``)."""
        return await self.run_read(history.record_token, engagement_id, seq)

    async def bump_generation(self) -> tuple[str, int]:
        """Start a new generation after a restore or rollback; the new (store id, generation)."""
        return await self.run_db(history.bump_generation)

    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]:
        return await self.run_read(MetadataDB.snapshot, engagement_id)

    async def head(self, engagement_id: int) -> int:
        return await self.run_read(MetadataDB.head, engagement_id)

    # -- operations

    async def check_health(self) -> dict[str, str]:
        health = {"database": "ok", "storage": "ok"}
        try:
            await self.run_db(MetadataDB.ping)
        except Exception as e:
            log.warn("health check: database failed: {error}", error=repr(e))
            health["database"] = "error"
        try:
            await self.run_file(PackStore.probe)
        except Exception as e:
            log.warn("health check: storage failed: {error}", error=repr(e))
            health["storage"] = "error"
        return health

    async def fsck(self) -> list[FsckProblem]:
        from smartsyncd.storage.fsck import check_store

        return await check_store(self)

    # -- engagement workflow (SQL in storage/workflow.py)

    async def engagement_status(self, engagement_id: int) -> EngagementStatus:
        return await self.run_db(workflow.engagement_status, engagement_id)

    async def checkout(
        self, engagement_id: int, path: str, user: str, session: str | None, duration: timedelta | None
    ) -> Lock:
        return await self.run_db(workflow.checkout, engagement_id, path, user, session, self._now(), duration)

    async def checkin(self, engagement_id: int, path: str, user: str) -> Lock:
        return await self.run_db(workflow.checkin, engagement_id, path, user, self._now())

    async def break_lock(self, engagement_id: int, path: str, actor: str, reason: str) -> Lock:
        return await self.run_db(workflow.break_lock, engagement_id, path, actor, reason, self._now())

    async def list_locks(self, engagement_id: int) -> list[Lock]:
        return await self.run_db(workflow.list_locks, engagement_id, self._now())

    async def history(self, engagement_id: int, path: str) -> list[VersionRecord]:
        return await self.run_db(workflow.history, engagement_id, path)

    async def restore(
        self, engagement_id: int, user: str, session: str | None, copy: str | None, path: str,
        version: int, batch: str, now: datetime,
    ) -> CommitResult:
        return await self.run_db(workflow.restore, engagement_id, user, session, copy, path, version, batch, now)

    async def export_at(self, engagement_id: int, at: datetime) -> tuple[int, list[ExportFile]]:
        return await self.run_db(workflow.export_at, engagement_id, at)

    async def register_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None
    ) -> CopyRecord:
        return await self.run_db(workflow.register_copy, engagement_id, copy_id, user, host, session, self._now())

    async def report_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None,
        unsynced: int, since: datetime | None,
    ) -> CopyRecord:
        return await self.run_db(
            workflow.report_copy, engagement_id, copy_id, user, host, session, unsynced, since, self._now()
        )

    async def list_copies(self, engagement_id: int) -> list[CopyRecord]:
        return await self.run_db(workflow.list_copies, engagement_id)

    async def abandon_copy(self, engagement_id: int, copy_id: str, actor: str) -> CopyRecord:
        return await self.run_db(workflow.abandon_copy, engagement_id, copy_id, actor, self._now())

    async def finalize(
        self, engagement_id: int, actor: str, reason: str, force: bool
    ) -> tuple[EngagementStatus, list[CopyRecord]]:
        return await self.run_db(workflow.finalize, engagement_id, actor, reason, force, self._now())

    async def reopen(self, engagement_id: int, actor: str, reason: str) -> EngagementStatus:
        return await self.run_db(workflow.reopen, engagement_id, actor, reason, self._now())

    async def set_retention(self, engagement_id: int, days: int | None, actor: str) -> None:
        await self.run_db(workflow.set_retention, engagement_id, days, actor, self._now())

    async def audit_records(self, engagement_id: int) -> list[AuditRecord]:
        return await self.run_db(workflow.audit_records, engagement_id)

    async def verify_audit(self, engagement: str | None) -> list[ChainReport]:
        """Verify one engagement's change log and audit chain, or (None) every engagement's
        and the global chain."""
        if engagement is not None:
            eid = await self.run_db(MetadataDB._engagement_id, engagement)
            return await self.run_db(workflow.verify_engagement, eid)
        reports: list[ChainReport] = []
        for eid, _name, _head in await self.run_db(MetadataDB.engagement_ids):
            reports += await self.run_db(workflow.verify_engagement, eid)
        reports.append(await self.run_db(workflow.verify_global))
        return reports

    async def gc(self, engagement_id: int, grace: timedelta) -> GcReport:
        """Collect what no retained version needs (see storage/workflow.py); pack files are
        deleted after the metadata transaction, orphans only when older than ``grace``."""
        started = time.time()  # the file system's clock (mtimes), not the injected one
        report, dead, recorded = await self.run_db(workflow.gc_engagement, engagement_id, self._now(), grace)
        if report.skipped:
            return report
        cutoff = self._now().timestamp() - grace.total_seconds()
        orphans = await self.run_file(_drop_packs, engagement_id, dead, recorded, cutoff, started)
        return replace(report, orphan_packs_removed=orphans)


def _drop_packs(
    packs: PackStore, engagement_id: int, dead: Sequence[str], recorded: set[str], cutoff: float,
    gc_started: float,
) -> int:
    """Delete the files of dropped packs, then pack files no row names that are older than
    ``cutoff`` (a crashed upload or gc); returns how many orphans went. Blocking (file pool).

    A dropped pack's file written at or after ``gc_started`` is kept: packs are named by their
    records, so an upload of the same chunks in the same order, right after gc dropped them,
    writes a new file under the same name and records fresh rows for it. (The rows gc dropped
    belonged to a file written before they were committed, so before gc began.)"""
    for name in dead:
        path = packs.path_for(engagement_id, name)
        try:
            if os.stat(path).st_mtime >= gc_started:
                continue
            os.unlink(path)
        except FileNotFoundError:
            pass
    root = os.path.join(packs.root, str(int(engagement_id)))
    orphans = 0
    for folder, _dirs, files in os.walk(root):
        for file_name in files:
            if not file_name.endswith(".pack"):
                continue
            name = file_name[: -len(".pack")]
            full = os.path.join(folder, file_name)
            if name not in recorded and name not in dead and os.stat(full).st_mtime < cutoff:
                os.unlink(full)
                orphans += 1
    return orphans


class _PackUpload:
    """``ChunkUpload`` for ``SqlServerStore``: a ``PackWriter`` on the file pool, indexed by one
    ``record_pack`` transaction at ``finish`` (after the pack is durable)."""

    def __init__(self, store: SqlServerStore, engagement_id: int) -> None:
        self._store = store
        self._engagement_id = engagement_id
        self._writer: PackWriter | None = None
        self._seen: set[str] = set()
        self._done = False

    def _append(self, packs: PackStore, chunks: Sequence[VerifiedChunk]) -> None:
        if self._writer is None:
            self._writer = packs.open_writer(self._engagement_id)
        self._writer.append((c.hash, c.codec, c.raw_size, c.payload) for c in chunks)

    async def append(self, chunks: Sequence[VerifiedChunk]) -> None:
        if self._done:
            raise ValueError("upload already finished")
        fresh = []
        for c in chunks:
            if c.hash not in self._seen:
                self._seen.add(c.hash)
                fresh.append(c)
        if fresh:
            await self._store.run_file(self._append, fresh)

    async def finish(self, total: int) -> tuple[int, int]:
        if self._done:
            raise ValueError("upload already finished")
        self._done = True
        writer, self._writer = self._writer, None
        if writer is None:
            return 0, total
        try:
            pack = await self._store.run_file(lambda _packs: writer.commit())
        except BaseException:
            await self._store.run_file(lambda _packs: writer.abort())
            raise
        entries = [(e.hash, e.codec, e.raw_size, e.offset, e.stored_size) for e in pack.entries]
        stored = await self._store.run_db(
            MetadataDB.record_pack, self._engagement_id, pack.name, pack.size, entries, self._store._now()
        )
        return stored, total - stored

    async def abort(self) -> None:
        self._done = True
        writer, self._writer = self._writer, None
        if writer is not None:
            await self._store.run_file(lambda _packs: writer.abort())
