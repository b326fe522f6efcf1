"""The WAN relay of the benchmarks: delay, pacing by token bucket, flow control, on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from smartsyncd.testing.wanrelay import Link, LinkSettings


class Far:
    """The far end: what arrived, and when (Clock time)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.arrivals: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.arrivals.append((self.clock.seconds(), data))

    def received(self) -> bytes:
        return b"".join(data for _, data in self.arrivals)

    def by(self, t: float) -> int:
        return sum(len(data) for at, data in self.arrivals if at <= t + 1e-9)


def run_until(clock: Clock, until: float) -> None:
    """Advance to each pending call's exact time up to ``until`` (arrival times stay exact)."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= until]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, until - clock.seconds()))


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_bytes_arrive_exactly_one_latency_after_they_were_written() -> None:
    clock = Clock()
    far = Far(clock)
    link = Link(clock, far, latency=0.025, rate=None)
    clock.advance(1.0)
    link.send(b"hello")
    clock.advance(0.0249)
    assert far.arrivals == []
    clock.advance(0.0001)
    assert far.arrivals == [(pytest.approx(1.025), b"hello")]
    assert link.bytes == 5


def test_a_large_write_leaves_at_the_link_rate_not_in_one_burst() -> None:
    clock = Clock()
    far = Far(clock)
    rate, burst, packet, latency = 100_000.0, 8192, 1000, 0.1
    link = Link(clock, far, latency=latency, rate=rate, burst=burst, packet=packet,
                buffer=10**9)
    total = 100_000
    link.send(bytes(range(256)) * (total // 256) + b"x" * (total % 256))
    step = 0.005
    for i in range(1, 300):
        t = i * step
        run_until(clock, t)
        arrived = far.by(t)
        sent_for = max(0.0, t - latency)  # how long the link has been sending by t
        if t < latency - 1e-9:
            assert arrived == 0
        else:
            # the bucket: at most its depth at once, then the rate; never slower than that
            assert arrived <= burst + rate * sent_for + 1e-6
            assert arrived >= min(total, burst + rate * sent_for - packet)
    finish = latency + (total - burst) / rate
    assert far.by(finish - 0.01) < total
    assert far.by(finish + 1e-6) == total
    assert far.received() == bytes(range(256)) * (total // 256) + b"x" * (total % 256)


def test_after_an_idle_spell_only_the_bucket_depth_arrives_at_once() -> None:
    clock = Clock()
    far = Far(clock)
    link = Link(clock, far, latency=0.0, rate=10_000.0, burst=3000, packet=1000, buffer=10**9)
    link.send(b"a" * 1000)
    clock.advance(60)  # a long pause: the bucket refills, but only to its depth
    far.arrivals.clear()
    link.send(b"b" * 10_000)
    clock.advance(0)
    assert far.by(clock.seconds()) == 3000
    run_until(clock, 62)
    assert far.received() == b"b" * 10_000
    # the 7,000 bytes past the bucket took 0.7 s at 10,000 bytes/s
    assert far.arrivals[-1][0] == pytest.approx(60 + 0.7)


def test_writes_keep_their_order_whatever_their_sizes_and_times() -> None:
    clock = Clock()
    far = Far(clock)
    link = Link(clock, far, latency=0.05, rate=50_000.0, burst=2000, packet=700, buffer=10**9)
    sent = b""
    for i, size in enumerate([1, 5000, 3, 700, 701, 20_000, 9]):
        data = bytes([i + 65]) * size
        link.send(data)
        sent += data
        clock.advance(0.003 * i)
    run_until(clock, 5)
    assert far.received() == sent
    times = [at for at, _ in far.arrivals]
    assert times == sorted(times)


def test_the_sender_is_paused_past_the_buffer_and_resumed_at_half() -> None:
    clock = Clock()
    far = Far(clock)
    producer = Producer()
    link = Link(clock, far, latency=0.0, rate=10_000.0, burst=1000, packet=1000, buffer=20_000)
    link.sender = producer  # type: ignore[assignment]
    link.send(b"x" * 15_000)
    assert producer.events == []
    link.send(b"y" * 15_000)
    assert producer.events == ["pause"]
    while producer.events == ["pause"]:
        clock.advance(0.05)
    assert producer.events == ["pause", "resume"]
    # resumed once the queue had drained to half the buffer, not before
    assert link.backlog() <= 10_000 + 500
    assert link.backlog() >= 10_000 - 500 - 1000
    run_until(clock, 10)
    assert far.received() == b"x" * 15_000 + b"y" * 15_000


def test_close_runs_only_after_the_queued_bytes_were_delivered() -> None:
    clock = Clock()
    far = Far(clock)
    closed: list[float] = []
    link = Link(clock, far, latency=0.2, rate=1000.0, burst=100, packet=100, buffer=10**9)
    link.on_drained_close = lambda: closed.append(clock.seconds())
    link.send(b"z" * 500)
    link.close()
    link.send(b"late")  # written after close: dropped
    run_until(clock, 0.5)
    assert closed == []
    run_until(clock, 2)
    assert far.received() == b"z" * 500
    assert closed == [pytest.approx(far.arrivals[-1][0])]


def test_the_first_bytes_wait_for_the_tcp_handshake_round_trip() -> None:
    clock = Clock()
    far = Far(clock)
    settings = LinkSettings(rtt=0.3, rate=None)
    link = settings.link(clock, far, not_before=clock.seconds() + settings.rtt)
    link.send(b"client hello")
    clock.advance(0.449)
    assert far.arrivals == []
    clock.advance(0.001)
    assert far.received() == b"client hello"  # 1.5 round trips after the connect


def test_two_connections_on_a_shared_link_get_its_rate_together_not_twice_it() -> None:
    clock = Clock()
    settings = LinkSettings(rtt=0.0, rate=100_000.0, burst=2000, packet=1000, buffer=10**9,
                            shared=True)
    pacer = settings.pacer(clock)
    first, second = Far(clock), Far(clock)
    links = [settings.link(clock, far, pacer=pacer) for far in (first, second)]
    for link, fill in zip(links, (b"a", b"b"), strict=True):
        link.send(fill * 100_000)
    for i in range(1, 250):
        t = i * 0.01
        run_until(clock, t)
        together = first.by(t) + second.by(t)
        assert together <= 2000 + 100_000 * t + 1e-6  # one link's worth, never two
        assert together >= min(200_000, 2000 + 100_000 * t - 1000 - 1e-6)
    assert first.received() == b"a" * 100_000
    assert second.received() == b"b" * 100_000
    # 200,000 bytes at 100,000 bytes/s: 2 s, where two separate links would take 1 s
    assert max(first.arrivals[-1][0], second.arrivals[-1][0]) == pytest.approx(1.98)


def test_without_sharing_each_connection_has_a_link_of_its_own() -> None:
    clock = Clock()
    settings = LinkSettings(rtt=0.0, rate=100_000.0, burst=2000, packet=1000, buffer=10**9)
    first, second = Far(clock), Far(clock)
    for far, fill in ((first, b"a"), (second, b"b")):
        settings.link(clock, far).send(fill * 100_000)
    run_until(clock, 5)
    assert first.arrivals[-1][0] == pytest.approx(0.98)
    assert second.arrivals[-1][0] == pytest.approx(0.98)


def test_a_new_connections_handshake_does_not_hold_up_the_shared_link() -> None:
    clock = Clock()
    settings = LinkSettings(rtt=0.2, rate=10_000.0, burst=1000, packet=1000, buffer=10**9,
                            shared=True)
    pacer = settings.pacer(clock)
    old, new = Far(clock), Far(clock)
    busy = settings.link(clock, old, pacer=pacer)
    opening = settings.link(clock, new, pacer=pacer, not_before=clock.seconds() + settings.rtt)
    opening.send(b"hello")  # waits for its handshake, 0.2 s
    busy.send(b"x" * 1000)  # the link is free now: leaves at once, arrives after 0.1 s
    run_until(clock, 0.1)
    assert old.received() == b"x" * 1000
    run_until(clock, 1)
    # the hello joined the queue at 0.2 s, behind nothing: it arrived 0.1 s later
    assert new.arrivals == [(pytest.approx(0.3), b"hello")]


def test_the_relay_gives_every_connection_the_same_pacers_when_shared() -> None:
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from smartsyncd.testing.wanrelay import RelayFactory

    reactor = MemoryReactorClock()
    for shared in (True, False):
        factory = RelayFactory(reactor, ("127.0.0.1", 1), LinkSettings(rtt=0.05, rate=1e6,
                                                                       shared=shared))
        inbound = [factory.buildProtocol(None) for _ in range(2)]
        for protocol in inbound:
            protocol.makeConnection(StringTransport())
        ups = {id(protocol.up.pacer) for protocol in inbound}
        downs = {id(protocol.down.pacer) for protocol in inbound}
        assert (len(ups), len(downs)) == ((1, 1) if shared else (2, 2))
        assert ups.isdisjoint(downs)
