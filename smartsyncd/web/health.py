"""``/healthz``'s answer, shared: one store check at a time, its result kept ``ttl`` seconds.

A load balancer and monitoring may call /healthz many times a second; each check writes and
fsyncs a probe file. Callers that arrive while a check runs wait for that check; a result is
reused until ``ttl`` seconds (by the injected clock) have passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

log = Logger(namespace="smartsyncd.web")

Checks = dict[str, str]


class HealthCache:
    def __init__(self, check: Callable[[], Awaitable[Checks]], clock: IReactorTime, ttl: float = 1.0) -> None:
        self._check = check
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self._ttl = ttl
        self._result: Checks | None = None
        self._at = 0.0
        self._waiters: list[Deferred[Checks]] | None = None

    async def get(self) -> Checks:
        if self._result is not None and self._seconds() - self._at < self._ttl:
            return self._result
        if self._waiters is not None:
            waiter: Deferred[Checks] = Deferred()
            self._waiters.append(waiter)
            return await waiter
        self._waiters = []
        try:
            result = dict(await self._check())
        except Exception:
            log.failure("health check failed", level=LogLevel.warn)
            result = {"database": "error", "storage": "error"}
        self._result, self._at = result, self._seconds()
        waiters, self._waiters = self._waiters, None
        for w in waiters:
            w.callback(result)
        return result
