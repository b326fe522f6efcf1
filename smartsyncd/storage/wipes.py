"""Remote wipe of an abandoned copy (docs/workflow.md, "Remote wipe"; issue 20).

``order_wipe`` abandons the copy (if it is not already) and records the admin's order in
``copy_wipes``, audited, in one transaction. ``wipe_order`` is the look-up the web layer makes
for every request that names a copy (``Smartsync-Copy``), before its session is checked: the
abandoned copy's session has ended, and its order must still reach it. ``report_wipe`` records
the copy's report that it removed itself: authenticated by the copy's own secret, whose SHA-256
(``copies.key_hash``) the copy sent when it registered or reported, not by a session; idempotent
(a repeated report answers the first one and audits nothing more).

``WipeStore`` is the async face, mixed into ``SqlServerStore`` as ``LifecycleStore`` is;
``wipes_or_none`` finds it behind store wrappers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from smartsyncd.core.errors import BadRequest, NotFound
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.copies import abandon_in_transaction, find_copy
from smartsyncd.storage.db import MetadataDB, checked_line, dt, dt_or_none, ts
from smartsyncd.storage.lifecycle_store import StoreWrapper

T = TypeVar("T")

KEY_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 10**12


@dataclass(frozen=True)
class WipeOrder:
    """An order to wipe one copy, and its report once the copy made it."""

    engagement: str
    copy_id: str
    user: str  # whose copy it is
    ordered_by: str
    ordered_at: datetime
    reported_at: datetime | None = None
    reported_host: str | None = None
    files_removed: int | None = None


def key_hash(key: str) -> str:
    """The stored form of a copy's secret (64 hex digits in, 64 hex digits out)."""
    return hashlib.sha256(bytes.fromhex(key)).hexdigest()


_SELECT = (
    "SELECT e.name, w.copy_id, c.user_name, w.ordered_by, w.ordered_at, w.reported_at,"
    " w.reported_host, w.files_removed FROM copy_wipes w"
    " JOIN engagements e ON e.id = w.engagement_id"
    " JOIN copies c ON c.engagement_id = w.engagement_id AND c.copy_id = w.copy_id"
)


def _order(row: Sequence[Any]) -> WipeOrder:
    return WipeOrder(
        engagement=row[0], copy_id=row[1], user=row[2], ordered_by=row[3], ordered_at=dt(row[4]),
        reported_at=dt_or_none(row[5]), reported_host=row[6],
        files_removed=None if row[7] is None else int(row[7]),
    )


def order_wipe(db: MetadataDB, engagement_id: int, copy_id: str, actor: str, now: datetime) -> WipeOrder:
    """Abandon the copy (unless it already is) and order it wiped at its next contact."""

    def tx() -> WipeOrder:
        found = find_copy(db, engagement_id, copy_id)
        existing = db.one(
            "SELECT ordered_by FROM copy_wipes WHERE engagement_id = ? AND copy_id = ?", (engagement_id, copy_id)
        )
        if existing is not None:
            raise BadRequest(f"copy {copy_id} was already ordered wiped by {existing[0]}")
        if found.abandoned_at is None:
            abandon_in_transaction(db, engagement_id, found, actor, now)
        db.execute(
            "INSERT INTO copy_wipes (engagement_id, copy_id, ordered_by, ordered_at) VALUES (?, ?, ?, ?)",
            (engagement_id, copy_id, actor, ts(now)),
        )
        audit_engagement(
            db, engagement_id, "copy_wipe_order", actor, now,
            {"copy": copy_id, "user": found.user, "host": found.host, "unsynced": found.unsynced},
        )
        row = db.one(_SELECT + " WHERE w.engagement_id = ? AND w.copy_id = ?", (engagement_id, copy_id))
        return _order(row)

    return db.write(tx)


