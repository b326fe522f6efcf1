"""Retry policy for the client: exponential backoff with full jitter, on an injected clock.

Full jitter (each delay uniform in ``[0, min(maximum, initial * factor**n))``) spreads the
reconnects of many clients after a server restart instead of having them arrive in waves.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

T = TypeVar("T")

log = Logger()


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
) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times.

    A failure that ``is_retryable`` rejects is raised at once; after the last attempt the last
    failure is raised. Waits use ``clock`` (tests pass ``twisted.internet.task.Clock``).
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
            log.info(
                "attempt {attempt} of {attempts} failed ({error}); retrying in {delay:.2f}s",
                attempt=attempt,
                attempts=attempts,
                error=str(exc),
                delay=delay,
            )
            await deferLater(clock, delay, lambda: None)
            attempt += 1
