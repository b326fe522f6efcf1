"""The filled-in TLS endpoint string listens on loopback with TLS 1.2 or later (moved from
tests/unit, which runs no reactor; certificate creation and the endpoint string itself stay in
tests/unit/test_tls.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS

from smartsyncd.service.tls import (
    ensure_self_signed,
    tls_endpoint_string,
)

pytestmark = pytest.mark.integration


class _Probe(protocol.Protocol):
    def __init__(self, done: Deferred[str]) -> None:
        self.done = done

    def connectionMade(self) -> None:
        # Writing forces the handshake; the answer does not matter.
        self.transport.write(b"x")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._finish()

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:  # a failed handshake must fail the test, not hang it
            self.done.errback(reason)

    def _finish(self) -> None:
        if not self.done.called:
            version = self.transport.getHandle().get_protocol_version_name()  # type: ignore[union-attr]
            self.done.callback(version)
            self.transport.loseConnection()  # type: ignore[union-attr]


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_filled_in_endpoint_listens_with_tls_1_2_or_later(tmp_path: Path) -> None:
    folder = tmp_path / "data:with colon"
    os.mkdir(folder)
    info = ensure_self_signed(
        str(folder / "cert.pem"), str(folder / "key.pem"), now=datetime.now(UTC)
    )
    listen = tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    port = await serverFromString(reactor, listen).listen(protocol.Factory.forProtocol(_Echo))
    try:
        trust = Certificate.loadPEM(Path(info.cert_path).read_bytes())
        done: Deferred[str] = Deferred()
        client = SSL4ClientEndpoint(
            reactor,
            "127.0.0.1",
            port.getHost().port,
            optionsForClientTLS("localhost", trustRoot=trust),
        )
        proto = await client.connect(protocol.Factory.forProtocol(lambda: _Probe(done)))
        version = await done
        assert version in ("TLSv1.2", "TLSv1.3")
        proto.transport.loseConnection()
    finally:
        await port.stopListening()
