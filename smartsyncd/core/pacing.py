"""Pacing of bytes against a rate: the schedule behind bandwidth limits, without I/O or clocks.

A :class:`Pacer` hands out departure times. Each reservation of ``n`` bytes starts no earlier
than the moment the previous reservations have been paid for at ``rate`` bytes per second, so
slices of at most ``s`` bytes leave at most ``rate * t + s`` bytes in any window of ``t``
seconds: no burst at line rate followed by a pause. The caller passes the time (a reactor's or a
test ``Clock``'s ``seconds()``); the client's ``--bwlimit`` (client/pacing.py) and the daemon's
per-user limit (web/userpacing.py) are built on it.
"""

from __future__ import annotations

# A reservation due within this much of now goes at once: timers fire a little late or early.
TIMER_SLACK = 0.001


class Pacer:
    """Departure times for byte counts at ``rate`` bytes per second (shared by many streams)."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("rate must be a positive number of bytes per second")
        self.rate = float(rate)
        self.free_at = 0.0  # when everything reserved so far has been paid for

    def reserve(self, nbytes: int, now: float) -> float:
        """Book ``nbytes``; return when they may start (``now`` or later)."""
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.rate
        return start

    def charge(self, nbytes: int, now: float) -> float:
        """Count ``nbytes`` that already moved; return how long to hold off (0: no need)."""
        self.reserve(nbytes, now)
        wait = self.free_at - now
        return wait if wait > TIMER_SLACK else 0.0

    def due(self, start: float, now: float) -> bool:
        """Whether a reservation starting at ``start`` may go at ``now``."""
        return start <= now + TIMER_SLACK
