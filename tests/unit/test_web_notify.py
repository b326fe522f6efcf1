"""ChangeNotifier: long-poll waiters woken by notify, by their timeout, or removed on cancel."""

from __future__ import annotations

import time

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from smartsyncd.web.notify import ChangeNotifier


def fired(d) -> list:
    results: list = []
    d.addBoth(results.append)
    return results


def test_notify_wakes_waiters_behind_the_new_head_only() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    behind = fired(n.wait(1, since=4, timeout=30))
    current = fired(n.wait(1, since=5, timeout=30))
    other = fired(n.wait(2, since=0, timeout=30))
    assert n.waiting(1) == 2
    n.notify(1, 5)
    assert behind == [None]
    assert current == []
    assert other == []
    assert n.waiting(1) == 1
    assert n.waiting(2) == 1
    # the woken waiter's timer is gone; the others' remain
    assert len(clock.getDelayedCalls()) == 2


def test_timeout_fires_with_none_and_unregisters() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    result = fired(n.wait(1, since=0, timeout=10))
    clock.advance(9.9)
    assert result == []
    clock.advance(0.2)
    assert result == [None]
    assert n.waiting(1) == 0
    assert clock.getDelayedCalls() == []


def test_cancel_unregisters_and_cancels_the_timer() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    d = n.wait(7, since=0, timeout=60)
    result = fired(d)
    assert n.waiting(7) == 1
    d.cancel()
    assert n.waiting(7) == 0
    assert clock.getDelayedCalls() == []
    assert len(result) == 1 and result[0].check(CancelledError)
    # a later notify or clock movement does not touch the cancelled Deferred again
    n.notify(7, 3)
    clock.advance(100)


def test_a_head_notified_before_the_wait_fires_at_once() -> None:
    """A commit landing between the handler's empty query and its wait is not missed."""
    clock = Clock()
    n = ChangeNotifier(clock)
    n.notify(1, 8)
    assert fired(n.wait(1, since=7, timeout=30)) == [None]
    assert fired(n.wait(1, since=8, timeout=30)) == []
    # a lower head reported later (an old notification) does not move the memory back
    n.notify(1, 2)
    assert fired(n.wait(1, since=7, timeout=30)) == [None]


def test_zero_timeout_fires_at_once() -> None:
    n = ChangeNotifier(Clock())
    assert fired(n.wait(1, since=0, timeout=0)) == [None]
    assert n.waiting(1) == 0


def test_a_woken_waiter_may_register_again_inside_its_callback() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    again: list = []
    d = n.wait(1, since=0, timeout=30)
    d.addCallback(lambda _: again.append(n.wait(1, since=1, timeout=30)))
    n.notify(1, 1)
    assert len(again) == 1
    assert n.waiting(1) == 1
    assert fired(again[0]) == []


@pytest.mark.parametrize("count", [20_000])
def test_waking_many_waiters_is_linear(count: int) -> None:
    # The real reactor's timer heap: task.Clock re-sorts its list on every callLater, which is
    # itself quadratic at this size. Nothing here runs the reactor; every timer is cancelled.
    from twisted.internet import reactor

    clock = reactor
    n = ChangeNotifier(clock)
    woken = [0]

    def bump(_: object) -> None:
        woken[0] += 1

    for _ in range(count):
        n.wait(1, since=0, timeout=60).addCallback(bump)
    start = time.perf_counter()
    n.notify(1, 1)
    elapsed = time.perf_counter() - start
    assert woken[0] == count
    assert n.waiting(1) == 0
    assert not any(c.active() and c.func == n._expire for c in clock.getDelayedCalls())
    # quadratic bookkeeping would take minutes at this size; linear takes well under a second
    assert elapsed < 5.0


def test_wake_all_wakes_every_waiter_and_closing_parks_nothing() -> None:
    clock = Clock()
    notifier = ChangeNotifier(clock)
    woken: list[int] = []
    for eid in (1, 1, 2):
        notifier.watch(eid, 5, 60, lambda eid=eid: woken.append(eid))
    assert notifier.total_waiting() == 3
    notifier.closing = True
    assert notifier.wake_all() == 3
    assert sorted(woken) == [1, 1, 2] and notifier.total_waiting() == 0
    assert not clock.getDelayedCalls()  # their timers are cancelled
    assert notifier.watch(3, 0, 60, lambda: woken.append(3)) is None  # answered at once
    assert woken[-1] == 3 and notifier.total_waiting() == 0
