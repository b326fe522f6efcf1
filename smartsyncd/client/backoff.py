"""Retry policy for the client: exponential backoff with full jitter, on an injected clock.

Full jitter (each delay uniform in ``[0, min(maximum, initial * factor**n))``) spreads the
reconnects of many clients after a server restart instead of having them arrive in waves.

Each retry is announced before the wait: a ``twisted.logger`` event in the namespace
``smartsyncd.client.retry`` (fields ``attempt``, ``attempts``, ``error``, ``delay``,
``retry_at``) and, when given, an ``on_retry`` call with a ``RetryNotice`` (the CLI prints it on
stderr; a desktop app shows it).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

T = TypeVar("T")

log = Logger(namespace="smartsyncd.client.retry")


@dataclass(frozen=True)
class RetryNotice:
    """One failed attempt that will be tried again: what failed, and when the next try is
    (``retry_at``: the clock's seconds, e.g. a Unix time with the reactor)."""

    attempt: int  # the attempt that failed (1-based)
    attempts: int  # at most this many in all
    error: str
    delay: float
    retry_at: float
    what: str = ""  # the request, e.g. "GET /v1/engagements/acme/changes"

    def describe(self, at: str | None = None) -> str:
        """``GET /v1/x failed (connection refused); trying again at 13:05:01 (in 2.0 s, try 2
        of 8)``; without ``at`` (a clock time as the caller shows it) the time is left out."""
        what = f"{self.what} " if self.what else ""
        when = f"at {at} (in {self.delay:.1f} s, " if at else f"in {self.delay:.1f} s ("
        return (f"{what}failed ({self.error}); trying again {when}try {self.attempt + 1} of "
                f"{self.attempts})")


class Backoff:
    """Delays between attempts: ``initial * factor**n`` capped at ``maximum``, times jitter()."""

    def __init__(
        self,
        initial: float = 0.5,
        factor: float = 2.0,
        maximum: float = 30.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if initial < 0 or factor < 1 or maximum < 0:
            raise ValueError("backoff needs initial >= 0, factor >= 1, maximum >= 0")
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter

    def delays(self) -> Iterator[float]:
        """An endless iterator of delays (seconds) to wait before attempt 2, 3, ..."""
        ceiling = self.initial
        while True:
            yield min(self.maximum, ceiling) * self.jitter()
            # Stop growing once capped so the float never overflows on long outages.
            if ceiling < self.maximum:
                ceiling *= self.factor


async def retrying(
    clock: IReactorTime,
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    is_retryable: Callable[[BaseException], bool],
    backoff: Backoff,
    on_retry: Callable[[RetryNotice], object] | None = None,
    what: str = "",
) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times.

    A failure that ``is_retryable`` rejects is raised at once; after the last attempt the last
    failure is raised. Waits use ``clock`` (tests pass ``twisted.internet.task.Clock``). Each
    retry is announced (log event, ``on_retry``) before its wait; ``what`` names the call.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    delays = backoff.delays()
    attempt = 1
    while True:
        try:
            return await fn()
        except Exception as exc:
            if attempt >= attempts or not is_retryable(exc):
                raise
            delay = next(delays)
            seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
            notice = RetryNotice(
                attempt=attempt, attempts=attempts, error=str(exc), delay=delay,
                retry_at=seconds() + delay, what=what,
            )
            log.info(
                "{what}attempt {attempt} of {attempts} failed ({error}); retrying in "
                "{delay:.2f}s",
                what=f"{what}: " if what else "", attempt=attempt, attempts=attempts,
                error=notice.error, delay=delay, retry_at=notice.retry_at,
            )
            if on_retry is not None:
                on_retry(notice)
            await deferLater(clock, delay, lambda: None)
            attempt += 1
