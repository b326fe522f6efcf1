"""Check-out lock rules (core/locks.py): coverage by fold key, expiry, overlap, durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.locks import (
    Lock,
    blocking_lock,
    checkout_conflict,
    covers,
    describe,
    parse_duration,
)

T0 = datetime(2026, 3, 31, 17, 0, tzinfo=UTC)


def test_covers_the_path_and_everything_below_it_case_folded() -> None:
    assert covers("Working Papers", "working papers/B-1 Cash.xlsx")
    assert covers("WP/a.xlsx", "wp/A.XLSX")
    assert not covers("WP", "WP2/a.xlsx")  # a sibling that shares a prefix
    assert not covers("WP/a.xlsx", "WP")


def test_blocking_lock_ignores_the_holder_and_expired_locks() -> None:
    locks = [Lock("WP", "alice", T0, T0 + timedelta(hours=8))]
    assert blocking_lock(locks, "WP/a.txt", "bob", T0 + timedelta(hours=1)) == locks[0]
    assert blocking_lock(locks, "WP/a.txt", "alice", T0) is None
    assert blocking_lock(locks, "WP/a.txt", "bob", T0 + timedelta(hours=8)) is None
    assert blocking_lock(locks, "Other/a.txt", "bob", T0) is None
    forever = [Lock("WP", "alice", T0)]
    assert blocking_lock(forever, "WP/x", "bob", T0 + timedelta(days=3650)) == forever[0]


def test_checkout_conflicts_with_overlapping_locks_of_others() -> None:
    locks = [Lock("WP/a.txt", "alice", T0)]
    assert checkout_conflict(locks, "WP", "bob", T0) == locks[0]  # folder over a locked file
    assert checkout_conflict(locks, "WP/a.txt", "alice", T0) is None  # renew your own
    assert checkout_conflict(locks, "WP/b.txt", "bob", T0) is None


@pytest.mark.parametrize(
    "text, seconds",
    [("8h", 8 * 3600), ("30m", 1800), ("2d", 172800), ("1w", 604800), ("90s", 90), ("1.5", 5400)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "8x", "-1h", "0h", "400d", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_duration(text)


def test_describe_names_holder_and_times() -> None:
    text = describe(Lock("WP", "alice", T0, T0 + timedelta(hours=8)))
    assert text == "checked out by alice since 2026-03-31 17:00 UTC (until 2026-04-01 01:00 UTC)"
