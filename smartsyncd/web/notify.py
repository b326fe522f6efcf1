"""Long-poll waiters: wake ``GET .../changes?wait=S`` requests when an engagement's head moves.

A waiter is a Deferred registered under its engagement; ``notify`` fires every waiter whose
``since`` is below the new head, a timer fires it when its wait runs out. Either way it fires
with ``None`` and the handler re-queries the store. Waiters hold no database thread.

Registering and unregistering a waiter are O(1) (a dict keyed by the waiter); ``notify`` is
linear in the waiters of that engagement. The last head seen per engagement is remembered so a
commit that lands between a handler's "no changes" query and its ``wait`` is not missed.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class _Waiter:
    __slots__ = ("engagement_id", "since", "deferred", "timer")

    def __init__(self, engagement_id: int, since: int, deferred: Deferred[None]) -> None:
        self.engagement_id = engagement_id
        self.since = since
        self.deferred = deferred
        self.timer: Any = None  # IDelayedCall


class ChangeNotifier:
    """Per-engagement long-poll waiters driven by ``notify(engagement_id, head)``."""

    def __init__(self, clock: IReactorTime) -> None:
        # zope interface methods confuse mypy without the mypy-zope plugin
        self._call_later: Callable[..., Any] = clock.callLater  # type: ignore[misc]
        self._waiters: dict[int, dict[int, _Waiter]] = {}
        self._heads: dict[int, int] = {}
        self._ids = count()

    def wait(self, engagement_id: int, since: int, timeout: float) -> Deferred[None]:
        """Fire (with None) once the head passes ``since`` or after ``timeout`` seconds.

        Cancelling the Deferred unregisters the waiter and cancels its timer.
        """
        if timeout <= 0 or self._heads.get(engagement_id, -1) > since:
            return succeed(None)
        key = next(self._ids)

        def cancel(_: Deferred[None]) -> None:
            self._remove(engagement_id, key)

        d: Deferred[None] = Deferred(cancel)
        waiter = _Waiter(engagement_id, since, d)
        self._waiters.setdefault(engagement_id, {})[key] = waiter
        waiter.timer = self._call_later(timeout, self._expire, engagement_id, key)
        return d

    def notify(self, engagement_id: int, head: int) -> None:
        """Record that ``engagement_id`` now has ``head`` and wake every waiter behind it."""
        if head > self._heads.get(engagement_id, -1):
            self._heads[engagement_id] = head
        waiters = self._waiters.get(engagement_id)
        if not waiters:
            return
        woken = [key for key, w in waiters.items() if w.since < head]
        fire: list[Deferred[None]] = []
        for key in woken:
            waiter = waiters.pop(key)
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            fire.append(waiter.deferred)
        if not waiters:
            del self._waiters[engagement_id]
        # Fire only after the bookkeeping: a callback may register a new waiter.
        for d in fire:
            d.callback(None)

    def head(self, engagement_id: int) -> int:
        """The highest head notified for ``engagement_id`` (-1 when none yet)."""
        return self._heads.get(engagement_id, -1)

    def waiting(self, engagement_id: int) -> int:
        """How many requests wait on ``engagement_id`` (for tests and metrics)."""
        return len(self._waiters.get(engagement_id, ()))

    def _expire(self, engagement_id: int, key: int) -> None:
        waiter = self._pop(engagement_id, key)
        if waiter is not None:
            waiter.timer = None
            waiter.deferred.callback(None)

    def _remove(self, engagement_id: int, key: int) -> None:
        waiter = self._pop(engagement_id, key)
        if waiter is not None and waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _pop(self, engagement_id: int, key: int) -> _Waiter | None:
        waiters = self._waiters.get(engagement_id)
        if waiters is None:
            return None
        waiter = waiters.pop(key, None)
        if not waiters:
            del self._waiters[engagement_id]
        return waiter

