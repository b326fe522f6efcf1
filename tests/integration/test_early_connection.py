"""The command's early TCP connection (issue 15) as the reactor's connections use it: the
first connection to that server runs over it (the server sees one connection, not two), one
still opening is waited for without blocking, a failed attempt falls back to an ordinary
connection, and one never used is closed without a ResourceWarning. Loopback, no timing."""

from __future__ import annotations

import gc
import socket
import threading
import warnings
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from smartsyncd.client import preconnect
from smartsyncd.client.transport import PreconnectedEndpoint

reactor: Any = _reactor


class _Counting(Factory):
    """A server counting its connections and their ends; sends ``hello`` on each."""

    def __init__(self) -> None:
        self.made = 0
        self.lost: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802 - Twisted's name
        factory = self

        class Conn(Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                factory.made += 1
                self.transport.write(b"hello")

            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                if not factory.lost.called:
                    factory.lost.callback(None)

        return Conn()


class _Receiving(Protocol):
    def __init__(self) -> None:
        self.got: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self.got.called:
            self.got.callback(data)


def _client_factory() -> Factory:
    return Factory.forProtocol(_Receiving)


@pytest_twisted.ensureDeferred
async def test_the_first_connection_runs_over_the_early_one() -> None:
    server = _Counting()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        number = port.getHost().port
        early, = preconnect.start("127.0.0.1", number)
        early.join(10)
        protocol = await PreconnectedEndpoint(reactor, "127.0.0.1", number).connect(
            _client_factory())
        assert isinstance(protocol, _Receiving)
        assert await protocol.got == b"hello"
        second = await PreconnectedEndpoint(reactor, "127.0.0.1", number).connect(
            _client_factory())
        assert await second.got == b"hello"
        assert server.made == 2  # the early one, then a fresh one: never a third
        assert preconnect.claim("127.0.0.1", number) is None
        protocol.transport.loseConnection()
        second.transport.loseConnection()
        await server.lost
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connection_still_opening_is_waited_for_without_blocking() -> None:
    server = _Counting()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    go = threading.Event()

    def slow_connect(address: tuple[str, int], timeout: float) -> socket.socket:
        go.wait(10)
        return socket.create_connection(address, timeout)

    try:
        number = port.getHost().port
        early, = preconnect.start("127.0.0.1", number, connect=slow_connect)
        connecting = PreconnectedEndpoint(reactor, "127.0.0.1", number).connect(
            _client_factory())
        assert not connecting.called and server.made == 0
        go.set()  # the reactor kept running: the attempt ends, the connection is handed over
        protocol = await connecting
        assert await protocol.got == b"hello" and server.made == 1
        early.join(10)
        protocol.transport.loseConnection()
        await server.lost
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_failed_attempt_falls_back_to_an_ordinary_connection() -> None:
    server = _Counting()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")

    def refused(address: tuple[str, int], timeout: float) -> socket.socket:
        raise ConnectionRefusedError("refused")

    try:
        number = port.getHost().port
        preconnect.start("127.0.0.1", number, connect=refused)[0].join(10)
        protocol = await PreconnectedEndpoint(reactor, "127.0.0.1", number).connect(
            _client_factory())
        assert await protocol.got == b"hello" and server.made == 1
        protocol.transport.loseConnection()
        await server.lost
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_unused_early_connection_is_closed_without_warnings() -> None:
    server = _Counting()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        number = port.getHost().port
        gc.collect()  # sockets earlier tests left to the collector are not this test's subject
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            early, = preconnect.start("127.0.0.1", number)
            early.join(10)
            preconnect.discard_all()  # the command failed before it needed the server
            await server.lost  # the server saw the connection end
            assert preconnect.claim("127.0.0.1", number) is None
            gc.collect()
    finally:
        await port.stopListening()




@pytest_twisted.ensureDeferred
async def test_a_clones_two_first_connections_both_run_over_early_ones() -> None:
    server = _Counting()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        number = port.getHost().port
        for early in preconnect.start("127.0.0.1", number, count=2):
            early.join(10)
        endpoint = PreconnectedEndpoint(reactor, "127.0.0.1", number)
        first = await endpoint.connect(_client_factory())
        second = await endpoint.connect(_client_factory())
        assert await first.got == b"hello" and await second.got == b"hello"
        assert server.made == 2 and preconnect.claim("127.0.0.1", number) is None
        first.transport.loseConnection()
        second.transport.loseConnection()
        await server.lost
    finally:
        await port.stopListening()
