"""The engagement workflow's SQL: locks, history and restore, export at a time, sign-off
freeze, known sync copies, the hash-chained audit trail, and gc (see docs/workflow.md).

Synchronous functions over a ``sqlstore.MetadataDB`` (they run on the store's DB thread, like
everything in ``MetadataDB``); ``SqlServerStore`` wraps each in a thin coroutine. The SQL is the
portable subset ``sqlstore`` uses (``?`` placeholders, ``ON CONFLICT``, blobs through
``dialect.binary``), so it runs on SQLite and PostgreSQL alike.

Rules that must hold inside the commit transaction (``check_commit``: finalized engagement,
abandoned copy, another user's lock; ``chain_changes``: the change records' hash chain) are
called from ``MetadataDB._commit_tx``, so a commit and its checks are one atomic decision.

Audit chains (``core.audit``): every engagement has ``eng:<name>`` (grants, revokes, check-out,
check-in, lock breaks, finalize, reopen, retention, copy registration and abandon); events of no
single engagement (sign-ins) go to one ``global`` chain. ``audit_heads`` holds each chain's last
number and hash; appending updates that row first, which serializes appenders (a row lock on
PostgreSQL, the write lock on SQLite) so a chain never forks.

gc (``gc_engagement``): a version is retained when the engagement keeps everything
(``retention_days`` NULL), when it is the current version at its path, when it is a conflict
copy, or when the record that replaced it is younger than the retention period. Everything else
is collectable. In one write transaction that holds the engagement lock (so no commit
interleaves): manifests of no retained content are deleted, then chunk rows no retained
manifest names (chunks in packs younger than ``grace`` are kept: an upload whose commit has not
arrived yet), then pack rows with no chunk left. Packs are write-once and are only ever dropped
whole: a pack with one live chunk stays (its dead chunks' rows are gone, so they are simply
unreachable bytes until every chunk of the pack is dead). The files of dropped packs are
deleted after the transaction commits; a crash in between leaves orphan files, which the next
gc removes once they are older than ``grace`` (the same sweep removes packs of uploads that
crashed before their rows were written). Finalized engagements are never collected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from smartsyncd.core import commit_rules, manifest
from smartsyncd.core.audit import (
    AUDIT_DOMAIN,
    CHANGE_DOMAIN,
    GENESIS,
    GLOBAL_CHAIN,
    ChainRecord,
    audit_fields,
    change_fields,
    detail_text,
    engagement_chain,
    link,
    record_hash,
    verify_chain,
)
from smartsyncd.core.errors import (
    BadRequest,
    CopyAbandoned,
    Finalized,
    Forbidden,
    Locked,
    NotFound,
    UnsyncedCopies,
)
from smartsyncd.core.locks import Lock, blocking_lock, checkout_conflict, describe, overlaps
from smartsyncd.core.model import ProposedChange
from smartsyncd.core.paths import fold_key, normalize_path
from smartsyncd.storage.api import (
    AuditRecord,
    ChainReport,
    CommitResult,
    CopyRecord,
    EngagementStatus,
    ExportFile,
    GcReport,
    VersionRecord,
)

if TYPE_CHECKING:
    from smartsyncd.storage.sqlstore import Dialect, MetadataDB

_COPY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
MAX_REASON = 1000


def _ts(value: datetime) -> str:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise BadRequest("times must be timezone-aware datetimes")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _text(value: object, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len or _CONTROL.search(value):
        raise BadRequest(f"{what} must be a non-empty line of at most {max_len} characters")
    return value


def _name(db: MetadataDB, engagement_id: int) -> str:
    row = db.one("SELECT name FROM engagements WHERE id = ?", (engagement_id,))
    if row is None:
        raise NotFound(f"no engagement with id {engagement_id}")
    return str(row[0])


def _lock_engagement(db: MetadataDB, engagement_id: int) -> None:
    if db.dialect.lock_engagement:
        db.execute(db.dialect.lock_engagement, (engagement_id,))


# ------------------------------------------------------------------------------ audit chain


def append_audit(
    db: MetadataDB,
    chain: str,
    event: str,
    actor: str,
    now: datetime,
    engagement: str | None,
    detail: dict[str, Any],
) -> int:
    """Append one event to ``chain`` (inside the caller's write transaction); returns its seq."""
    binary = db.dialect.binary
    db.execute(
        "INSERT INTO audit_heads (chain, seq, record_hash) VALUES (?, 0, ?) ON CONFLICT (chain) DO NOTHING",
        (chain, binary(GENESIS)),
    )
    db.execute("UPDATE audit_heads SET seq = seq + 1 WHERE chain = ?", (chain,))
    row = db.one("SELECT seq, record_hash FROM audit_heads WHERE chain = ?", (chain,))
    seq, prev = int(row[0]), bytes(row[1])
    at = _ts(now)
    text = detail_text(detail)
    digest = record_hash(AUDIT_DOMAIN, prev, audit_fields(chain, seq, event, actor, at, engagement, text))
    db.execute(
        "INSERT INTO audit (chain, seq, event, actor, at, engagement, detail, prev_hash, record_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (chain, seq, event, actor, at, engagement, text, binary(prev), binary(digest)),
    )
    db.execute("UPDATE audit_heads SET record_hash = ? WHERE chain = ?", (binary(digest), chain))
    return seq


def audit_engagement(
    db: MetadataDB, engagement_id: int, event: str, actor: str, now: datetime, detail: dict[str, Any]
) -> None:
    name = _name(db, engagement_id)
    append_audit(db, engagement_chain(name), event, actor, now, name, detail)


# ----------------------------------------------------------------------- change-log chain


def _change_row_fields(row: Sequence[Any]) -> list[Any]:
    """Fields of a changes row selected as ``_CHANGE_SELECT`` (content as stored blob)."""
    content = None if row[3] is None else bytes(row[3]).hex()
    return change_fields(
        int(row[0]), row[1], row[2], content, int(row[4]),
        None if row[5] is None else int(row[5]), row[6], row[7], row[8], row[9], row[10],
    )


_CHANGE_SELECT = (
    "SELECT seq, path, kind, content, size, prev_seq, user_name, session_id, committed_at,"
    " conflict_of, batch, prev_hash, record_hash FROM changes WHERE engagement_id = ?"
)


def chain_changes(
    db: MetadataDB, engagement_id: int, head: int, records: Sequence[Sequence[Any]]
) -> list[tuple[bytes, bytes]]:
    """(prev_hash, record_hash) for new change records (``change_fields`` lists) after ``head``."""
    prev = GENESIS
    if head > 0:
        row = db.one("SELECT record_hash FROM changes WHERE engagement_id = ? AND seq = ?", (engagement_id, head))
        if row is not None and row[0] is not None:
            prev = bytes(row[0])
    return link(CHANGE_DOMAIN, prev, records)


def backfill_change_hashes(conn: Any, dialect: Dialect) -> None:
    """Compute the chain of change records written before migration 2 (raw connection)."""
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM engagements ORDER BY id").fetchall()]
    for engagement_id in ids:
        rows = conn.execute(dialect.sql(_CHANGE_SELECT + " ORDER BY seq"), (engagement_id,)).fetchall()
        hashes = link(CHANGE_DOMAIN, GENESIS, [_change_row_fields(r) for r in rows])
        for r, (prev, digest) in zip(rows, hashes, strict=True):
            conn.execute(
                dialect.sql("UPDATE changes SET prev_hash = ?, record_hash = ? WHERE engagement_id = ? AND seq = ?"),
                (dialect.binary(prev), dialect.binary(digest), engagement_id, int(r[0])),
            )


# ------------------------------------------------------------------- checks inside commit


def load_locks(db: MetadataDB, engagement_id: int) -> list[Lock]:
    rows = db.all(
        "SELECT path, holder, since, expires_at, session_id FROM locks WHERE engagement_id = ? ORDER BY path",
        (engagement_id,),
    )
    return [
        Lock(path=r[0], holder=r[1], since=_dt(r[2]) or datetime.min, expires_at=_dt(r[3]), session=r[4])
        for r in rows
    ]


def _raise_if_finalized(db: MetadataDB, engagement_id: int) -> None:
    row = db.one(
        "SELECT finalized_at, finalized_by, finalized_reason FROM engagements WHERE id = ?", (engagement_id,)
    )
    if row is not None and row[0] is not None:
        raise Finalized(
            f"the engagement was finalized (signed off) by {row[1]} at {row[0][:16].replace('T', ' ')} UTC:"
            f" {row[2]}. It is read-only until an admin reopens it; your local changes are kept",
            reason=row[2],
            finalized_by=row[1],
            finalized_at=row[0],
        )


def _raise_if_abandoned(db: MetadataDB, engagement_id: int, copy: str | None) -> None:
    if not copy:
        return
    row = db.one(
        "SELECT abandoned_at, abandoned_by FROM copies WHERE engagement_id = ? AND copy_id = ?",
        (engagement_id, copy),
    )
    if row is not None and row[0] is not None:
        raise CopyAbandoned(
            f"this sync copy ({copy}) was abandoned by {row[1]} at {row[0][:16].replace('T', ' ')} UTC"
            " and may never commit again; clone the engagement anew",
            copy=copy,
        )


def check_commit(
    db: MetadataDB,
    engagement_id: int,
    user: str,
    copy: str | None,
    changes: Sequence[ProposedChange],
    now: datetime,
) -> None:
    """Refuse the whole batch (before anything is written) when the copy is abandoned, the
    engagement is finalized, or a path is checked out by another user."""
    _raise_if_abandoned(db, engagement_id, copy)
    _raise_if_finalized(db, engagement_id)
    locks = [lock for lock in load_locks(db, engagement_id) if lock.holder != user and lock.active(now)]
    if not locks:
        return
    for change in changes:
        lock = blocking_lock(locks, change.path, user, now)
        if lock is not None:
            raise Locked(
                f"{change.path!r} is {describe(lock)}"
                + ("" if lock.path == change.path else f" (folder {lock.path!r})")
                + "; your edit is kept and syncs after check-in",
                path=change.path,
                lock_path=lock.path,
                holder=lock.holder,
                since=_ts(lock.since),
                expires_at=None if lock.expires_at is None else _ts(lock.expires_at),
            )


# ------------------------------------------------------------------------------------ locks


def checkout(
    db: MetadataDB,
    engagement_id: int,
    path: str,
    user: str,
    session: str | None,
    now: datetime,
    duration: timedelta | None,
) -> Lock:
    path = normalize_path(path)

    def tx() -> Lock:
        _lock_engagement(db, engagement_id)
        _raise_if_finalized(db, engagement_id)
        locks = load_locks(db, engagement_id)
        other = checkout_conflict(locks, path, user, now)
        if other is not None:
            raise Locked(
                f"cannot check out {path!r}: {other.path!r} is {describe(other)}",
                path=path,
                lock_path=other.path,
                holder=other.holder,
                since=_ts(other.since),
                expires_at=None if other.expires_at is None else _ts(other.expires_at),
            )
        for old in locks:  # expired overlapping locks are cleaned up here
            if not old.active(now) and overlaps(old.path, path):
                db.execute("DELETE FROM locks WHERE engagement_id = ? AND fold_key = ?", (engagement_id, fold_key(old.path)))
        expires = None if duration is None else now + duration
        lock = Lock(path=path, holder=user, since=now, expires_at=expires, session=session)
        db.execute(
            "INSERT INTO locks (engagement_id, fold_key, path, holder, session_id, since, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (engagement_id, fold_key) DO UPDATE SET"
            " path = excluded.path, holder = excluded.holder, session_id = excluded.session_id,"
            " since = excluded.since, expires_at = excluded.expires_at",
            (engagement_id, fold_key(path), path, user, session, _ts(now), None if expires is None else _ts(expires)),
        )
        audit_engagement(
            db, engagement_id, "checkout", user, now,
            {"path": path, "expires_at": None if expires is None else _ts(expires)},
        )
        return lock

    return db.write(tx)


def _find_lock(db: MetadataDB, engagement_id: int, path: str) -> Lock | None:
    key = fold_key(normalize_path(path))
    for lock in load_locks(db, engagement_id):
        if fold_key(lock.path) == key:
            return lock
    return None


def checkin(db: MetadataDB, engagement_id: int, path: str, user: str, now: datetime) -> Lock:
    def tx() -> Lock:
        lock = _find_lock(db, engagement_id, path)
        if lock is None or (not lock.active(now) and lock.holder != user):
            raise NotFound(f"{path!r} is not checked out", path=path)
        if lock.holder != user:
            raise Forbidden(f"{path!r} is {describe(lock)}; only they (or an admin) can release it", path=path)
        db.execute("DELETE FROM locks WHERE engagement_id = ? AND fold_key = ?", (engagement_id, fold_key(lock.path)))
        audit_engagement(db, engagement_id, "checkin", user, now, {"path": lock.path, "since": _ts(lock.since)})
        return lock

    return db.write(tx)


def break_lock(db: MetadataDB, engagement_id: int, path: str, actor: str, reason: str, now: datetime) -> Lock:
    _text(reason, "reason", MAX_REASON)

    def tx() -> Lock:
        lock = _find_lock(db, engagement_id, path)
        if lock is None:
            raise NotFound(f"{path!r} is not checked out", path=path)
        db.execute("DELETE FROM locks WHERE engagement_id = ? AND fold_key = ?", (engagement_id, fold_key(lock.path)))
        audit_engagement(
            db, engagement_id, "lock_break", actor, now,
            {"path": lock.path, "holder": lock.holder, "since": _ts(lock.since), "reason": reason},
        )
        return lock

    return db.write(tx)


def list_locks(db: MetadataDB, engagement_id: int, now: datetime) -> list[Lock]:
    return db.read(lambda: [lock for lock in load_locks(db, engagement_id) if lock.active(now)])


# ------------------------------------------------------------------------ history, restore


def history(db: MetadataDB, engagement_id: int, path: str) -> list[VersionRecord]:
    path = normalize_path(path)

    def tx() -> list[VersionRecord]:
        db.engagement_head(engagement_id)
        rows = db.all(
            "SELECT c.seq, c.kind, c.content, c.size, c.user_name, c.committed_at, c.conflict_of,"
            " m.content FROM changes c LEFT JOIN manifests m ON m.engagement_id = c.engagement_id"
            " AND m.content = c.content WHERE c.engagement_id = ? AND c.path = ? ORDER BY c.seq",
            (engagement_id, path),
        )
        out: list[VersionRecord] = []
        number = 0
        for r in rows:
            is_put = r[1] == "put"
            if is_put:
                number += 1
            out.append(
                VersionRecord(
                    number=number if is_put else None,
                    seq=int(r[0]),
                    kind=r[1],
                    content=None if r[2] is None else bytes(r[2]).hex(),
                    size=int(r[3]),
                    user=r[4],
                    time=datetime.fromisoformat(r[5]),
                    conflict_of=r[6],
                    available=is_put and r[7] is not None,
                )
            )
        return out

    return db.read(tx)


def restore(
    db: MetadataDB,
    engagement_id: int,
    user: str,
    session: str | None,
    copy: str | None,
    path: str,
    version: int,
    batch: str,
    now: datetime,
) -> CommitResult:
    """Commit version ``version`` of ``path`` as its newest version (a new change record; the
    content is already on the server, so no chunk moves). Locks and finalize apply."""
    path = normalize_path(path)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadRequest("version must be a positive integer")
    _text(batch, "batch", 200)
    when = _ts(now)

    def tx() -> CommitResult:
        _lock_engagement(db, engagement_id)
        puts = db.all(
            "SELECT seq, content, size FROM changes WHERE engagement_id = ? AND path = ? AND kind = 'put'"
            " ORDER BY seq",
            (engagement_id, path),
        )
        if version > len(puts):
            raise NotFound(f"{path!r} has {len(puts)} version(s); there is no version {version}", path=path)
        _, content_blob, size = puts[version - 1]
        content = bytes(content_blob).hex()
        if db._manifest_row(engagement_id, content) is None:
            raise NotFound(
                f"version {version} of {path!r} is past the engagement's retention and was collected",
                path=path,
            )
        current = db.one("SELECT seq FROM files WHERE engagement_id = ? AND path = ?", (engagement_id, path))
        base = None if current is None else int(current[0])
        change = ProposedChange(path=path, kind="put", base=base, content=content, size=int(size))
        return db._commit_tx(
            engagement_id, user, session, batch, [change], {}, now, when, copy,
            digest=commit_rules.restore_digest(path, version),
        )

    return db.write(tx)


def export_at(db: MetadataDB, engagement_id: int, at: datetime) -> tuple[int, list[ExportFile]]:
    """The live files as of the last change committed at or before ``at``: (that seq, files)."""
    when = _ts(at)

    def tx() -> tuple[int, list[ExportFile]]:
        db.engagement_head(engagement_id)
        row = db.one("SELECT MAX(seq) FROM changes WHERE engagement_id = ? AND committed_at <= ?", (engagement_id, when))
        seq = int(row[0] or 0)
        if seq == 0:
            return 0, []
        rows = db.all(
            "SELECT c.path, c.seq, c.content, c.size, m.content FROM changes c"
            " JOIN (SELECT path, MAX(seq) AS last_seq FROM changes WHERE engagement_id = ? AND seq <= ?"
            " GROUP BY path) l ON l.path = c.path AND l.last_seq = c.seq"
            " LEFT JOIN manifests m ON m.engagement_id = c.engagement_id AND m.content = c.content"
            " WHERE c.engagement_id = ? AND c.kind = 'put' ORDER BY c.path",
            (engagement_id, seq, engagement_id),
        )
        files = [
            ExportFile(path=r[0], seq=int(r[1]), content=bytes(r[2]).hex(), size=int(r[3]), available=r[4] is not None)
            for r in rows
        ]
        return seq, files

    return db.read(tx)


# ----------------------------------------------------------------------- finalize, retention


def engagement_status(db: MetadataDB, engagement_id: int) -> EngagementStatus:
    row = db.one(
        "SELECT name, finalized_at, finalized_by, finalized_reason, retention_days FROM engagements WHERE id = ?",
        (engagement_id,),
    )
    if row is None:
        raise NotFound(f"no engagement with id {engagement_id}")
    return EngagementStatus(
        name=row[0],
        finalized_at=_dt(row[1]),
        finalized_by=row[2],
        finalized_reason=row[3],
        retention_days=None if row[4] is None else int(row[4]),
    )


def finalize(
    db: MetadataDB, engagement_id: int, actor: str, reason: str, force: bool, now: datetime
) -> tuple[EngagementStatus, list[CopyRecord]]:
    _text(reason, "reason", MAX_REASON)
    _text(actor, "actor")

    def tx() -> tuple[EngagementStatus, list[CopyRecord]]:
        _lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if status.finalized:
            raise BadRequest(f"engagement {status.name!r} is already finalized (by {status.finalized_by})")
        pending = [c for c in _copies(db, engagement_id) if c.unsynced > 0 and c.abandoned_at is None]
        if pending and not force:
            raise UnsyncedCopies(
                f"{len(pending)} cop{'y holds' if len(pending) == 1 else 'ies hold'} unsynced work: "
                + "; ".join(f"{c.copy_id} ({c.user} on {c.host}: {c.unsynced} change(s))" for c in pending)
                + ". Sync them first, abandon them, or finalize with --force",
                copies=[c.copy_id for c in pending],
            )
        db.execute(
            "UPDATE engagements SET finalized_at = ?, finalized_by = ?, finalized_reason = ? WHERE id = ?",
            (_ts(now), actor, reason, engagement_id),
        )
        audit_engagement(
            db, engagement_id, "finalize", actor, now,
            {"reason": reason, "forced": bool(force and pending),
             "unsynced_copies": [{"copy": c.copy_id, "user": c.user, "unsynced": c.unsynced} for c in pending],
             "head": db.engagement_head(engagement_id)},
        )
        return engagement_status(db, engagement_id), pending

    return db.write(tx)


def reopen(db: MetadataDB, engagement_id: int, actor: str, reason: str, now: datetime) -> EngagementStatus:
    _text(reason, "reason", MAX_REASON)
    _text(actor, "actor")

    def tx() -> EngagementStatus:
        _lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if not status.finalized:
            raise BadRequest(f"engagement {status.name!r} is not finalized")
        db.execute(
            "UPDATE engagements SET finalized_at = NULL, finalized_by = NULL, finalized_reason = NULL WHERE id = ?",
            (engagement_id,),
        )
        audit_engagement(
            db, engagement_id, "reopen", actor, now,
            {"reason": reason, "finalized_by": status.finalized_by, "finalized_reason": status.finalized_reason,
             "finalized_at": None if status.finalized_at is None else _ts(status.finalized_at)},
        )
        return engagement_status(db, engagement_id)

    return db.write(tx)


def set_retention(db: MetadataDB, engagement_id: int, days: int | None, actor: str, now: datetime) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or days < 0 or days > 100000):
        raise BadRequest("retention must be a whole number of days from 0 to 100000, or none (keep all)")

    def tx() -> None:
        old = engagement_status(db, engagement_id).retention_days
        db.execute("UPDATE engagements SET retention_days = ? WHERE id = ?", (days, engagement_id))
        audit_engagement(db, engagement_id, "retention", actor, now, {"days": days, "previous": old})

    db.write(tx)


