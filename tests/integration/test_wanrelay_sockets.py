"""The WAN relay of the benchmarks over real loopback sockets: every byte passes both ways and
is counted, request/answer turns are counted (moved from tests/unit, which runs no reactor; the
Clock-driven delay, pacing and flow-control tests stay in tests/unit/test_wanrelay.py)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from smartsyncd.testing.wanrelay import LinkSettings, listen_relay

pytestmark = pytest.mark.integration


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.want = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def expect(self, total: int) -> defer.Deferred[bytes]:
        """Fires with everything received once ``total`` bytes have come."""
        self.want = total
        self.done = defer.Deferred()
        self.dataReceived(b"")
        return self.done

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.want and len(self.data) >= self.want and not self.done.called:
            self.done.callback(bytes(self.data))


@pytest_twisted.ensureDeferred
async def test_the_relay_passes_every_byte_both_ways_and_counts_them() -> None:
    from twisted.internet import reactor

    server = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")  # type: ignore[attr-defined]
    relay, factory = listen_relay(reactor, server.getHost().port,
                                  LinkSettings(rtt=0.002, rate=50e6, buffer=64 * 1024))
    payload = bytes(range(256)) * 2000  # 512,000 bytes: past the buffer, so flow control acts
    collect = Collect()
    client_factory = ClientFactory.forProtocol(lambda: collect)  # type: ignore[arg-type]
    connector = reactor.connectTCP("127.0.0.1", relay.getHost().port, client_factory)  # type: ignore[attr-defined]
    try:
        await defer.succeed(None)
        while collect.transport is None:  # connected on a later reactor turn
            await _turn(reactor)
        collect.transport.write(payload)
        assert await collect.expect(len(payload)) == payload
        assert factory.counters.up == len(payload)
        assert factory.counters.down == len(payload)
        assert factory.counters.connections == 1
    finally:
        connector.disconnect()
        await relay.stopListening()
        await server.stopListening()
        factory.counters.close_all()


class Answer(Protocol):
    """Answers "ok" to each request, a request being everything up to a newline."""

    def dataReceived(self, data: bytes) -> None:
        for _ in range(data.count(b"\n")):
            self.transport.write(b"ok\n")  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_the_relay_counts_request_answer_turns() -> None:
    from twisted.internet import reactor

    server = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")  # type: ignore[attr-defined]
    relay, factory = listen_relay(reactor, server.getHost().port, LinkSettings(rtt=0.002, rate=None))
    collect = Collect()
    connector = reactor.connectTCP(  # type: ignore[attr-defined]
        "127.0.0.1", relay.getHost().port, ClientFactory.forProtocol(lambda: collect))  # type: ignore[arg-type]
    try:
        while collect.transport is None:
            await _turn(reactor)
        request = b"x" * 300_000 + b"\n"  # arrives at the relay in several reads: one turn
        for n in range(1, 4):
            collect.transport.write(request)
            assert await collect.expect(3 * n) == b"ok\n" * n
        assert factory.counters.turns == 3
        assert factory.counters.up == 3 * len(request)
        assert factory.counters.down == 9
    finally:
        connector.disconnect()
        await relay.stopListening()
        await server.stopListening()
        factory.counters.close_all()


def _turn(reactor: object) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.001, d.callback, None)  # type: ignore[attr-defined]
    return d
