"""Minimum retention, legal hold and disposal of an engagement (issue 20, docs/workflow.md).

The minimum retention period is the larger of the engagement's own (``min_retention_days``)
and the firm's default (``[lifecycle] min_retention_days``, passed in as ``firm_min``). While it
runs, gc keeps every version replaced less than that many days ago (``effective_retention``),
``workflow.set_retention`` refuses a shorter period, and the engagement cannot be disposed of: disposal
needs the engagement finalized and the period elapsed since. A legal hold blocks gc and
disposal regardless of retention. ``dispose`` removes the content (manifests, chunk and pack
rows, file heads, batches) in one transaction holding the engagement lock and writes a
``dispose`` event with what was removed (counts, bytes, a BLAKE3 digest over the sorted
``path, seq, content`` lines of every version); the audit chain's hash covers that record, and
the change log and the audit trail stay. The pack files go after the commit (file pool).
Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from blake3 import blake3

from smartsyncd.core.errors import BadRequest, Retained
from smartsyncd.storage.api import EngagementStatus
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.db import MAX_REASON, MetadataDB, checked_line, lock_engagement, ts
from smartsyncd.storage.workflow import engagement_status
from smartsyncd.storage.workflow import minimum_retention as minimum_days

MAX_DAYS = 100000


def effective_retention(status: EngagementStatus, firm_min: int | None) -> int | None:
    """How long gc keeps replaced versions: the engagement's retention, never below the minimum
    (None: keep all)."""
    floor = minimum_days(status, firm_min)
    if status.retention_days is None:
        return None
    return status.retention_days if floor is None else max(status.retention_days, floor)


def retained_until(status: EngagementStatus, firm_min: int | None) -> datetime | None:
    """When the engagement may be disposed of; None while it is open (not finalized)."""
    if status.finalized_at is None:
        return None
    return status.finalized_at + timedelta(days=minimum_days(status, firm_min) or 0)


def set_min_retention(
    db: MetadataDB, engagement_id: int, days: int | None, actor: str, now: datetime
) -> None:
    """The engagement's own minimum retention (None: only the firm's default applies).
    Shortening it is refused while it is running (it could remove what it protects)."""
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_DAYS):
        raise BadRequest(f"minimum retention must be a whole number of days from 0 to {MAX_DAYS}")
    checked_line(actor, "actor")

    def tx() -> None:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        old = status.min_retention_days
        if old is not None and (days is None or days < old):
            raise Retained(
                f"engagement {status.name!r} has a minimum retention of {old} day(s); it can be"
                " lengthened, never shortened or removed"
            )
        db.execute("UPDATE engagements SET min_retention_days = ? WHERE id = ?", (days, engagement_id))
        audit_engagement(db, engagement_id, "min_retention", actor, now, {"days": days, "previous": old})

    db.write(tx)


def legal_hold(db: MetadataDB, engagement_id: int, on: bool, reason: str, actor: str, now: datetime) -> None:
    checked_line(reason, "reason", MAX_REASON)
    checked_line(actor, "actor")

    def tx() -> None:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if on and status.legal_hold is not None:
            raise BadRequest(f"engagement {status.name!r} is already under legal hold: {status.legal_hold}")
        if not on and status.legal_hold is None:
            raise BadRequest(f"engagement {status.name!r} is not under legal hold")
        db.execute(
            "UPDATE engagements SET legal_hold_reason = ?, legal_hold_by = ?, legal_hold_at = ? WHERE id = ?",
            (reason, actor, ts(now), engagement_id) if on else (None, None, None, engagement_id),
        )
        detail: dict[str, Any] = {"reason": reason}
        if not on:
            detail.update(held_for=status.legal_hold, held_by=status.legal_hold_by,
                          held_since=None if status.legal_hold_at is None else ts(status.legal_hold_at))
        audit_engagement(db, engagement_id, "legal_hold" if on else "legal_hold_release", actor, now, detail)

    db.write(tx)


def refuse_if_held(status: EngagementStatus, what: str) -> None:
    if status.legal_hold is not None:
        raise Retained(
            f"engagement {status.name!r} is under legal hold ({status.legal_hold}, set by"
            f" {status.legal_hold_by}): {what} is refused until the hold is released"
        )


def dispose(
    db: MetadataDB, engagement_id: int, actor: str, now: datetime, firm_min: int | None
) -> tuple[dict[str, Any], list[str]]:
    """Remove the engagement's content after its retention; returns the disposal record (as
    written to the audit chain, with the event's seq and record hash) and the packs to delete."""
    checked_line(actor, "actor")

    def tx() -> tuple[dict[str, Any], list[str]]:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        if status.disposed_at is not None:
            raise BadRequest(f"engagement {status.name!r} was already disposed of by {status.disposed_by}")
        refuse_if_held(status, "disposal")
        until = retained_until(status, firm_min)
        if until is None:
            raise Retained(
                f"engagement {status.name!r} is not finalized: only a finalized engagement whose"
                " retention period has ended can be disposed of"
            )
        if now < until:
            raise Retained(
                f"engagement {status.name!r} is retained until {until.strftime('%Y-%m-%d %H:%M UTC')}"
                f" ({minimum_days(status, firm_min)} day(s) after it was finalized); disposal is refused"
            )
        record = _removal_record(db, engagement_id)
        packs = [str(r[0]) for r in db.all("SELECT id FROM packs WHERE engagement_id = ?", (engagement_id,))]
        for table in ("manifests", "chunks", "files", "batches", "locks"):
            db.execute(f"DELETE FROM {table} WHERE engagement_id = ?", (engagement_id,))
        db.execute("DELETE FROM packs WHERE engagement_id = ?", (engagement_id,))
        db.execute("UPDATE engagements SET disposed_at = ?, disposed_by = ? WHERE id = ?",
                   (ts(now), actor, engagement_id))
        record.update(engagement=status.name, disposed_at=ts(now), disposed_by=actor,
                      finalized_at=ts(status.finalized_at) if status.finalized_at else None,
                      retention_days=minimum_days(status, firm_min), packs=len(packs))
        audit_engagement(db, engagement_id, "dispose", actor, now, record)
        row = db.one("SELECT seq, record_hash FROM audit_heads WHERE chain = ?", (f"eng:{status.name}",))
        return record | {"audit_seq": int(row[0]), "record_hash": bytes(row[1]).hex()}, packs

    return db.write(tx)


def _removal_record(db: MetadataDB, engagement_id: int) -> dict[str, Any]:
    """What disposal removes: versions, contents, bytes, and a digest naming every version."""
    digest = blake3()
    versions = 0
    for path, seq, content in db.all(
        "SELECT path, seq, content FROM changes WHERE engagement_id = ? AND kind = 'put' ORDER BY path, seq",
        (engagement_id,),
    ):
        versions += 1
        digest.update(f"{path}\t{int(seq)}\t{bytes(content).hex()}\n".encode())
    row = db.one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM manifests WHERE engagement_id = ?", (engagement_id,))
    stored = db.one("SELECT COUNT(*), COALESCE(SUM(stored_size), 0) FROM chunks WHERE engagement_id = ?",
                    (engagement_id,))
    live = db.one("SELECT COUNT(*) FROM files WHERE engagement_id = ? AND content IS NOT NULL", (engagement_id,))
    return {
        "versions": versions,
        "current_files": int(live[0]),
        "contents": int(row[0]),
        "logical_bytes": int(row[1]),
        "chunks": int(stored[0]),
        "stored_bytes": int(stored[1]),
        "versions_digest": digest.hexdigest(),
    }
