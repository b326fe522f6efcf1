"""TLS begun on the command's early connections before any request (issue 15,
client/warmup.py): the ClientHello leaves without a request; the first requests run on those
connections (the server sees no other) and still send what a connection's first request
sends; a certificate that does not match the pin fails the request exactly as before, and
nothing is opened when no connection was begun. Loopback, no timing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_trust_loopback import LOCAL_SANS, TLSServer, make_cert
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site

from smartsyncd.client import preconnect
from smartsyncd.client.backoff import Backoff
from smartsyncd.client.errors import TrustError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration

reactor: Any = _reactor


class _Info(Resource):
    """``GET /api/v1/info``-like answers; notes each request's User-Agent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.agents: list[bytes | None] = []

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 - Twisted's name
        self.agents.append(request.getHeader(b"user-agent"))
        request.setHeader(b"content-type", b"application/json")
        return b'{"server": "smartsyncd", "protocol": [1]}'


class _CountingSite(Site):
    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        self.connections += 1
        return super().buildProtocol(addr)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[TLSServer, _CountingSite, _Info]]:
    cert, key, fingerprint = make_cert(tmp_path, "good", LOCAL_SANS)
    info = _Info()
    site = _CountingSite(info)
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    port = pytest_twisted.blockon(endpoint.listen(site))
    yield TLSServer(port, info, fingerprint, cert), site, info  # type: ignore[arg-type]
    pytest_twisted.blockon(port.stopListening())
    preconnect.discard_all()


def _api(url: str, fingerprint: str) -> ServerAPI:
    return ServerAPI(url, reactor=reactor, policy=PinnedPolicy(fingerprint), max_attempts=2,
                     backoff=Backoff(initial=0.001))


def _begin(url: str, count: int) -> None:
    host, port = url.removeprefix("https://").split(":")
    for early in preconnect.start(host, int(port), count=count):
        early.join(10)


class _Hearing(Protocol):
    """Notes the first bytes its client sends, and answers nothing."""

    def __init__(self, first: Deferred[bytes]) -> None:
        self.first = first

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self.first.called:
            self.first.callback(data)


@pytest_twisted.ensureDeferred
async def test_the_client_hello_leaves_before_any_request() -> None:
    heard: list[Deferred[bytes]] = [Deferred(), Deferred()]
    unheard = list(heard)
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Hearing(unheard.pop(0))),
                             interface="127.0.0.1")
    url = f"https://127.0.0.1:{port.getHost().port}"
    api = _api(url, ":".join(["AB"] * 32))
    try:
        _begin(url, 2)
        opened = api.open_early()
        assert len(opened) == 2
        await gatherResults(opened)
        assert preconnect.pending("127.0.0.1", port.getHost().port) == 0
        first_bytes = await gatherResults(heard)
        # a TLS handshake record (the ClientHello) on each, and no request was made
        assert all(data[:1] == b"\x16" for data in first_bytes)
        assert api.requests == 0
    finally:
        await api.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_first_requests_run_on_the_connections_opened_early(
    server: tuple[TLSServer, _CountingSite, _Info],
) -> None:
    srv, site, info = server
    _begin(srv.url, 2)
    api = _api(srv.url, srv.fingerprint)
    try:
        await gatherResults(api.open_early())
        answers = await gatherResults([Deferred.fromCoroutine(api.info()),
                                       Deferred.fromCoroutine(api.info())])
        assert [a["server"] for a in answers] == ["smartsyncd", "smartsyncd"]
        assert site.connections == 2  # the two begun at the start, no third
        # each is a connection's first request: it says which client this is
        assert len(info.agents) == 2 and all(agent for agent in info.agents)
        await api.info()
        assert site.connections == 2 and info.agents[2] is None  # reused, as before
    finally:
        await api.close()


@pytest_twisted.ensureDeferred
async def test_a_changed_certificate_fails_as_without_the_early_start(
    server: tuple[TLSServer, _CountingSite, _Info], tmp_path: Path,
) -> None:
    srv, site, info = server
    pinned = make_cert(tmp_path, "other", LOCAL_SANS)[2]
    _begin(srv.url, 1)
    api = _api(srv.url, pinned)
    try:
        await gatherResults(api.open_early())
        with pytest.raises(TrustError, match="certificate changed") as caught:
            await api.info()
    finally:
        await api.close()
    assert caught.value.presented == srv.fingerprint
    assert caught.value.exit_code == 4
    assert info.agents == []  # no request reached the application


def test_nothing_is_opened_when_no_connection_was_begun(
    server: tuple[TLSServer, _CountingSite, _Info],
) -> None:
    srv, site, _ = server
    api = _api(srv.url, srv.fingerprint)
    assert api.open_early() == []
    assert site.connections == 0
    proxied = ServerAPI(srv.url, reactor=reactor, policy=PinnedPolicy(srv.fingerprint),
                        proxy="http://127.0.0.1:9")
    _begin(srv.url, 1)
    assert proxied.open_early() == []  # through a proxy: never over the direct connection
