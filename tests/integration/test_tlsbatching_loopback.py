"""The batching TLS listener over real loopback TLS connections: same bytes, same order, fewer
deliveries; close and errors (moved from tests/unit, which runs no reactor; the endpoint-string
checks stay in tests/unit/test_tlsbatching.py)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import URI

from smartsyncd.runtime.tlsbatching import (
    BatchingEndpointFactory,
    BatchingTLSFactory,
    BatchingTLSProtocol,
    batching_supported,
    batching_tls_endpoint,
)
from smartsyncd.service.tls import ensure_self_signed, tls_endpoint_string

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_tlsbatching import _Policy  # noqa: E402

pytestmark = pytest.mark.integration


RECORD = 16 * 1024  # TLS's largest record payload: the stock layer delivers at most this


class _Collector(protocol.Protocol):
    def __init__(self, expected: int, done: Deferred[tuple[bytes, int, bool]]) -> None:
        self.expected = expected
        self.done = done
        self.data = bytearray()
        self.calls = 0
        self.biggest = 0

    def connectionMade(self) -> None:
        self.transport.bufferSize = 256 * 1024  # type: ignore[union-attr]  # as upload requests do

    def dataReceived(self, data: bytes) -> None:
        self.calls += 1
        self.biggest = max(self.biggest, len(data))
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback((bytes(self.data), self.calls, self.biggest > RECORD))


class _Sender(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]  # TLS close_notify after it


async def _send_through(tmp_path: Path, payload: bytes) -> tuple[bytes, int, bool]:
    info = ensure_self_signed(
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), now=datetime.now(UTC)
    )
    listen = tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    done: Deferred[tuple[bytes, int, bool]] = Deferred()
    port = await batching_tls_endpoint(reactor, listen).listen(
        protocol.Factory.forProtocol(lambda: _Collector(len(payload), done))
    )
    try:
        assert isinstance(port.factory, BatchingTLSFactory)
        trust = Certificate.loadPEM(Path(info.cert_path).read_bytes())
        client = SSL4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, optionsForClientTLS("localhost", trustRoot=trust)
        )
        await client.connect(protocol.Factory.forProtocol(lambda: _Sender(payload)))
        return await done
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_all_bytes_arrive_in_order_in_fewer_deliveries(tmp_path: Path) -> None:
    assert batching_supported()
    payload = os.urandom(8 * 1024 * 1024 + 123)
    received, calls, joined = await _send_through(tmp_path, payload)
    assert received == payload  # and connectionLost came after the last byte
    assert joined  # some delivery carried more than one TLS record
    assert calls < len(payload) // RECORD


@pytest_twisted.ensureDeferred
async def test_small_message_and_clean_close(tmp_path: Path) -> None:
    received, calls, _ = await _send_through(tmp_path, b"hello")
    assert received == b"hello"
    assert calls == 1


@pytest_twisted.ensureDeferred
async def test_a_client_speaking_no_tls_is_dropped_and_nothing_is_delivered(tmp_path: Path) -> None:
    info = ensure_self_signed(
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), now=datetime.now(UTC)
    )
    listen = tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    done: Deferred[tuple[bytes, int, bool]] = Deferred()
    port = await batching_tls_endpoint(reactor, listen).listen(
        protocol.Factory.forProtocol(lambda: _Collector(0, done))
    )
    try:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await plain.connect(protocol.Factory.forProtocol(lambda: _Sender(b"GET / HTTP/1.1\r\n\r\n" * 100)))
        received, calls, _ = await done
        assert received == b"" and calls == 0
    finally:
        await port.stopListening()


class _StockCollector(_Collector):
    pass


@pytest_twisted.ensureDeferred
async def test_batching_client_sends_to_a_stock_server(tmp_path: Path) -> None:
    """The send side: 1 MiB application writes, cut by OpenSSL, read back in large pieces."""
    info = ensure_self_signed(
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), now=datetime.now(UTC)
    )
    listen = tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    payload = os.urandom(6 * 1024 * 1024 + 7)
    done: Deferred[tuple[bytes, int, bool]] = Deferred()
    port = await serverFromString(reactor, listen).listen(  # Twisted's own TLS listener
        protocol.Factory.forProtocol(lambda: _StockCollector(len(payload), done))
    )
    try:
        trust = Certificate.loadPEM(Path(info.cert_path).read_bytes())
        factory = BatchingEndpointFactory(reactor, _Policy(trust))
        endpoint = factory.endpointForURI(URI.fromBytes(b"https://localhost:%d/" % port.getHost().port))

        class _BigWrites(protocol.Protocol):
            def connectionMade(self) -> None:
                assert isinstance(self.transport, BatchingTLSProtocol)
                for start in range(0, len(payload), 1 << 20):
                    self.transport.write(payload[start : start + (1 << 20)])
                self.transport.loseConnection()

        await endpoint.connect(protocol.Factory.forProtocol(_BigWrites))
        received, _, _ = await done
        assert received == payload
    finally:
        await port.stopListening()
