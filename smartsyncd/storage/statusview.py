"""What the admin status page shows of the store, read in one transaction (issue 17).

``status_overview`` reads every engagement's head, live size, stored bytes, last change,
sign-off/retention/hold state and quota, with its check-outs and sync copies, in one read
transaction on the DB thread (``StatusViewStore.status_overview``, mixed into
``SqlServerStore``): one consistent picture, and one hop off the reactor instead of three per
engagement. ``limit`` bounds the engagements read (the page says when more exist). The web
side (web/statuspage.py) renders it; nothing here changes data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from smartsyncd.core.locks import Lock
from smartsyncd.storage.api import CopyRecord, EngagementStatus
from smartsyncd.storage.copies import copies_of
from smartsyncd.storage.db import MetadataDB, dt_or_none
from smartsyncd.storage.workflow import load_locks

T = TypeVar("T")


@dataclass(frozen=True)
class EngagementSummary:
    """One engagement as the status page lists it."""

    name: str
    title: str
    head: int
    files: int  # live files
    live_bytes: int  # their sizes added up
    stored_bytes: int  # pack bytes (every version, compressed)
    last_change: datetime | None  # when the head record was committed; None: empty log
    status: EngagementStatus
    quota_bytes: int | None  # the engagement's quota, when one is set
    locks: tuple[Lock, ...]  # active check-outs
    copies: tuple[CopyRecord, ...]


@dataclass(frozen=True)
class StatusOverview:
    engagements: tuple[EngagementSummary, ...]
    more: bool  # more engagements exist than were read


_ENGAGEMENT_ROWS = (
    "SELECT e.id, e.name, e.title, e.head,"
    " (SELECT COUNT(*) FROM files f WHERE f.engagement_id = e.id AND f.content IS NOT NULL),"
    " (SELECT COALESCE(SUM(f.size), 0) FROM files f WHERE f.engagement_id = e.id"
    " AND f.content IS NOT NULL),"
    " (SELECT COALESCE(SUM(p.size), 0) FROM packs p WHERE p.engagement_id = e.id),"
    " (SELECT c.committed_at FROM changes c WHERE c.engagement_id = e.id AND c.seq = e.head),"
    " (SELECT q.bytes FROM quotas q WHERE q.scope = 'engagement' AND q.principal = e.name),"
    " e.finalized_at, e.finalized_by, e.finalized_reason, e.retention_days, e.report_date,"
    " e.assembly_deadline, e.min_retention_days, e.legal_hold_reason, e.legal_hold_by,"
    " e.legal_hold_at, e.disposed_at, e.disposed_by"
    " FROM engagements e ORDER BY e.name LIMIT ?"
)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _status(name: str, r: Any) -> EngagementStatus:
    return EngagementStatus(
        name=name,
        finalized_at=dt_or_none(r[0]),
        finalized_by=r[1],
        finalized_reason=r[2],
        retention_days=_int_or_none(r[3]),
        report_date=dt_or_none(r[4]),
        assembly_deadline=dt_or_none(r[5]),
        min_retention_days=_int_or_none(r[6]),
        legal_hold=r[7],
        legal_hold_by=r[8],
        legal_hold_at=dt_or_none(r[9]),
        disposed_at=dt_or_none(r[10]),
        disposed_by=r[11],
    )


def status_overview(db: MetadataDB, limit: int, now: datetime) -> StatusOverview:
    """Up to ``limit`` engagements (by name) with their check-outs active at ``now``."""

    def tx() -> StatusOverview:
        rows = db.all(_ENGAGEMENT_ROWS, (limit + 1,))
        out = []
        for r in rows[:limit]:
            eid, name = int(r[0]), str(r[1])
            out.append(EngagementSummary(
                name=name, title=str(r[2]), head=int(r[3]), files=int(r[4]),
                live_bytes=int(r[5]), stored_bytes=int(r[6]), last_change=dt_or_none(r[7]),
                quota_bytes=_int_or_none(r[8]), status=_status(name, r[9:]),
                locks=tuple(lock for lock in load_locks(db, eid) if lock.active(now)),
                copies=tuple(copies_of(db, eid)),
            ))
        return StatusOverview(tuple(out), more=len(rows) > limit)

    return db.read(tx)


class StatusViewSource(Protocol):
    """A store that can read the status page's overview (``SqlServerStore``)."""

    async def status_overview(self, limit: int) -> StatusOverview: ...


class StatusViewStore:
    """Mixin: needs ``run_read`` (or ``run_db``) and ``_now`` from the store it is mixed into."""

    _now: Callable[[], datetime]

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def status_overview(self, limit: int) -> StatusOverview:
        return await self.run_read(status_overview, limit, self._now())
