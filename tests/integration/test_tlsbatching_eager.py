"""The batching TLS protocol's eager send: real TCP on loopback, real TLS on both ends.

What OpenSSL produces goes straight to the socket when Twisted's buffer is empty; what the kernel
does not take (a partial send, EAGAIN, a dead socket) goes through Twisted's buffered write. The
TLS stream itself checks the order: a record that overtook another would fail decryption.
(Moved from tests/unit, which runs no reactor.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from smartsyncd.runtime.tlsbatching import BatchingTLSProtocol, batching_tls_endpoint
from smartsyncd.service.tls import ensure_self_signed, tls_endpoint_string

pytestmark = pytest.mark.integration

HELLO = b"hello"
REACTOR: Any = reactor


def _tr(proto: protocol.Protocol) -> Any:
    return proto.transport


class _Server(protocol.Protocol):
    def __init__(self, made: Deferred[_Server]) -> None:
        self.made = made
        self.lost: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        _tr(self).write(HELLO)  # answered once the handshake is done
        self.made.callback(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost.callback(cast(BaseException, reason.value))  # the exception: a Failure would errback

    @property
    def tls(self) -> BatchingTLSProtocol:
        assert isinstance(self.transport, BatchingTLSProtocol)
        return self.transport

    @property
    def tcp(self) -> Any:
        return self.tls.transport

    def buffered(self) -> int:
        """Bytes Twisted holds for the socket (0: everything went to the kernel)."""
        tcp = self.tcp
        return int(tcp._tempDataLen + len(tcp.dataBuffer) - tcp.offset)


class _Peer(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Deferred[BaseException] = Deferred()
        self.on_lost: Callable[[], None] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.on_lost is not None:
            self.on_lost()
        self.lost.callback(cast(BaseException, reason.value))  # the exception: a Failure would errback


async def _until(condition: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    step = 0.005
    waited = 0.0
    while not condition():
        if waited > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, step, lambda: None)
        waited += step


async def _connected(tmp_path: Path) -> tuple[Any, _Server, _Peer]:
    """A batching TLS listener, a stock Twisted TLS client, the handshake done."""
    info = ensure_self_signed(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), now=datetime.now(UTC))
    listen = tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    made: Deferred[_Server] = Deferred()
    port = await batching_tls_endpoint(reactor, listen).listen(protocol.Factory.forProtocol(lambda: _Server(made)))
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    trust = Certificate.loadPEM(Path(info.cert_path).read_bytes())
    client = SSL4ClientEndpoint(
        reactor, "127.0.0.1", port.getHost().port, optionsForClientTLS("localhost", trustRoot=trust)
    )
    peer = _Peer()
    await client.connect(protocol.Factory.forProtocol(lambda: peer))
    server = await made
    await _until(lambda: bytes(peer.data) == HELLO, "the handshake and the first bytes")
    return port, server, peer


@pytest_twisted.ensureDeferred
async def test_a_small_write_goes_to_the_socket_at_once(tmp_path: Path) -> None:
    port, server, peer = await _connected(tmp_path)
    try:
        answer = os.urandom(700)
        server.tls.write(answer)
        assert server.buffered() == 0  # the kernel took the record: nothing left for doWrite
        assert server.tcp not in REACTOR.getWriters()  # no epoll registration for it
        await _until(lambda: bytes(peer.data) == HELLO + answer, "the answer")
    finally:
        _tr(peer).loseConnection()
        await server.lost
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_partial_send_leaves_the_rest_to_twisted_in_order(tmp_path: Path) -> None:
    """A reader that stops reading: the kernel takes part, Twisted the rest; later writes queue
    behind it (no eager send while anything is buffered), and everything arrives in order."""
    port, server, peer = await _connected(tmp_path)
    try:
        server.tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        _tr(peer).pauseProducing()  # the client stops reading
        payload = os.urandom(4 * 1024 * 1024 + 11)
        first_buffered = None
        for start in range(0, len(payload), 64 * 1024):
            server.tls.write(payload[start : start + 64 * 1024])
            if first_buffered is None and server.buffered():
                first_buffered = start
        assert first_buffered is not None  # the kernel refused part of it
        assert server.buffered() > 0 and server.tcp in REACTOR.getWriters()
        _tr(peer).resumeProducing()
        await _until(lambda: len(peer.data) >= len(HELLO) + len(payload), "the payload")
        assert bytes(peer.data) == HELLO + payload
        await _until(lambda: server.buffered() == 0, "Twisted's buffer to drain")
        server.tls.write(b"after")  # the buffer is empty again: eager once more
        assert server.buffered() == 0
        await _until(lambda: bytes(peer.data).endswith(b"after"), "the last write")
    finally:
        _tr(peer).loseConnection()
        await server.lost
        await port.stopListening()


class _Kernel:
    """The connection's real socket, except that the first sends do what ``plan`` says: an
    exception to raise (EAGAIN) or how many bytes the kernel takes (a partial send)."""

    def __init__(self, real: socket.socket, plan: list[Any]) -> None:
        self.real = real
        self.plan = plan
        self.calls = 0

    def send(self, data: bytes, *flags: int) -> int:
        self.calls += 1
        if self.plan:
            step = self.plan.pop(0)
            if isinstance(step, BaseException):
                raise step
            return self.real.send(memoryview(data)[:step])
        return self.real.send(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest_twisted.ensureDeferred
async def test_eagain_and_a_short_send_fall_back_to_the_buffered_write(tmp_path: Path) -> None:
    port, server, peer = await _connected(tmp_path)
    real = server.tcp.socket
    try:
        kernel = server.tcp.socket = _Kernel(real, [BlockingIOError(11, "EAGAIN")])
        first, second, third = os.urandom(3000), os.urandom(5000), os.urandom(600)
        server.tls.write(first)  # EAGAIN: all of it to Twisted
        assert server.buffered() > 0
        server.tls.write(second)  # queued behind it: no send tried while anything is buffered
        assert kernel.calls == 1
        await _until(lambda: server.buffered() == 0, "doWrite to send the buffered records")
        kernel.plan = [100]
        calls = kernel.calls
        server.tls.write(third)  # the kernel takes 100 bytes, Twisted the rest
        assert kernel.calls == calls + 1 and kernel.plan == [] and server.buffered() > 0
        await _until(lambda: len(peer.data) >= len(HELLO) + 8600, "all three writes")
        assert bytes(peer.data) == HELLO + first + second + third
    finally:
        server.tcp.socket = real
        _tr(peer).loseConnection()
        await server.lost
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_write_to_a_connection_the_peer_reset_is_reported_as_lost(tmp_path: Path) -> None:
    port, server, peer = await _connected(tmp_path)
    try:
        buffered_after: list[int] = []

        def write_now() -> None:  # the peer's socket is closed (RST) and the server has not read yet
            server.tls.write(os.urandom(700))
            buffered_after.append(server.buffered())

        peer.on_lost = write_now
        _tr(peer).abortConnection()
        await peer.lost
        assert len(buffered_after) == 1 and buffered_after[0] > 0  # refused: handed to Twisted, not raised
        reason = await server.lost  # doWrite/doRead report the reset as a lost connection
        assert isinstance(reason, ConnectionLost)
    finally:
        await port.stopListening()


@implementer(IPushProducer)
class _BlockProducer:
    """Writes numbered 64 KiB blocks while not paused (as a download's body producer does)."""

    def __init__(self, server: _Server, blocks: int) -> None:
        self.server = server
        self.left = blocks
        self.sent: list[bytes] = []
        self.paused = False
        self.pauses = 0

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left:
            block = self.left.to_bytes(4, "big") * (16 * 1024)
            self.left -= 1
            self.sent.append(block)
            self.server.tls.write(block)
        if not self.left:
            self.server.tls.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.left = 0


@pytest_twisted.ensureDeferred
async def test_a_producer_interleaved_with_eager_and_buffered_sends(tmp_path: Path) -> None:
    port, server, peer = await _connected(tmp_path)
    try:
        server.tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        _tr(peer).pauseProducing()
        producer = _BlockProducer(server, 96)
        server.tls.registerProducer(producer, True)
        producer.resumeProducing()
        assert producer.pauses >= 1 and producer.left > 0  # the kernel filled up, Twisted paused it
        _tr(peer).resumeProducing()
        total = len(HELLO) + 96 * 64 * 1024
        await _until(lambda: len(peer.data) >= total, "every block")
        assert bytes(peer.data) == HELLO + b"".join(producer.sent)
        assert producer.left == 0
    finally:
        _tr(peer).loseConnection()
        await server.lost
        await port.stopListening()
