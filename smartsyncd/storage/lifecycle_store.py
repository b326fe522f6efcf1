"""The async face of the engagement's life (issue 20), mixed into ``SqlServerStore``.

Report date and assembly deadline (``storage/lifecycle``), minimum retention, legal hold and
disposal (``storage/retention``), quotas (``storage/quotas``): each method runs its synchronous
function on the DB pool like the rest of the store. Kept apart so ``sqlstore`` stays small and
the ``ServerStore`` Protocol (which the memory store implements too) is unchanged; callers that
need these (``smartsync-admin``, the deadline timer) ask ``lifecycle_of(store)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage import lifecycle, quotas, readaudit, retention, rootlisting
from smartsyncd.storage.api import AuditRecord
from smartsyncd.storage.gc import drop_packs
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.rootkey import RootSigner, load_signer

T = TypeVar("T")


class LifecycleStore:
    """Mixin: needs ``run_db`` and ``_now`` from the store it is mixed into."""

    _now: Callable[[], datetime]
    # the firm-wide minimum retention in days ([lifecycle] min_retention_days), set by whoever
    # opens the store from a config (the daemon, smartsync-admin)
    firm_min_retention_days: int | None = None

    async def run_file(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def set_report_date(
        self, engagement_id: int, report_date: date | datetime, days: int, actor: str
    ) -> datetime:
        return await self.run_db(lifecycle.set_report_date, engagement_id, report_date, days, actor, self._now())

    async def finalize_due(self, now: datetime) -> list[str]:
        return await self.run_db(lifecycle.finalize_due, now)

    async def next_deadline(self) -> datetime | None:
        return await self.run_db(lifecycle.next_deadline)


    async def set_min_retention(self, engagement_id: int, days: int | None, actor: str) -> None:
        await self.run_db(retention.set_min_retention, engagement_id, days, actor, self._now())

    async def legal_hold(self, engagement_id: int, on: bool, reason: str, actor: str) -> None:
        await self.run_db(retention.legal_hold, engagement_id, on, reason, actor, self._now())

    async def dispose(self, engagement_id: int, actor: str) -> dict[str, Any]:
        """Remove the content after retention (one transaction), then the pack files."""
        now = self._now()
        record, packs = await self.run_db(
            retention.dispose, engagement_id, actor, now, self.firm_min_retention_days
        )
        # every pack of the engagement goes, also files no row named (crashed uploads)
        await self.run_file(drop_packs, engagement_id, packs, set(), float("inf"), float("inf"))
        return record


    async def set_quota(
        self, scope: quotas.Scope, principal: str, limit: int | None, actor: str
    ) -> tuple[int, int]:
        return await self.run_db(quotas.set_quota, scope, principal, limit, actor, self._now())

    async def quotas(self) -> list[tuple[str, str, int, int, int]]:
        return await self.run_db(quotas.quota_report)


    async def record_reads(self, events: Sequence[readaudit.ReadEvent]) -> int:
        return await self.run_db(readaudit.record_reads, tuple(events))


    async def global_audit_records(self) -> list[AuditRecord]:
        return await self.run_db(readaudit.global_records)


    # the content root (issue 20): the listing it is computed over, and the key that signs it
    _root_signer: RootSigner | None = None

    async def content_listing(self, engagement_id: int, seq: int | None) -> tuple[int, int, rootlisting.Listing]:
        return await self.run_read(rootlisting.listing_at, engagement_id, seq)

    async def content_listing_page(
        self, engagement_id: int, seq: int, after: str | None, limit: int
    ) -> tuple[rootlisting.Listing, bool]:
        return await self.run_read(rootlisting.listing_page, engagement_id, seq, after, limit)

    async def root_signer(self, create: bool = True) -> RootSigner | None:
        """The store's signing key (``storage/rootkey``), made on first use when ``create``."""
        if self._root_signer is None:
            self._root_signer = await self.run_file(_signer_in, create)
        return self._root_signer


def _signer_in(packs: PackStore, create: bool) -> RootSigner | None:
    return load_signer(packs.root, create)


def lifecycle_of(store: object) -> LifecycleStore:
    """The store's lifecycle methods, or a clear refusal for a store without them."""
    found = lifecycle_or_none(store)
    if found is None:
        raise BadRequest("this store keeps no report dates, retention or quotas")
    return found


@runtime_checkable
class StoreWrapper(Protocol):
    """A store that passes every call on to ``inner`` and adds something (the daemon's metrics,
    web/meteredstore.py; the admin command's fsck/gc record, storage/maintenance.py)."""

    inner: object


def lifecycle_or_none(store: object) -> LifecycleStore | None:
    """The lifecycle store behind ``store`` (wrappers looked through), or None."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    return store if isinstance(store, LifecycleStore) else None
