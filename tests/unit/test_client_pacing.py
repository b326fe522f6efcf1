"""The client's bandwidth limit on a Clock: slices leave on the pacer's schedule, downloads
pause the connection while ahead of it, and no 1 s window carries more than the budget plus
one slice (core/pacing.py, client/pacing.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock, TaskStopped
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from smartsyncd.client.pacing import SLICE_BYTES, PacedBytesProducer, paced_content
from smartsyncd.core.pacing import Pacer

RATE = 200_000  # bytes per second


def heaviest_window(events: list[tuple[float, int]], width: float = 1.0) -> int:
    """The most bytes in any window of ``width`` seconds starting at an event."""
    return max(
        sum(n for t, n in events if start <= t < start + width - 1e-9) for start, _ in events
    )


class Consumer:
    """A connection that records each write with its Clock time and can push back."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.writes: list[tuple[float, int]] = []
        self.producer: PacedBytesProducer | None = None
        self.pause_after: int | None = None

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), len(data)))
        if self.pause_after is not None and len(self.writes) == self.pause_after:
            assert self.producer is not None
            self.producer.pauseProducing()


def run(clock: Clock, until: float) -> None:
    """Fire every timer at its own time up to ``until``."""
    while clock.getDelayedCalls():
        due = min(c.getTime() for c in clock.getDelayedCalls())
        if due > until:
            break
        clock.advance(max(0.0, due - clock.seconds()))


def test_an_upload_leaves_in_slices_on_schedule() -> None:
    clock = Clock()
    body = bytes(1_000_000)
    consumer = Consumer(clock)
    producer = PacedBytesProducer(body, Pacer(RATE), clock)
    done: list[Any] = []
    producer.startProducing(consumer).addBoth(done.append)  # type: ignore[arg-type]
    run(clock, 100)
    assert done == [None]
    assert sum(n for _, n in consumer.writes) == len(body)
    assert max(n for _, n in consumer.writes) == SLICE_BYTES
    # the last slice leaves once the others are paid for, not before and not much later
    last = consumer.writes[-1][0]
    assert last == pytest.approx((len(body) - consumer.writes[-1][1]) / RATE)
    assert heaviest_window(consumer.writes) <= RATE + SLICE_BYTES
    assert clock.getDelayedCalls() == []


def test_two_uploads_share_one_budget() -> None:
    clock = Clock()
    pacer = Pacer(RATE)
    a, b = Consumer(clock), Consumer(clock)
    for consumer in (a, b):
        PacedBytesProducer(bytes(600_000), pacer, clock).startProducing(consumer)  # type: ignore[arg-type]
    run(clock, 100)
    both = sorted(a.writes + b.writes)
    assert heaviest_window(both) <= RATE + SLICE_BYTES
    assert both[-1][0] >= (1_200_000 - SLICE_BYTES) / RATE - 1e-6


def test_a_paused_connection_holds_the_due_slice_until_resumed() -> None:
    clock = Clock()
    consumer = Consumer(clock)
    producer = PacedBytesProducer(bytes(5 * SLICE_BYTES), Pacer(RATE), clock)
    consumer.producer, consumer.pause_after = producer, 2
    producer.startProducing(consumer)  # type: ignore[arg-type]
    run(clock, 100)
    assert len(consumer.writes) == 2  # its timer came and went: paused, nothing written
    clock.advance(10)
    producer.resumeProducing()
    # the slice booked long ago goes at once; the next ones are paced again from now
    assert [t for t, _ in consumer.writes][2] == clock.seconds()
    run(clock, 100)
    assert len(consumer.writes) == 5
    assert heaviest_window(consumer.writes[2:]) <= RATE + SLICE_BYTES


def test_stopping_an_upload_leaves_no_timer() -> None:
    clock = Clock()
    producer = PacedBytesProducer(bytes(4 * SLICE_BYTES), Pacer(RATE), clock)
    failed: list[Failure] = []
    producer.startProducing(Consumer(clock)).addErrback(failed.append)  # type: ignore[arg-type]
    assert clock.getDelayedCalls()
    producer.stopProducing()
    assert clock.getDelayedCalls() == []
    assert failed and failed[0].check(TaskStopped)


class Sender:
    """The far end of a download: hands the body protocol 16 KiB pieces (TLS records) while
    the connection is not paused, the way a socket read loop does."""

    def __init__(self, clock: Clock, body: bytes) -> None:
        self.clock = clock
        self.body = body
        self.pos = 0
        self.paused = False
        self.reads: list[tuple[float, int]] = []
        self.pauses = 0
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.pos < len(self.body):
            piece = self.body[self.pos : self.pos + 16384]
            self.pos += len(piece)
            self.reads.append((self.clock.seconds(), len(piece)))
            self.protocol.dataReceived(piece)
        if self.pos >= len(self.body) and self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connectionLost(Failure(ResponseDone()))

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()


def test_a_download_pauses_reading_while_ahead_of_the_budget() -> None:
    clock = Clock()
    body = bytes(range(256)) * 4000  # 1,024,000 bytes
    sender = Sender(clock, body)
    result: list[Any] = []
    paced_content(sender, Pacer(RATE), clock).addBoth(result.append)
    run(clock, 100)
    assert result == [body]
    assert sender.pauses > 10
    assert heaviest_window(sender.reads) <= RATE + 16384
    assert sender.reads[-1][0] == pytest.approx((len(body) - sender.reads[-1][1]) / RATE)
    assert clock.getDelayedCalls() == []


def test_pacer_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        Pacer(0)
