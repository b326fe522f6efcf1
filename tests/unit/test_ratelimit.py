"""Failed sign-in throttling per user and per address, driven by a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.core.errors import RateLimited


def make(
    per_user: int = 3, per_address: int = 5, window: float = 60.0, **kw
) -> tuple[Clock, LoginRateLimiter]:
    clock = Clock()
    clock.advance(1_000_000)
    return clock, LoginRateLimiter(
        clock, per_user=per_user, per_address=per_address, window=window, **kw
    )


def test_user_limited_after_n_failures_and_reset_after_window() -> None:
    clock, limiter = make()
    for _ in range(3):
        limiter.check("alice", "10.0.0.1")
        limiter.record_failure("alice", "10.0.0.1")
        clock.advance(1)
    with pytest.raises(RateLimited) as info:
        limiter.check("alice", "10.0.0.9")  # another address: still the same user
    assert info.value.code == "rate_limited"
    # the first failure was 3 s ago; it leaves the 60 s window in 57 s
    assert info.value.details["retry_after"] == 57
    clock.advance(56)
    with pytest.raises(RateLimited):
        limiter.check("alice", "10.0.0.1")
    clock.advance(1)
    limiter.check("alice", "10.0.0.1")  # the oldest failure left the window


def test_user_key_is_case_folded() -> None:
    _clock, limiter = make()
    for name in ("Alice", "ALICE", "alice"):
        limiter.record_failure(name, "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("aLiCe", "10.0.0.2")
    limiter.check("bob", "10.0.0.2")


def test_address_limit_across_many_users() -> None:
    clock, limiter = make(per_user=100, per_address=5)
    for i in range(5):
        limiter.record_failure(f"user{i}", "203.0.113.7")
    with pytest.raises(RateLimited) as info:
        limiter.check("someone-new", "203.0.113.7")
    assert 1 <= info.value.details["retry_after"] <= 60
    limiter.check("someone-new", "203.0.113.8")
    clock.advance(60)
    limiter.check("someone-new", "203.0.113.7")


def test_success_clears_user_failures_but_not_address() -> None:
    _clock, limiter = make(per_user=3, per_address=4)
    for _ in range(3):
        limiter.record_failure("alice", "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("alice", "10.0.0.2")
    limiter.record_success("alice", "10.0.0.2")
    limiter.check("alice", "10.0.0.2")
    limiter.record_failure("bob", "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("carol", "10.0.0.1")  # address has 4 failures


def test_below_limit_is_not_limited() -> None:
    _clock, limiter = make(per_user=3)
    limiter.record_failure("alice", "a")
    limiter.record_failure("alice", "a")
    limiter.check("alice", "a")


def test_memory_is_bounded_by_key_cap_and_window() -> None:
    clock, limiter = make(per_user=2, per_address=1000, max_keys=100)
    for i in range(1000):
        limiter.record_failure(f"user{i}", f"addr{i % 7}")
    assert len(limiter._users.keys) == 100
    assert len(limiter._addresses.keys) == 7
    assert all(len(t) <= 2 for t in limiter._users.keys.values())
    # the most recent users are still tracked, the oldest were evicted
    limiter.record_failure("user999", "x")
    with pytest.raises(RateLimited):
        limiter.check("user999", "y")
    limiter.check("user0", "y")
    clock.advance(61)
    limiter.record_failure("late", "z")
    assert list(limiter._users.keys) == ["late"]
    assert list(limiter._addresses.keys) == ["z"]


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        LoginRateLimiter(Clock(), per_user=0)
    with pytest.raises(ValueError):
        LoginRateLimiter(Clock(), window=0)


def test_huge_keys_are_stored_as_digests() -> None:
    _clock, limiter = make(per_user=2)
    big = "x" * 1_000_000
    limiter.record_failure(big, big)
    limiter.record_failure(big.upper(), big)
    assert all(len(k) <= 256 for k in limiter._users.keys)
    assert all(len(k) <= 256 for k in limiter._addresses.keys)
    with pytest.raises(RateLimited):
        limiter.check(big, "elsewhere")
    limiter.check("x" * 999_999, "elsewhere")


def test_the_per_user_window_is_its_own() -> None:
    """The configured sign-in failure window applies per user; addresses keep ``window``."""
    clock, limiter = make(per_user=2, per_address=2, window=60.0, user_window=10.0)
    limiter.record_failure("alice", "10.0.0.1")
    limiter.record_failure("alice", "10.0.0.2")
    limiter.record_failure("bob", "10.0.0.3")
    limiter.record_failure("carol", "10.0.0.3")
    with pytest.raises(RateLimited):
        limiter.check("alice", "10.0.0.9")
    clock.advance(10)
    limiter.check("alice", "10.0.0.9")  # left the 10 s user window
    with pytest.raises(RateLimited):
        limiter.check("dave", "10.0.0.3")  # the address window is still 60 s