# ----------------------------------------------------------------------------------- copies

_COPY_COLUMNS = (
    "copy_id, user_name, host, registered_at, last_contact, unsynced, unsynced_since, abandoned_at, abandoned_by"
)


def _copy(row: Sequence[Any]) -> CopyRecord:
    return CopyRecord(
        copy_id=row[0],
        user=row[1],
        host=row[2],
        registered_at=datetime.fromisoformat(row[3]),
        last_contact=datetime.fromisoformat(row[4]),
        unsynced=int(row[5]),
        unsynced_since=_dt(row[6]),
        abandoned_at=_dt(row[7]),
        abandoned_by=row[8],
    )


def _copies(db: MetadataDB, engagement_id: int) -> list[CopyRecord]:
    rows = db.all(
        f"SELECT {_COPY_COLUMNS} FROM copies WHERE engagement_id = ? ORDER BY registered_at, copy_id",
        (engagement_id,),
    )
    return [_copy(r) for r in rows]


def _get_copy(db: MetadataDB, engagement_id: int, copy_id: str) -> CopyRecord | None:
    row = db.one(f"SELECT {_COPY_COLUMNS} FROM copies WHERE engagement_id = ? AND copy_id = ?", (engagement_id, copy_id))
    return None if row is None else _copy(row)


