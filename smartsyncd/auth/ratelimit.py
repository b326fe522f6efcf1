"""Throttle failed sign-ins per user name and per client address (in memory, clock-driven).

Keep ``per_user`` below the directory's account lockout threshold (and allow for several
daemons each keeping their own count): otherwise password guessing through smartsyncd locks
the user's domain account before smartsyncd says "too many attempts".

Memory is bounded: each key keeps at most ``limit`` timestamps, keys whose newest failure left
the window are dropped, and at most ``max_keys`` keys per table are tracked (the least recently
failed are evicted first).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from smartsyncd.core.errors import RateLimited

_MAX_KEY_CHARS = 256


def bounded_key(key: str) -> str:
    """Long keys (a megabyte "user name") are tracked by digest so memory stays bounded."""
    if len(key) <= _MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest


class _Window:
    """Recent failure times per key, keys ordered by their latest failure."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.keys: OrderedDict[str, deque[float]] = OrderedDict()

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        while self.keys:
            key, times = next(iter(self.keys.items()))
            if times and times[-1] > cutoff:
                break
            del self.keys[key]

    def record(self, key: str, now: float) -> None:
        self._expire(now)
        times = self.keys.get(key)
        if times is None:
            times = self.keys[key] = deque(maxlen=self.limit)
        else:
            self.keys.move_to_end(key)
        times.append(now)
        while len(self.keys) > self.max_keys:
            self.keys.popitem(last=False)

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` drops below the limit, or None when it is below already."""
        self._expire(now)
        times = self.keys.get(key)
        if times is None:
            return None
        cutoff = now - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if len(times) < self.limit:
            return None
        return times[-self.limit] + self.window - now

    def clear(self, key: str) -> None:
        self.keys.pop(key, None)


class LoginRateLimiter:
    """Refuses sign-in attempts after too many recent failures for a user or an address."""

    def __init__(
        self,
        clock: IReactorTime,
        per_user: int = 5,
        per_address: int = 20,
        window: float = 300.0,
        max_keys: int = 100_000,
        user_window: float | None = None,
    ) -> None:
        """``user_window`` (default ``window``) is the per-user one: the configured
        ``login_failure_window_minutes``, as ``throttle.AccountThrottle`` uses."""
        user_window = window if user_window is None else user_window
        if per_user < 1 or per_address < 1 or min(window, user_window) <= 0 or max_keys < 1:
            raise ValueError("rate limits and window must be positive")
        # zope interface methods confuse mypy without the mypy-zope plugin
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self._users = _Window(per_user, user_window, max_keys)
        self._addresses = _Window(per_address, window, max_keys)

    @staticmethod
    def _user_key(user: str) -> str:
        return bounded_key(user.casefold())

    def check(self, user: str, address: str) -> None:
        """Raise ``RateLimited`` (with ``retry_after`` seconds) if either key is over its limit."""
        now = self._seconds()
        waits = [
            w
            for w in (
                self._users.retry_after(self._user_key(user), now),
                self._addresses.retry_after(bounded_key(address), now),
            )
            if w is not None
        ]
        if waits:
            raise RateLimited(
                "too many failed sign-ins; try again later",
                retry_after=max(1, math.ceil(max(waits))),
            )

    def record_failure(self, user: str, address: str) -> None:
        now = self._seconds()
        self._users.record(self._user_key(user), now)
        self._addresses.record(bounded_key(address), now)

    def record_success(self, user: str, address: str) -> None:
        """A good sign-in clears the user's failures (the address keeps its count)."""
        self._users.clear(self._user_key(user))
