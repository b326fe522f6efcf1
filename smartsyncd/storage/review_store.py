"""The async face of the conflict review queue, mixed into ``SqlServerStore``.

Listing (``storage/conflicts``) and resolving (``storage/review``) run on the DB pool like the
rest of the store. Kept apart, as ``lifecycle_store`` is, so ``sqlstore`` stays small and the
``ServerStore`` Protocol (which the memory store implements too) is unchanged: the web routes
ask ``review_of(store)``, which looks through store wrappers (the daemon's metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from smartsyncd.core.errors import NotFound
from smartsyncd.core.review import Choice, ConflictItem
from smartsyncd.storage import conflicts, review
from smartsyncd.storage.api import CommitResult, PutManifest
from smartsyncd.storage.lifecycle_store import StoreWrapper

T = TypeVar("T")


class ReviewStore:
    """Mixin: needs ``run_db``, ``run_read`` and ``_now`` from the store it is mixed into."""

    _now: Callable[[], datetime]

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def list_conflicts(
        self, engagement_id: int, user: str | None, include_resolved: bool = False
    ) -> list[ConflictItem]:
        """Open items (and resolved ones with ``include_resolved``): all (``user`` None) or
        those ``user`` wrote a side of."""
        return await self.run_db(conflicts.list_conflicts, engagement_id, user, include_resolved)

    async def resolve_conflict(
        self,
        engagement_id: int,
        item_id: int,
        choice: Choice,
        user: str,
        session: str | None,
        batch: str,
        seen: tuple[int | None, int | None],
        merged: tuple[str, int] | None = None,
        sent: PutManifest | None = None,
    ) -> tuple[ConflictItem, CommitResult]:
        return await self.run_db(
            review.resolve, engagement_id, item_id, choice, user, session, batch, seen, merged,
            sent, self._now(),
        )


def review_of(store: object) -> ReviewStore:
    """The review queue behind ``store`` (wrappers looked through), or a 404 for a store
    without one (the in-memory test store)."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    if not isinstance(store, ReviewStore):
        raise NotFound("this server keeps no conflict review queue")
    return store