def _check_copy_id(copy_id: object) -> str:
    if not isinstance(copy_id, str) or not _COPY_ID.match(copy_id):
        raise BadRequest("a copy id is 1-64 characters of letters, digits, '-' and '_'")
    return copy_id


def _upsert_copy(
    db: MetadataDB, engagement_id: int, copy_id: str, user: str, host: str, session: str | None, now: datetime
) -> tuple[CopyRecord, bool]:
    existing = _get_copy(db, engagement_id, copy_id)
    if existing is not None:
        if existing.abandoned_at is not None:
            _raise_if_abandoned(db, engagement_id, copy_id)
        if existing.user != user:
            raise Forbidden(f"copy {copy_id} belongs to another user")
        db.execute(
            "UPDATE copies SET host = ?, session_id = ?, last_contact = ? WHERE engagement_id = ? AND copy_id = ?",
            (host, session, _ts(now), engagement_id, copy_id),
        )
        return existing, False
    db.execute(
        f"INSERT INTO copies (engagement_id, {_COPY_COLUMNS}, session_id) VALUES (?, ?, ?, ?, ?, ?, 0, NULL, NULL, NULL, ?)",
        (engagement_id, copy_id, user, host, _ts(now), _ts(now), session),
    )
    audit_engagement(db, engagement_id, "copy_register", user, now, {"copy": copy_id, "host": host})
    return _get_copy(db, engagement_id, copy_id), True  # type: ignore[return-value]


