"""The batching TLS endpoints without a connection: other endpoint kinds pass through, client
endpoints refuse other schemes (the listener over real TLS:
tests/integration/test_tlsbatching_loopback.py and test_tlsbatching_eager.py)."""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported

from smartsyncd.runtime.tlsbatching import (
    BatchingEndpointFactory,
    batching_tls_endpoint,
)


def test_other_endpoint_kinds_pass_through() -> None:
    endpoint = batching_tls_endpoint(reactor, "tcp:0:interface=127.0.0.1")
    assert isinstance(endpoint, TCP4ServerEndpoint)


class _Policy:
    def __init__(self, trust: Certificate) -> None:
        self.trust = trust

    def creatorForNetloc(self, hostname: bytes, port: int) -> object:
        return optionsForClientTLS(hostname.decode(), trustRoot=self.trust)


def test_client_endpoints_refuse_other_schemes() -> None:
    factory = BatchingEndpointFactory(reactor, _Policy(None))  # type: ignore[arg-type]
    with pytest.raises(SchemeNotSupported):
        factory.endpointForURI(URI.fromBytes(b"ftp://localhost:21/"))
