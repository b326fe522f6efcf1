"""The engagement's life after the report: report date, assembly deadline (issue 20).

``set_report_date`` records the report date and the assembly deadline (report date + N days;
a date without a time means the end of its day N, UTC) and audits it. Inside every commit
transaction ``check_deadline`` refuses a batch once the deadline has passed (even before a
daemon's timer has run) and says whether the commit is post-report; ``audit_post_report`` then
puts the commit's records in the audit chain as ``post_report_change``. ``finalize_due`` is the
deadline timer's step (``service/deadlines``): each due engagement is claimed by one
``UPDATE ... WHERE finalized_at IS NULL AND deadline_finalized_at IS NULL``, so across several
daemons exactly one wins and writes the ``finalize`` event. Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from smartsyncd.core.errors import BadRequest, Finalized
from smartsyncd.core.model import Change
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.copies import copies_of
from smartsyncd.storage.db import MetadataDB, checked_line, dt_or_none, lock_engagement, ts

DEADLINE_ACTOR = "smartsyncd:assembly-deadline"
MAX_ASSEMBLY_DAYS = 3660
WARN_BEFORE = timedelta(hours=72)  # a copy holding unsynced work is warned this long ahead
POST_REPORT_PATHS = 50  # paths named in one post_report_change event (the count is exact)


def assembly_deadline(report_date: date | datetime, days: int) -> datetime:
    """Report date + ``days``: a bare date counts to the end of its day ``days`` (UTC)."""
    if isinstance(report_date, datetime):
        if report_date.tzinfo is None:
            raise BadRequest("a report time needs a zone (e.g. 2026-03-31T17:00:00+00:00)")
        return report_date.astimezone(UTC) + timedelta(days=days)
    return datetime.combine(report_date, time(0, 0), UTC) + timedelta(days=days + 1)


def report_start(report_date: date | datetime) -> datetime:
    if isinstance(report_date, datetime):
        return report_date.astimezone(UTC)
    return datetime.combine(report_date, time(0, 0), UTC)


def set_report_date(
    db: MetadataDB,
    engagement_id: int,
    report_date: date | datetime,
    days: int,
    actor: str,
    now: datetime,
) -> datetime:
    """Record the report date and the assembly deadline; returns the deadline. A new date
    re-arms the deadline even if the timer finalized the engagement before (reopen it first)."""
    checked_line(actor, "actor")
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_ASSEMBLY_DAYS:
        raise BadRequest(f"assembly days must be a whole number from 0 to {MAX_ASSEMBLY_DAYS}")
    deadline = assembly_deadline(report_date, days)
    start = report_start(report_date)

    def tx() -> datetime:
        lock_engagement(db, engagement_id)
        old = db.one("SELECT report_date, assembly_deadline FROM engagements WHERE id = ?", (engagement_id,))
        db.execute(
            "UPDATE engagements SET report_date = ?, assembly_deadline = ?, deadline_finalized_at = NULL"
            " WHERE id = ?",
            (ts(start), ts(deadline), engagement_id),
        )
        audit_engagement(
            db, engagement_id, "report_date", actor, now,
            {"report_date": ts(start), "assembly_days": days, "deadline": ts(deadline),
             "previous_report_date": old[0], "previous_deadline": old[1]},
        )
        return deadline

    return db.write(tx)


def check_deadline(db: MetadataDB, engagement_id: int, now: datetime) -> bool:
    """Inside the commit transaction: refuse once the assembly deadline has passed and the
    timer has not yet run (it finalizes). True when the commit comes after the report date."""
    row = db.one(
        "SELECT report_date, assembly_deadline, deadline_finalized_at FROM engagements WHERE id = ?",
        (engagement_id,),
    )
    if row is None or row[0] is None:
        return False
    deadline = dt_or_none(row[1])
    if deadline is not None and row[2] is None and now >= deadline:
        raise Finalized(
            f"the assembly deadline passed at {row[1][:16].replace('T', ' ')} UTC: the engagement"
            " file is final and read-only; your local changes are kept",
            reason="assembly deadline passed",
            finalized_by=DEADLINE_ACTOR,
            finalized_at=row[1],
        )
    report = dt_or_none(row[0])
    return report is not None and now >= report


def audit_post_report(
    db: MetadataDB, engagement_id: int, user: str, written: Sequence[Change], now: datetime
) -> None:
    """One audit event per post-report commit: who, which records, which paths."""
    if not written:
        return
    audit_engagement(
        db, engagement_id, "post_report_change", user, now,
        {"first_seq": written[0].seq, "last_seq": written[-1].seq, "records": len(written),
         "paths": [c.path for c in written[:POST_REPORT_PATHS]],
         "kinds": sorted({c.kind for c in written})},
    )


def finalize_due(db: MetadataDB, now: datetime, actor: str = DEADLINE_ACTOR) -> list[str]:
    """Finalize every engagement whose deadline has passed; the names this call finalized.

    Each is claimed in its own transaction by a conditional UPDATE: a second daemon running
    the same step at the same moment updates no row and writes nothing."""
    due = db.read(
        lambda: db.all(
            "SELECT id FROM engagements WHERE assembly_deadline IS NOT NULL AND assembly_deadline <= ?"
            " AND deadline_finalized_at IS NULL ORDER BY id",
            (ts(now),),
        )
    )
    won: list[str] = []
    for (engagement_id,) in due:
        name = db.write(functools.partial(_claim, db, int(engagement_id), now, actor))
        if name is not None:
            won.append(name)
    return won


def _claim(db: MetadataDB, engagement_id: int, now: datetime, actor: str) -> str | None:
    lock_engagement(db, engagement_id)
    row = db.one(
        "SELECT name, assembly_deadline, finalized_at, head FROM engagements WHERE id = ?"
        " AND assembly_deadline <= ? AND deadline_finalized_at IS NULL",
        (engagement_id, ts(now)),
    )
    if row is None:
        return None
    name, deadline, already = row[0], row[1], row[2]
    claimed = db.execute(
        "UPDATE engagements SET deadline_finalized_at = ?,"
        " finalized_by = CASE WHEN finalized_at IS NULL THEN ? ELSE finalized_by END,"
        " finalized_reason = CASE WHEN finalized_at IS NULL THEN ? ELSE finalized_reason END,"
        " finalized_at = CASE WHEN finalized_at IS NULL THEN ? ELSE finalized_at END"
        " WHERE id = ? AND deadline_finalized_at IS NULL",
        (ts(now), actor, f"assembly deadline {deadline[:16].replace('T', ' ')} UTC passed", ts(now),
         engagement_id),
    ).rowcount
    if claimed != 1:
        return None
    pending = [c for c in copies_of(db, engagement_id) if c.unsynced > 0 and c.abandoned_at is None]
    audit_engagement(
        db, engagement_id, "finalize", actor, now,
        {"reason": "assembly deadline passed", "deadline": deadline, "automatic": True,
         "already_finalized": already is not None, "head": int(row[3]),
         "unsynced_copies": [{"copy": c.copy_id, "user": c.user, "unsynced": c.unsynced} for c in pending]},
    )
    return str(name)


def next_deadline(db: MetadataDB) -> datetime | None:
    """The earliest deadline the timer has still to act on."""
    row = db.read(
        lambda: db.one(
            "SELECT MIN(assembly_deadline) FROM engagements WHERE assembly_deadline IS NOT NULL"
            " AND deadline_finalized_at IS NULL"
        )
    )
    return None if row is None else dt_or_none(row[0])


def deadline_info(db: MetadataDB, engagement_id: int) -> tuple[datetime | None, datetime | None, datetime | None]:
    """(report date, assembly deadline, when the timer finalized) of one engagement."""
    row = db.one(
        "SELECT report_date, assembly_deadline, deadline_finalized_at FROM engagements WHERE id = ?",
        (engagement_id,),
    )
    if row is None:
        return None, None, None
    return dt_or_none(row[0]), dt_or_none(row[1]), dt_or_none(row[2])


def deadline_warning(
    deadline: datetime | None, finalized: bool, unsynced: int, now: datetime
) -> str | None:
    """What a copy holding ``unsynced`` changes is told when the deadline is near. Pure."""
    if deadline is None or finalized or unsynced <= 0 or now >= deadline or deadline - now > WARN_BEFORE:
        return None
    hours = (deadline - now).total_seconds() / 3600
    left = f"{hours:.0f} hour(s)" if hours >= 1 else f"{max(1, round(hours * 60))} minute(s)"
    return (
        f"the assembly deadline is {deadline.strftime('%Y-%m-%d %H:%M UTC')} (in {left}): this copy"
        f" holds {unsynced} unsynced change(s); sync before then, after it the engagement is read-only"
    )