def register_copy(
    db: MetadataDB, engagement_id: int, copy_id: str, user: str, host: str, session: str | None, now: datetime
) -> CopyRecord:
    _check_copy_id(copy_id)
    _text(host, "host name")

    def tx() -> CopyRecord:
        _upsert_copy(db, engagement_id, copy_id, user, host, session, now)
        found = _get_copy(db, engagement_id, copy_id)
        assert found is not None
        return found

    return db.write(tx)


def report_copy(
    db: MetadataDB,
    engagement_id: int,
    copy_id: str,
    user: str,
    host: str,
    session: str | None,
    unsynced: int,
    since: datetime | None,
    now: datetime,
) -> CopyRecord:
    """A contact: the copy holds ``unsynced`` local changes, unsynced since ``since``."""
    _check_copy_id(copy_id)
    _text(host, "host name")
    if not isinstance(unsynced, int) or isinstance(unsynced, bool) or unsynced < 0:
        raise BadRequest("unsynced must be a non-negative integer")

    def tx() -> CopyRecord:
        before, _new = _upsert_copy(db, engagement_id, copy_id, user, host, session, now)
        if unsynced == 0:
            since_text = None
        elif since is not None:
            since_text = _ts(min(since, now))
        elif before.unsynced_since is not None:
            since_text = _ts(before.unsynced_since)
        else:
            since_text = _ts(now)
        db.execute(
            "UPDATE copies SET unsynced = ?, unsynced_since = ? WHERE engagement_id = ? AND copy_id = ?",
            (unsynced, since_text, engagement_id, copy_id),
        )
        found = _get_copy(db, engagement_id, copy_id)
        assert found is not None
        return found

    return db.write(tx)


