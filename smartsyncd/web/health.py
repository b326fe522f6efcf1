"""``/healthz``'s answer, shared: one store check at a time, its result kept ``ttl`` seconds.

A load balancer and monitoring may call /healthz many times a second; each check writes and
fsyncs a probe file. Callers that arrive while a check runs wait for that check; a result is
reused until ``ttl`` seconds (by the injected clock) have passed.

``with_disk`` adds the free space of the storage folders (web/diskspace.py) to the store's
checks; ``health_answer`` turns the checks into the answer: 503 ``error`` when a part failed,
200 ``warning`` when only warnings (low space) are raised, else 200 ``ok``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

log = Logger(namespace="smartsyncd.web")

Checks = Mapping[str, object]  # part name -> "ok" / "error", or a report (disk, warnings)


def with_disk(
    check: Callable[[], Awaitable[Checks]], disk: Callable[[], Awaitable[Checks]] | None
) -> Callable[[], Awaitable[Checks]]:
    """``check``, with ``disk``'s report merged in (when there is one)."""
    if disk is None:
        return check

    async def both() -> Checks:
        checks = dict(await check())
        try:
            checks.update(await disk())
        except Exception:
            log.failure("disk space check failed", level=LogLevel.warn)
            checks["warnings"] = ["free space could not be read"]
        return checks

    return both


def health_answer(checks: Checks) -> tuple[Checks, int]:
    """The /healthz body and status for ``checks``."""
    healthy = all(v == "ok" for v in checks.values() if isinstance(v, str))
    status = "error" if not healthy else ("warning" if checks.get("warnings") else "ok")
    return {"status": status, **checks}, 200 if healthy else 503


class HealthCache:
    def __init__(self, check: Callable[[], Awaitable[Checks]], clock: IReactorTime, ttl: float = 1.0) -> None:
        self._check = check
        self._seconds = clock.seconds
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
