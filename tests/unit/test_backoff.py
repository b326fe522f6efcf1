"""Backoff delays (exponential, capped, full jitter) and the retry loop on a Clock."""

from __future__ import annotations

import itertools

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from smartsyncd.client.backoff import Backoff, retrying
from smartsyncd.client.errors import NetworkError, ServerRefused


def test_delays_grow_and_cap_without_jitter() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, maximum=5.0, jitter=lambda: 1.0)
    assert list(itertools.islice(backoff.delays(), 6)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_full_jitter_scales_each_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25, 1.0])
    backoff = Backoff(initial=1.0, factor=3.0, maximum=100.0, jitter=lambda: next(draws))
    assert list(itertools.islice(backoff.delays(), 4)) == [0.0, 1.5, 2.25, 27.0]


def test_delays_stay_finite_over_a_long_outage() -> None:
    delays = list(itertools.islice(Backoff(maximum=30.0, jitter=lambda: 1.0).delays(), 5000))
    assert delays[-1] == 30.0


def test_bad_parameters_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


class Flaky:
    """Fails with the given errors, then answers 'ok'; records the clock time of each call."""

    def __init__(self, clock: Clock, errors: list[Exception]) -> None:
        self.clock = clock
        self.errors = errors
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.seconds())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, NetworkError) and exc.retryable


def run(clock: Clock, flaky: Flaky, attempts: int) -> Deferred[str]:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=lambda: 1.0)
    return Deferred.fromCoroutine(
        retrying(clock, flaky, attempts=attempts, is_retryable=retryable, backoff=backoff)
    )


def test_retries_transient_errors_waiting_on_the_clock() -> None:
    clock = Clock()
    flaky = Flaky(clock, [NetworkError("down", retryable=True)] * 2)
    d = run(clock, flaky, attempts=5)
    assert not d.called
    clock.advance(0.999)
    assert len(flaky.calls) == 1  # still waiting out the first delay
    clock.advance(0.001)
    assert len(flaky.calls) == 2
    clock.advance(2.0)
    assert flaky.calls == [0.0, 1.0, 3.0]
    assert d.result == "ok"


def test_gives_up_after_attempts_with_last_error() -> None:
    clock = Clock()
    flaky = Flaky(clock, [NetworkError(f"down {i}", retryable=True) for i in range(5)])
    d = run(clock, flaky, attempts=3)
    clock.pump([1.0, 2.0, 4.0])
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, NetworkError) and str(failure.value) == "down 2"
    assert len(flaky.calls) == 3


def test_non_retryable_error_raised_at_once() -> None:
    clock = Clock()
    flaky = Flaky(clock, [ServerRefused("forbidden", "no", 403, {})])
    d = run(clock, flaky, attempts=5)
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, ServerRefused)
    assert len(flaky.calls) == 1
    assert clock.getDelayedCalls() == []


def test_cancel_while_waiting_stops_retrying() -> None:
    clock = Clock()
    flaky = Flaky(clock, [NetworkError("down", retryable=True)] * 3)
    d = run(clock, flaky, attempts=5)
    d.cancel()
    d.addErrback(lambda _: None)
    clock.advance(100)
    assert len(flaky.calls) == 1


def test_each_retry_is_announced_before_its_wait() -> None:
    """The embedder hears what failed and when the next try is, as a call and a log event."""
    from twisted.logger import globalLogPublisher

    from smartsyncd.client.backoff import RetryNotice

    clock = Clock()
    clock.advance(1000.0)
    flaky = Flaky(clock, [NetworkError("connection refused", retryable=True)] * 2)
    notices: list[RetryNotice] = []
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "smartsyncd.client.retry":
            events.append(event)

    backoff = Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=lambda: 1.0)
    globalLogPublisher.addObserver(observe)
    try:
        d = Deferred.fromCoroutine(retrying(
            clock, flaky, attempts=4, is_retryable=retryable, backoff=backoff,
            on_retry=notices.append, what="GET /v1/engagements",
        ))
        assert [n.retry_at for n in notices] == [1001.0]  # told before the first wait
        clock.pump([1.0, 2.0])
    finally:
        globalLogPublisher.removeObserver(observe)
    assert d.result == "ok"
    assert notices == [
        RetryNotice(1, 4, "connection refused", 1.0, 1001.0, "GET /v1/engagements"),
        RetryNotice(2, 4, "connection refused", 2.0, 1003.0, "GET /v1/engagements"),
    ]
    assert notices[1].describe() == (
        "GET /v1/engagements failed (connection refused); trying again in 2.0 s (try 3 of 4)"
    )
    assert notices[1].describe(at="13:05:01") == (
        "GET /v1/engagements failed (connection refused); trying again at 13:05:01 (in 2.0 s, "
        "try 3 of 4)"
    )
    assert [(e["attempt"], e["delay"], e["retry_at"]) for e in events] == [
        (1, 1.0, 1001.0), (2, 2.0, 1003.0),
    ]
    assert flaky.calls == [1000.0, 1001.0, 1003.0]