def list_copies(db: MetadataDB, engagement_id: int) -> list[CopyRecord]:
    return db.read(lambda: _copies(db, engagement_id))


def abandon_copy(db: MetadataDB, engagement_id: int, copy_id: str, actor: str, now: datetime) -> CopyRecord:
    """Revoke a copy for good: its session ends and its commits are refused from now on."""

    def tx() -> CopyRecord:
        found = _get_copy(db, engagement_id, copy_id)
        if found is None:
            raise NotFound(f"no copy {copy_id!r} in this engagement", copy=copy_id)
        if found.abandoned_at is not None:
            raise BadRequest(f"copy {copy_id} was already abandoned by {found.abandoned_by}")
        row = db.one("SELECT session_id FROM copies WHERE engagement_id = ? AND copy_id = ?", (engagement_id, copy_id))
        ended = 0
        if row is not None and row[0]:
            ended = max(db.execute("DELETE FROM sessions WHERE id = ?", (row[0],)).rowcount, 0)
        db.execute(
            "UPDATE copies SET abandoned_at = ?, abandoned_by = ? WHERE engagement_id = ? AND copy_id = ?",
            (_ts(now), actor, engagement_id, copy_id),
        )
        audit_engagement(
            db, engagement_id, "copy_abandon", actor, now,
            {"copy": copy_id, "user": found.user, "host": found.host, "unsynced": found.unsynced,
             "sessions_ended": ended},
        )
        result = _get_copy(db, engagement_id, copy_id)
        assert result is not None
        return result

    return db.write(tx)