def wipe_order(db: MetadataDB, engagement: str | None, copy_id: str) -> WipeOrder | None:
    """The order for ``copy_id`` in the engagement named ``engagement`` (None: in any
    engagement, for a sign-in, which names none), or None."""
    if engagement is None:
        row = db.one(_SELECT + " WHERE w.copy_id = ? ORDER BY w.ordered_at", (copy_id,))
    else:
        row = db.one(_SELECT + " WHERE e.name = ? AND w.copy_id = ?", (engagement, copy_id))
    return None if row is None else _order(row)


def wipe_orders(db: MetadataDB, engagement_id: int) -> list[WipeOrder]:
    return [_order(r) for r in db.all(_SELECT + " WHERE w.engagement_id = ? ORDER BY w.ordered_at",
                                      (engagement_id,))]


def report_wipe(
    db: MetadataDB, engagement: str, copy_id: str, key: str, host: str, files: int, address: str | None,
    now: datetime,
) -> WipeOrder:
    """The copy says it wiped itself. Refused exactly like an unknown copy unless the order
    exists and ``key`` is the copy's secret; a repeated report changes and audits nothing."""
    checked_line(host, "host name")
    if not KEY_HEX.match(key):
        raise BadRequest("field 'key' must be 64 lowercase hex digits", field="key")
    if isinstance(files, bool) or not isinstance(files, int) or not 0 <= files <= MAX_FILES:
        raise BadRequest("field 'files' must be a whole number >= 0", field="files")

    def tx() -> WipeOrder:
        row = db.one(
            "SELECT e.id, c.key_hash, w.reported_at, c.user_name FROM copy_wipes w"
            " JOIN engagements e ON e.id = w.engagement_id"
            " JOIN copies c ON c.engagement_id = w.engagement_id AND c.copy_id = w.copy_id"
            " WHERE e.name = ? AND w.copy_id = ?",
            (engagement, copy_id),
        )
        # one answer for "no such order" and "wrong key": no hint which
        if row is None or row[1] is None or not hmac.compare_digest(str(row[1]), key_hash(key)):
            raise NotFound("no wipe order for this copy", copy=copy_id)
        engagement_id = int(row[0])
        if row[2] is None:
            db.execute(
                "UPDATE copy_wipes SET reported_at = ?, reported_host = ?, reported_address = ?, files_removed = ?"
                " WHERE engagement_id = ? AND copy_id = ?",
                (ts(now), host, address, files, engagement_id, copy_id),
            )
            audit_engagement(
                db, engagement_id, "copy_wipe_report", str(row[3]), now,
                {"copy": copy_id, "host": host, "address": address, "files_removed": files},
            )
        found = db.one(_SELECT + " WHERE w.engagement_id = ? AND w.copy_id = ?", (engagement_id, copy_id))
        return _order(found)

    return db.write(tx)


class WipeStore:
    """Mixin: needs ``run_db``, ``run_read`` and ``_now`` from the store it is mixed into."""

    _now: Callable[[], datetime]

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def order_wipe(self, engagement_id: int, copy_id: str, actor: str) -> WipeOrder:
        return await self.run_db(order_wipe, engagement_id, copy_id, actor, self._now())

    async def wipe_order(self, engagement: str | None, copy_id: str) -> WipeOrder | None:
        return await self.run_read(wipe_order, engagement, copy_id)

    async def wipe_orders(self, engagement_id: int) -> list[WipeOrder]:
        return await self.run_read(wipe_orders, engagement_id)

    async def report_wipe(
        self, engagement: str, copy_id: str, key: str, host: str, files: int, address: str | None
    ) -> WipeOrder:
        return await self.run_db(report_wipe, engagement, copy_id, key, host, files, address, self._now())


def wipes_or_none(store: object) -> WipeStore | None:
    """The wipe store behind ``store`` (wrappers looked through), or None (the memory store)."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    return store if isinstance(store, WipeStore) else None


def wipes_of(store: object) -> WipeStore:
    found = wipes_or_none(store)
    if found is None:
        raise BadRequest("this store keeps no wipe orders")
    return found


__all__ = ["WipeOrder", "WipeStore", "key_hash", "order_wipe", "report_wipe", "wipe_order", "wipes_of",
           "wipes_or_none"]
