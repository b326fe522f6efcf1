"""Failed sign-ins per resolved account, counted in the database so every daemon sees them.

The key is the account a name resolves to (``sid:S-1-5-21-...`` for a directory user found by
the service account, ``local:<name>`` for a local account), so ``alice``, ``FIRM\\alice``,
``alice@firm.example`` and `` alice`` share one count. Backends offer ``throttle_key(user)``;
a name no backend resolves is keyed on its trimmed, case-folded spelling.

``limit`` failures within ``window`` seconds refuse further attempts for that account (429)
until the oldest of them leaves the window; a successful sign-in clears the count. Keep the
limit below the domain's lockout threshold and the window at least its observation window, so
guessing through smartsyncd never locks the real directory account.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smartsyncd.auth.identity import BackendUnavailable, SignInRefused
from smartsyncd.auth.ratelimit import bounded_key
from smartsyncd.core.errors import RateLimited
from smartsyncd.storage.api import ServerStore


class AccountThrottle:
    """Shared per-account failure counts (``ServerStore.login_failures``)."""

    log = Logger()

    def __init__(
        self, store: ServerStore, clock: IReactorTime, limit: int = 5, window: float = 1800.0
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self._store = store
        # zope interface methods confuse mypy without the mypy-zope plugin
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self.limit = limit
        self.window = window

    async def key_for(self, user: str, backends: Sequence[Any]) -> str:
        """The throttle key of ``user``: the first backend that resolves it, else its spelling."""
        for backend in backends:
            resolve = getattr(backend, "throttle_key", None)
            if resolve is None:
                continue
            try:
                key = await resolve(user)
            except (SignInRefused, BackendUnavailable) as e:
                self.log.debug("throttle key via {backend}: {error}", backend=backend.name, error=e)
                continue
            if key:
                return bounded_key(key)
        return bounded_key("name:" + user.strip().casefold())

    async def check(self, key: str) -> None:
        """Raise ``RateLimited`` when ``key`` has ``limit`` failures within the window."""
        now = self._seconds()
        times = await self._store.login_failures_since(key, now - self.window, self.limit)
        if len(times) >= self.limit:
            wait = times[0] + self.window - now
            raise RateLimited(
                "too many failed sign-ins; try again later", retry_after=max(1, math.ceil(wait))
            )

    async def record_failure(self, key: str) -> None:
        now = self._seconds()
        await self._store.record_login_failure(key, now, now - self.window)

    async def record_success(self, key: str) -> None:
        await self._store.clear_login_failures(key)