# ------------------------------------------------------------------------ audit read, verify


def audit_records(db: MetadataDB, engagement_id: int) -> list[AuditRecord]:
    """The engagement's change records and audit events, merged by time (for export)."""

    def tx() -> list[AuditRecord]:
        name = _name(db, engagement_id)
        out: list[AuditRecord] = []
        for r in db.all(_CHANGE_SELECT + " ORDER BY seq", (engagement_id,)):
            detail = {"path": r[1], "content": None if r[3] is None else bytes(r[3]).hex(), "size": int(r[4]),
                      "prev_seq": r[5], "session": r[7], "conflict_of": r[9], "batch": r[10]}
            out.append(AuditRecord(
                chain=f"changes:{name}", seq=int(r[0]), event=r[2], actor=r[6],
                time=datetime.fromisoformat(r[8]), engagement=name, detail=detail,
                record_hash="" if r[12] is None else bytes(r[12]).hex(),
            ))
        for r in db.all(
            "SELECT chain, seq, event, actor, at, engagement, detail, record_hash FROM audit WHERE chain = ? ORDER BY seq",
            (engagement_chain(name),),
        ):
            out.append(AuditRecord(
                chain=r[0], seq=int(r[1]), event=r[2], actor=r[3], time=datetime.fromisoformat(r[4]),
                engagement=r[5], detail=json.loads(r[6]), record_hash=bytes(r[7]).hex(),
            ))
        out.sort(key=lambda a: (a.time, a.chain, a.seq))
        return out

    return db.read(tx)


