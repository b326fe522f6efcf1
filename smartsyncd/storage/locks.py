"""Check-out locks, version history, restore of an old version, and export at a time.

A restore is a commit (``commit.commit_tx``) of the old content under a batch key derived from
the path and version, in one write transaction that holds the engagement lock. Synchronous
functions over a ``MetadataDB``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from smartsyncd.core import commit_rules
from smartsyncd.core.errors import (
    BadRequest,
    Forbidden,
    Locked,
    NotFound,
)
from smartsyncd.core.locks import Lock, checkout_conflict, describe, overlaps
from smartsyncd.core.model import ProposedChange, is_folder
from smartsyncd.core.paths import fold_key, normalize_path
from smartsyncd.storage import chunks, commit
from smartsyncd.storage.api import (
    CommitResult,
    ExportFile,
    VersionRecord,
)
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.db import (
    MAX_REASON,
    MetadataDB,
    checked_line,
    lock_engagement,
    ts,
)
from smartsyncd.storage.workflow import load_locks, raise_if_finalized

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
        lock_engagement(db, engagement_id)
        raise_if_finalized(db, engagement_id)
        locks = load_locks(db, engagement_id)
        other = checkout_conflict(locks, path, user, now)
        if other is not None:
            raise Locked(
                f"cannot check out {path!r}: {other.path!r} is {describe(other)}",
                path=path,
                lock_path=other.path,
                holder=other.holder,
                since=ts(other.since),
                expires_at=None if other.expires_at is None else ts(other.expires_at),
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
            (engagement_id, fold_key(path), path, user, session, ts(now), None if expires is None else ts(expires)),
        )
        audit_engagement(
            db, engagement_id, "checkout", user, now,
            {"path": path, "expires_at": None if expires is None else ts(expires)},
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
        audit_engagement(db, engagement_id, "checkin", user, now, {"path": lock.path, "since": ts(lock.since)})
        return lock

    return db.write(tx)


def break_lock(db: MetadataDB, engagement_id: int, path: str, actor: str, reason: str, now: datetime) -> Lock:
    checked_line(reason, "reason", MAX_REASON)

    def tx() -> Lock:
        lock = _find_lock(db, engagement_id, path)
        if lock is None:
            raise NotFound(f"{path!r} is not checked out", path=path)
        db.execute("DELETE FROM locks WHERE engagement_id = ? AND fold_key = ?", (engagement_id, fold_key(lock.path)))
        audit_engagement(
            db, engagement_id, "lock_break", actor, now,
            {"path": lock.path, "holder": lock.holder, "since": ts(lock.since), "reason": reason},
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
            " m.content, c.mtime_ns, c.readonly FROM changes c LEFT JOIN manifests m ON m.engagement_id = c.engagement_id"
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
                    # a folder entry has no manifest to collect
                    available=is_put and (r[7] is not None or is_folder(bytes(r[2]).hex())),
                    mtime_ns=None if r[8] is None else int(r[8]),
                    readonly=None if r[9] is None else bool(r[9]),
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
    checked_line(batch, "batch", 200)
    when = ts(now)

    def tx() -> CommitResult:
        lock_engagement(db, engagement_id)
        puts = db.all(
            "SELECT seq, content, size, mtime_ns, readonly FROM changes"
            " WHERE engagement_id = ? AND path = ? AND kind = 'put'"
            " ORDER BY seq",
            (engagement_id, path),
        )
        if version > len(puts):
            raise NotFound(f"{path!r} has {len(puts)} version(s); there is no version {version}", path=path)
        _, content_blob, size, mtime_ns, readonly = puts[version - 1]
        content = bytes(content_blob).hex()
        if not is_folder(content) and chunks.manifest_row(db, engagement_id, content) is None:
            raise NotFound(
                f"version {version} of {path!r} is past the engagement's retention and was collected",
                path=path,
            )
        current = db.one("SELECT seq FROM files WHERE engagement_id = ? AND path = ?", (engagement_id, path))
        base = None if current is None else int(current[0])
        # the old version comes back with its own date and read-only attribute
        change = ProposedChange(
            path=path, kind="put", base=base, content=content, size=int(size),
            mtime_ns=None if mtime_ns is None else int(mtime_ns),
            readonly=None if readonly is None else bool(readonly),
        )
        return commit.commit_tx(
            db,
            engagement_id, user, session, batch, [change], {}, now, when, copy,
            digest=commit_rules.restore_digest(path, version),
        )

    return db.write(tx)


def export_at(db: MetadataDB, engagement_id: int, at: datetime) -> tuple[int, list[ExportFile]]:
    """The live files as of the last change committed at or before ``at``: (that seq, files)."""
    when = ts(at)

    def tx() -> tuple[int, list[ExportFile]]:
        db.engagement_head(engagement_id)
        row = db.one("SELECT MAX(seq) FROM changes WHERE engagement_id = ? AND committed_at <= ?", (engagement_id, when))
        seq = int(row[0] or 0)
        if seq == 0:
            return 0, []
        rows = db.all(
            "SELECT c.path, c.seq, c.content, c.size, m.content, c.mtime_ns, c.readonly FROM changes c"
            " JOIN (SELECT path, MAX(seq) AS last_seq FROM changes WHERE engagement_id = ? AND seq <= ?"
            " GROUP BY path) l ON l.path = c.path AND l.last_seq = c.seq"
            " LEFT JOIN manifests m ON m.engagement_id = c.engagement_id AND m.content = c.content"
            " WHERE c.engagement_id = ? AND c.kind = 'put' ORDER BY c.path",
            (engagement_id, seq, engagement_id),
        )
        files = [
            ExportFile(
                path=r[0], seq=int(r[1]), content=bytes(r[2]).hex(), size=int(r[3]),
                available=r[4] is not None or is_folder(bytes(r[2]).hex()),
                mtime_ns=None if r[5] is None else int(r[5]),
                readonly=None if r[6] is None else bool(r[6]),
            )
            for r in rows
        ]
        return seq, files

    return db.read(tx)
