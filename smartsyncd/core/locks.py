"""Check-out lock rules (pure: time comes in as an argument).

A lock covers a file or a folder of an engagement: the locked path itself and everything below
it, compared by fold key (so ``Working Papers`` and ``working papers`` are the same lock). While
an active lock is held by one user, a commit by any other user that touches a covered path is
refused (``core.errors.Locked``). A lock with ``expires_at`` stops counting at that moment; one
without lasts until its holder checks it in or an admin breaks it (a client that went offline
keeps its lock). Two users cannot hold overlapping locks (a folder and a file inside it); the
same user may take a lock again to change its expiry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.paths import fold_key

MAX_LOCK_SECONDS = 366 * 24 * 3600
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT = {"": 3600, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Lock:
    """One check-out: ``path`` (NFC) held by ``holder`` since ``since`` until ``expires_at``."""

    path: str
    holder: str
    since: datetime
    expires_at: datetime | None = None
    session: str | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def covers(self, path: str) -> bool:
        return covers(self.path, path)


def covers(lock_path: str, path: str) -> bool:
    """True when ``path`` is the locked path or lies below it (case/normalization folded)."""
    lock_key, key = fold_key(lock_path), fold_key(path)
    return key == lock_key or key.startswith(lock_key + "/")


def overlaps(a: str, b: str) -> bool:
    return covers(a, b) or covers(b, a)


def blocking_lock(locks: Iterable[Lock], path: str, user: str, now: datetime) -> Lock | None:
    """The active lock of another user that covers ``path``, if any (the commit check)."""
    for lock in locks:
        if lock.holder != user and lock.active(now) and lock.covers(path):
            return lock
    return None


def checkout_conflict(locks: Iterable[Lock], path: str, user: str, now: datetime) -> Lock | None:
    """The active lock of another user that overlaps a new lock on ``path``, if any."""
    for lock in locks:
        if lock.holder != user and lock.active(now) and overlaps(lock.path, path):
            return lock
    return None


def parse_duration(text: str) -> timedelta:
    """``8h``, ``30m``, ``2d``, ``1w``, ``90s`` (a bare number is hours) -> timedelta."""
    match = _DURATION.match(text or "")
    if not match:
        raise BadRequest(f"bad duration {text!r}: use a number with s, m, h, d or w (e.g. 8h)")
    seconds = float(match.group(1)) * _UNIT[match.group(2).lower()]
    if seconds <= 0 or seconds > MAX_LOCK_SECONDS:
        raise BadRequest(f"a lock duration must be more than 0 and at most {MAX_LOCK_SECONDS // 86400} days")
    return timedelta(seconds=seconds)


def describe(lock: Lock) -> str:
    """``checked out by alice since 2026-03-31 17:00 UTC (until ...)`` for messages."""
    text = f"checked out by {lock.holder} since {lock.since:%Y-%m-%d %H:%M} UTC"
    if lock.expires_at is not None:
        text += f" (until {lock.expires_at:%Y-%m-%d %H:%M} UTC)"
    return text