def _audit_chain_records(db: MetadataDB, chain: str) -> Iterable[ChainRecord]:
    for r in db.all(
        "SELECT seq, event, actor, at, engagement, detail, prev_hash, record_hash FROM audit WHERE chain = ? ORDER BY seq",
        (chain,),
    ):
        yield ChainRecord(
            seq=int(r[0]),
            fields=audit_fields(chain, int(r[0]), r[1], r[2], r[3], r[4], r[5]),
            prev_hash=None if r[6] is None else bytes(r[6]),
            record_hash=None if r[7] is None else bytes(r[7]),
        )


def _verify_audit_chain(db: MetadataDB, chain: str) -> ChainReport:
    row = db.one("SELECT seq FROM audit_heads WHERE chain = ?", (chain,))
    head = 0 if row is None else int(row[0])
    result = verify_chain(AUDIT_DOMAIN, _audit_chain_records(db, chain), head)
    return ChainReport(chain, result.records, result.head_hash.hex(),
                       None if result.problem is None else f"audit {chain} {result.problem}")


def verify_engagement(db: MetadataDB, engagement_id: int) -> list[ChainReport]:
    def tx() -> list[ChainReport]:
        name = _name(db, engagement_id)
        head = db.engagement_head(engagement_id)
        records = (
            ChainRecord(
                seq=int(r[0]), fields=_change_row_fields(r),
                prev_hash=None if r[11] is None else bytes(r[11]),
                record_hash=None if r[12] is None else bytes(r[12]),
            )
            for r in db.all(_CHANGE_SELECT + " ORDER BY seq", (engagement_id,))
        )
        result = verify_chain(CHANGE_DOMAIN, records, head)
        changes = ChainReport(
            f"changes:{name}", result.records, result.head_hash.hex(),
            None if result.problem is None else f"change log of {name}: {result.problem}",
        )
        return [changes, _verify_audit_chain(db, engagement_chain(name))]

    return db.read(tx)


