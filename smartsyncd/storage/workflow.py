"""The engagement workflow's state: the rules checked inside every commit, and sign-off.

``check_commit`` (finalized engagement, abandoned copy, another user's lock) is called from the
commit transaction (``storage/commit``), so a commit and its checks are one atomic decision.
``finalize``/``reopen`` freeze and thaw an engagement; ``set_retention`` sets how long replaced
versions are kept (``storage/gc``). Locks, history and restore are in ``storage/locks``, sync
copies in ``storage/copies``, the audit trail in ``storage/audit`` (see docs/workflow.md).
Synchronous functions over a ``MetadataDB``; ``SqlServerStore`` wraps each in a coroutine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from smartsyncd.core.errors import (
    BadRequest,
    Finalized,
    Locked,
    NotFound,
    Retained,
    UnsyncedCopies,
)
from smartsyncd.core.locks import Lock, blocking_lock, describe
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.api import (
    CopyRecord,
    EngagementStatus,
)
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.copies import copies_of, raise_if_abandoned
from smartsyncd.storage.db import (
    MAX_REASON,
    MetadataDB,
    checked_line,
    dt_or_none,
    lock_engagement,
    ts,
)

# ------------------------------------------------------------------- checks inside commit


def load_locks(db: MetadataDB, engagement_id: int) -> list[Lock]:
    rows = db.all(
        "SELECT path, holder, since, expires_at, session_id FROM locks WHERE engagement_id = ? ORDER BY path",
        (engagement_id,),
    )
    return [
        Lock(path=r[0], holder=r[1], since=dt_or_none(r[2]) or datetime.min, expires_at=dt_or_none(r[3]), session=r[4])
        for r in rows
    ]


def raise_if_finalized(db: MetadataDB, engagement_id: int) -> None:
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
    raise_if_abandoned(db, engagement_id, copy)
    raise_if_finalized(db, engagement_id)
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
                since=ts(lock.since),
                expires_at=None if lock.expires_at is None else ts(lock.expires_at),
            )


# ----------------------------------------------------------------------- finalize, retention


def engagement_status(db: MetadataDB, engagement_id: int) -> EngagementStatus:
    row = db.one(
        "SELECT name, finalized_at, finalized_by, finalized_reason, retention_days, report_date,"
        " assembly_deadline, min_retention_days, legal_hold_reason, legal_hold_by, legal_hold_at,"
        " disposed_at, disposed_by FROM engagements WHERE id = ?",
        (engagement_id,),
    )
    if row is None:
        raise NotFound(f"no engagement with id {engagement_id}")
    return EngagementStatus(
        name=row[0],
        finalized_at=dt_or_none(row[1]),
        finalized_by=row[2],
        finalized_reason=row[3],
        retention_days=None if row[4] is None else int(row[4]),
        report_date=dt_or_none(row[5]),
        assembly_deadline=dt_or_none(row[6]),
        min_retention_days=None if row[7] is None else int(row[7]),
        legal_hold=row[8],
        legal_hold_by=row[9],
        legal_hold_at=dt_or_none(row[10]),
        disposed_at=dt_or_none(row[11]),
        disposed_by=row[12],
    )


def finalize(
    db: MetadataDB, engagement_id: int, actor: str, reason: str, force: bool, now: datetime
) -> tuple[EngagementStatus, list[CopyRecord]]:
    checked_line(reason, "reason", MAX_REASON)
    checked_line(actor, "actor")

    def tx() -> tuple[EngagementStatus, list[CopyRecord]]:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if status.finalized:
            raise BadRequest(f"engagement {status.name!r} is already finalized (by {status.finalized_by})")
        pending = [c for c in copies_of(db, engagement_id) if c.unsynced > 0 and c.abandoned_at is None]
        if pending and not force:
            raise UnsyncedCopies(
                f"{len(pending)} cop{'y holds' if len(pending) == 1 else 'ies hold'} unsynced work: "
                + "; ".join(f"{c.copy_id} ({c.user} on {c.host}: {c.unsynced} change(s))" for c in pending)
                + ". Sync them first, abandon them, or finalize with --force",
                copies=[c.copy_id for c in pending],
            )
        db.execute(
            "UPDATE engagements SET finalized_at = ?, finalized_by = ?, finalized_reason = ? WHERE id = ?",
            (ts(now), actor, reason, engagement_id),
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
    checked_line(reason, "reason", MAX_REASON)
    checked_line(actor, "actor")

    def tx() -> EngagementStatus:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if not status.finalized:
            raise BadRequest(f"engagement {status.name!r} is not finalized")
        if status.disposed_at is not None:
            raise BadRequest(f"engagement {status.name!r} was disposed of: its content is gone")
        db.execute(
            "UPDATE engagements SET finalized_at = NULL, finalized_by = NULL, finalized_reason = NULL WHERE id = ?",
            (engagement_id,),
        )
        audit_engagement(
            db, engagement_id, "reopen", actor, now,
            {"reason": reason, "finalized_by": status.finalized_by, "finalized_reason": status.finalized_reason,
             "finalized_at": None if status.finalized_at is None else ts(status.finalized_at)},
        )
        return engagement_status(db, engagement_id)

    return db.write(tx)


def minimum_retention(status: EngagementStatus, firm_min: int | None) -> int | None:
    """The minimum retention period in days: the larger of the engagement's own and the firm's
    default, or None when neither is set (``storage/retention``)."""
    values = [d for d in (status.min_retention_days, firm_min) if d is not None]
    return max(values) if values else None


def set_retention(
    db: MetadataDB, engagement_id: int, days: int | None, actor: str, now: datetime, firm_min: int | None = None
) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or days < 0 or days > 100000):
        raise BadRequest("retention must be a whole number of days from 0 to 100000, or none (keep all)")

    def tx() -> None:
        status = engagement_status(db, engagement_id)
        floor = minimum_retention(status, firm_min)
        if days is not None and floor is not None and days < floor:  # issue 20
            raise Retained(
                f"engagement {status.name!r} must keep replaced versions at least {floor} day(s)"
                " (its minimum retention period); a shorter retention is refused"
            )
        old = status.retention_days
        db.execute("UPDATE engagements SET retention_days = ? WHERE id = ?", (days, engagement_id))
        audit_engagement(db, engagement_id, "retention", actor, now, {"days": days, "previous": old})

    db.write(tx)
