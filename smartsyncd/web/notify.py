"""Long-poll waiters: wake ``GET .../changes?wait=S`` requests when an engagement's head moves.

A waiter is a callable registered under its engagement (``watch``); ``notify`` calls every
waiter whose ``since`` is below the new head, a timer calls it when its wait runs out. Either way
it is called once, with no argument, and the caller re-queries the store (web/longpoll.py does
that once for all the waiters one commit wakes). ``wait`` is the same as a Deferred that fires
with ``None``. Waiters hold no database thread.

Registering and unregistering a waiter are O(1) (a dict keyed by the waiter); ``notify`` is
linear in the waiters of that engagement. The last head seen per engagement is remembered so a
commit that lands between a handler's "no changes" query and its ``wait`` is not missed.

When the daemon drains (SIGTERM, service/server.py) ``wake_all`` wakes every waiter at once and
``closing`` makes later waits return at once: each long-poll is answered with what it has, on a
connection that then closes, and its client comes back later.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class _Waiter:
    __slots__ = ("since", "wake", "timer")

    def __init__(self, since: int, wake: Callable[[], object]) -> None:
        self.since = since
        self.wake = wake
        self.timer: IDelayedCall | None = None


class ChangeNotifier:
    """Per-engagement long-poll waiters driven by ``notify(engagement_id, head)``."""

    def __init__(self, clock: IReactorTime) -> None:
        self._call_later = clock.callLater
        self._waiters: dict[int, dict[int, _Waiter]] = {}
        self._heads: dict[int, int] = {}
        self._ids = count()
        self.closing = False  # draining: no new wait parks

    def wait(self, engagement_id: int, since: int, timeout: float) -> Deferred[None]:
        """Fire (with None) once the head passes ``since`` or after ``timeout`` seconds.

        Cancelling the Deferred unregisters the waiter and cancels its timer.
        """
        if timeout <= 0 or self.closing or self._heads.get(engagement_id, -1) > since:
            return succeed(None)
        keys: list[int] = []
        d: Deferred[None] = Deferred(lambda _: self.unwatch(engagement_id, keys[0]))
        key = self.watch(engagement_id, since, timeout, lambda: d.callback(None))
        assert key is not None
        keys.append(key)
        return d

    def watch(self, engagement_id: int, since: int, timeout: float, wake: Callable[[], object]) -> int | None:
        """Call ``wake()`` once, when the head passes ``since`` or after ``timeout`` seconds.

        When the head is already past ``since`` (or ``timeout <= 0``) ``wake`` is called at once
        and None is returned; otherwise the key for ``unwatch``.
        """
        if timeout <= 0 or self.closing or self._heads.get(engagement_id, -1) > since:
            wake()
            return None
        key = next(self._ids)
        waiter = _Waiter(since, wake)
        self._waiters.setdefault(engagement_id, {})[key] = waiter
        waiter.timer = self._call_later(timeout, self._expire, engagement_id, key)
        return key

    def unwatch(self, engagement_id: int, key: int) -> None:
        """Forget a waiter (its client went away); nothing happens if it was woken already."""
        self._remove(engagement_id, key)

    def notify(self, engagement_id: int, head: int) -> None:
        """Record that ``engagement_id`` now has ``head`` and wake every waiter behind it."""
        if head > self._heads.get(engagement_id, -1):
            self._heads[engagement_id] = head
        waiters = self._waiters.get(engagement_id)
        if not waiters:
            return
        if all(w.since < head for w in waiters.values()):  # the usual case: everyone
            del self._waiters[engagement_id]
            fire = list(waiters.values())
        else:
            fire = [waiters.pop(key) for key in [k for k, w in waiters.items() if w.since < head]]
            if not waiters:
                del self._waiters[engagement_id]
        for waiter in fire:
            if waiter.timer is not None:
                waiter.timer.cancel()
                waiter.timer = None
        # Wake only after the bookkeeping: a waiter may register a new one.
        for waiter in fire:
            waiter.wake()

    def head(self, engagement_id: int) -> int:
        """The highest head notified for ``engagement_id`` (-1 when none yet)."""
        return self._heads.get(engagement_id, -1)

    def waiting(self, engagement_id: int) -> int:
        """How many requests wait on ``engagement_id`` (for tests and metrics)."""
        return len(self._waiters.get(engagement_id, ()))

    def total_waiting(self) -> int:
        """How many requests wait on any engagement (metrics)."""
        return sum(len(w) for w in self._waiters.values())

    def wake_all(self) -> int:
        """Draining: wake every waiter now (as if its wait ran out); returns how many."""
        woken = 0
        for engagement_id in list(self._waiters):
            for key in list(self._waiters.get(engagement_id, ())):
                waiter = self._pop(engagement_id, key)
                if waiter is None:
                    continue
                if waiter.timer is not None and waiter.timer.active():
                    waiter.timer.cancel()
                waiter.timer = None
                woken += 1
                waiter.wake()
        return woken

    def _expire(self, engagement_id: int, key: int) -> None:
        waiter = self._pop(engagement_id, key)
        if waiter is not None:
            waiter.timer = None
            waiter.wake()

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

