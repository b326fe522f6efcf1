"""The assembly-deadline timer: finalizes engagements whose deadline has passed (issue 20).

At start it runs one step at once (a deadline that passed while no daemon ran is acted on
now), then re-arms itself for the earliest stored deadline, but never sleeps longer than
``check_every`` seconds, so a deadline set or changed by ``smartsync-admin`` (another process)
is picked up. Each step is ``storage/lifecycle.finalize_due``: the claim is a conditional
UPDATE in the database, so with several daemons each engagement is finalized exactly once.
A failing step (database down) is logged and retried at the next tick; it never stops the timer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger(namespace="smartsyncd.deadlines")

DEFAULT_CHECK_SECONDS = 60.0
MIN_DELAY = 0.25  # never spin: a deadline another daemon is claiming right now is rechecked


class DeadlineSource(Protocol):
    def finalize_due(self, now: datetime) -> Awaitable[list[str]]: ...
    def next_deadline(self) -> Awaitable[datetime | None]: ...


class DeadlineTimer(Service):
    """One timer per daemon; ``clock`` is the reactor (a ``Clock`` in tests)."""

    def __init__(
        self,
        store: DeadlineSource,
        clock: IReactorTime,
        check_every: float = DEFAULT_CHECK_SECONDS,
        on_finalized: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._check_every = check_every
        self._on_finalized = on_finalized
        self._call: IDelayedCall | None = None  # the next step
        self._running: Deferred[None] | None = None
        self.finalized: list[str] = []  # names this daemon finalized (its log and tests)
        self.checks = 0
        self.setName("deadlines")

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        running, self._running = self._running, None
        return running

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        self._call = None
        self._running = Deferred.fromCoroutine(self._step())

    async def _step(self) -> None:
        delay = self._check_every
        try:
            won = await self._store.finalize_due(self._now())
            for name in won:
                log.info("engagement {name} finalized: its assembly deadline passed", name=name)
            if won:
                self.finalized.extend(won)
                if self._on_finalized is not None:
                    self._on_finalized(won)
            nxt = await self._store.next_deadline()
            if nxt is not None:
                delay = min(delay, (nxt - self._now()).total_seconds())
            if self.checks == 0:
                log.info("assembly deadline timer: first check done, next in {delay:.1f} s",
                         delay=max(MIN_DELAY, delay))
            self.checks += 1
        except Exception as e:  # noqa: BLE001 - an outage must not stop the timer
            log.warn("assembly deadline check failed, retrying: {error}", error=repr(e))
        finally:
            self._running = None
        self._schedule(max(MIN_DELAY, delay))
