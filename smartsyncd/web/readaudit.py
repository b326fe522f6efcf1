"""Read events for the audit trail, buffered (issue 20, ``storage/readaudit``).

Handlers call ``note`` (who, what, from which address and session); the buffer is written in
one transaction ``FLUSH_SECONDS`` after its first event, or at once when it holds
``FLUSH_EVENTS``, so a clone of 10,000 files costs a few transactions, not 10,000. ``flush``
at shutdown writes what is left; a crash can lose the events of the last second (documented in
docs/workflow.md). A store without read audit (the memory store of unit tests) drops them.
A failed write is logged with the number of events lost; it never fails the read itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from smartsyncd.storage.lifecycle_store import lifecycle_or_none
from smartsyncd.storage.readaudit import ReadEvent

log = Logger(namespace="smartsyncd.readaudit")

FLUSH_SECONDS = 1.0
FLUSH_EVENTS = 500


class ReadAudit:
    def __init__(self, store: object, call_later: Callable[[float, Callable[[], None]], IDelayedCall], now: Callable[[], datetime]) -> None:
        self._store = lifecycle_or_none(store)  # the metrics wrapper is looked through
        self._call_later = call_later
        self._now = now
        self._pending: list[ReadEvent] = []
        self._timer: IDelayedCall | None = None

    def note(
        self, engagement_id: int, event: str, user: str, session: str | None, address: str | None,
        **detail: object,
    ) -> None:
        if self._store is None:
            return
        detail.update(session=session, address=address)
        self._pending.append(ReadEvent(engagement_id, event, user, self._now(), detail))
        if len(self._pending) >= FLUSH_EVENTS:
            self._start_flush()
        elif self._timer is None:
            self._timer = self._call_later(FLUSH_SECONDS, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._pending:
            Deferred.fromCoroutine(self.flush())

    async def flush(self) -> None:
        """Write what is buffered (also at shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self._pending = self._pending, []
        if not batch or self._store is None:
            return
        try:
            await self._store.record_reads(batch)
        except Exception as e:  # noqa: BLE001 - a read already answered must not fail now
            log.error("{n} read audit event(s) could not be recorded: {error}", n=len(batch), error=repr(e))
