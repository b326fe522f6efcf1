"""The async face of the engagement's life (issue 20), mixed into ``SqlServerStore``.

Report date and assembly deadline (``storage/lifecycle``): each method runs its synchronous
function on the DB pool like the rest of the store. Kept apart so ``sqlstore`` stays small and
the ``ServerStore`` Protocol (which the memory store implements too) is unchanged; callers that
need these (``smartsync-admin``, the deadline timer) ask ``lifecycle_of(store)``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage import lifecycle

T = TypeVar("T")


class LifecycleStore:
    """Mixin: needs ``run_db`` and ``_now`` from the store it is mixed into."""

    _now: Callable[[], datetime]

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def set_report_date(
        self, engagement_id: int, report_date: date | datetime, days: int, actor: str
    ) -> datetime:
        return await self.run_db(lifecycle.set_report_date, engagement_id, report_date, days, actor, self._now())

    async def finalize_due(self, now: datetime) -> list[str]:
        return await self.run_db(lifecycle.finalize_due, now)

    async def next_deadline(self) -> datetime | None:
        return await self.run_db(lifecycle.next_deadline)


def lifecycle_of(store: object) -> LifecycleStore:
    """The store's lifecycle methods, or a clear refusal for a store without them."""
    if not isinstance(store, LifecycleStore):
        raise BadRequest("this store keeps no report dates, retention or quotas")
    return store