def verify_global(db: MetadataDB) -> ChainReport:
    return db.read(lambda: _verify_audit_chain(db, GLOBAL_CHAIN))


# --------------------------------------------------------------------------------------- gc


def retained_contents(
    rows: Iterable[Sequence[Any]], retention_days: int | None, now: datetime
) -> set[bytes]:
    """Contents some retained version needs. ``rows``: (seq, path, kind, content, committed_at,
    conflict_of) ordered by path, then seq. Pure (tested directly)."""
    cutoff = None if retention_days is None else _ts(now - timedelta(days=retention_days))
    keep: set[bytes] = set()
    previous: Sequence[Any] | None = None

    def decide(record: Sequence[Any], replaced_at: str | None) -> None:
        if record[2] != "put" or record[3] is None:
            return
        if cutoff is None or replaced_at is None or record[5] is not None or replaced_at >= cutoff:
            keep.add(bytes(record[3]))

    for row in rows:
        if previous is not None:
            decide(previous, row[4] if row[1] == previous[1] else None)
        previous = row
    if previous is not None:
        decide(previous, None)
    return keep


def gc_engagement(
    db: MetadataDB, engagement_id: int, now: datetime, grace: timedelta
) -> tuple[GcReport, list[str], set[str]]:
    """Drop what no retained version needs (one transaction). Returns the report, the packs
    whose files may now be deleted, and every pack still recorded (for the orphan sweep)."""

    def tx() -> tuple[GcReport, list[str], set[str]]:
        _lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        recorded = {str(r[0]) for r in db.all("SELECT id FROM packs WHERE engagement_id = ?", (engagement_id,))}
        if status.finalized:
            return GcReport(status.name, skipped="finalized: nothing is collected"), [], recorded
        rows = db.all(
            "SELECT seq, path, kind, content, committed_at, conflict_of FROM changes"
            " WHERE engagement_id = ? ORDER BY path, seq",
            (engagement_id,),
        )
        keep = retained_contents(rows, status.retention_days, now)
        binary = db.dialect.binary
        live: set[bytes] = set()
        dead_manifests: list[bytes] = []
        for content, body in db.all("SELECT content, body FROM manifests WHERE engagement_id = ?", (engagement_id,)):
            content = bytes(content)
            if content in keep:
                live.update(bytes.fromhex(c.hash) for c in manifest.decode_binary(bytes(body)))
            else:
                dead_manifests.append(content)
        for content in dead_manifests:
            db.execute("DELETE FROM manifests WHERE engagement_id = ? AND content = ?", (engagement_id, binary(content)))
        young = _ts(now - grace)
        candidates = db.all(
            "SELECT c.hash, c.pack_id, c.stored_size FROM chunks c JOIN packs p ON p.engagement_id = c.engagement_id"
            " AND p.id = c.pack_id WHERE c.engagement_id = ? AND p.created_at < ?",
            (engagement_id, young),
        )
        removed = 0
        for chunk_hash, _pack, _stored in candidates:
            if bytes(chunk_hash) not in live:
                db.execute("DELETE FROM chunks WHERE engagement_id = ? AND hash = ?", (engagement_id, binary(bytes(chunk_hash))))
                removed += 1
        empty = [
            (str(r[0]), int(r[1]))
            for r in db.all(
                "SELECT p.id, p.size FROM packs p WHERE p.engagement_id = ? AND p.created_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM chunks c WHERE c.engagement_id = p.engagement_id AND c.pack_id = p.id)",
                (engagement_id, young),
            )
        ]
        for pack_id, _size in empty:
            db.execute("DELETE FROM packs WHERE engagement_id = ? AND id = ?", (engagement_id, pack_id))
        report = GcReport(
            status.name,
            manifests_removed=len(dead_manifests),
            chunks_removed=removed,
            packs_removed=len(empty),
            bytes_freed=sum(size for _, size in empty),
        )
        if removed or dead_manifests:
            audit_engagement(
                db, engagement_id, "gc", "smartsync-admin", now,
                {"retention_days": status.retention_days, "manifests": len(dead_manifests),
                 "chunks": removed, "packs": len(empty)},
            )
        return report, [p for p, _ in empty], recorded - {p for p, _ in empty}

    return db.write(tx)
