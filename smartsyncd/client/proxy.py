"""HTTPS through a corporate proxy: the HTTP CONNECT tunnel (RFC 9110 9.3.6) under our TLS.

Client sites and some firms only let traffic out through an HTTP proxy. ``proxy_for`` picks the
proxy for a server URL the way the rest of the system does: an explicit setting first (``direct``
turns it off), else ``urllib.request.getproxies()`` (``HTTPS_PROXY``/``https_proxy`` everywhere, the
Internet Settings on Windows, System Configuration on macOS) with ``NO_PROXY``/the system's bypass
list honoured. ``ConnectTunnelEndpoint`` connects to the proxy, asks it for a tunnel to the server
and hands the raw tunnel to whatever protocol comes next: TLS to the daemon runs end to end inside
it, so the proxy sees only the host name and port, and certificate pinning works unchanged.

Credentials in the proxy URL (``http://user:password@proxy:3128``) are sent as Basic
``Proxy-Authorization`` to the proxy only, and never appear in ``repr`` or logs.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from smartsyncd.client.errors import UsageError

DEFAULT_PROXY_PORT = 1080  # as curl
MAX_PROXY_ANSWER = 16 * 1024  # a CONNECT answer's status line and headers


@dataclass(frozen=True)
class ProxySetting:
    """Where to ask for tunnels, and the Basic credentials to send there (if any)."""

    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"http://{self.host}:{self.port}"


ClientEndpoint = IStreamClientEndpoint


class ProxyRefused(ConnectError):
    """The proxy answered the CONNECT with something other than 2xx (or not HTTP at all)."""


def parse_proxy(raw: str) -> ProxySetting:
    """``http://[user:password@]host[:port]`` (a bare ``host:port`` is taken as http)."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise UsageError(
            f"proxy must look like http://HOST:PORT (a TLS connection to the proxy itself is "
            f"not supported), not {parts.scheme}://{parts.hostname or ''}"
        )
    try:
        port = parts.port or DEFAULT_PROXY_PORT
    except ValueError:
        raise UsageError("the proxy's port is not a number") from None
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
    return ProxySetting(parts.hostname, port, authorization)


def proxy_for(
    server_url: str,
    configured: str | None = None,
    *,
    system: Callable[[], Mapping[str, str]] = urllib.request.getproxies,
    bypass: Callable[[str], object] = urllib.request.proxy_bypass,
) -> ProxySetting | None:
    """The proxy to reach ``server_url`` through, or None to connect directly."""
    if configured is not None:
        if configured.strip().lower() in ("", "direct", "none"):
            return None
        return parse_proxy(configured)
    raw = system().get("https")
    if not raw:
        return None
    host = urlsplit(server_url).hostname or ""
    if bypass(host):
        return None
    return parse_proxy(raw)


class _Tunnel(Protocol):
    """Speaks CONNECT to the proxy, then relays everything to the protocol it was asked for."""

    def __init__(self, endpoint: ConnectTunnelEndpoint, factory: IProtocolFactory,
                 ready: Deferred[IProtocol]) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._ready = ready
        self._answer = b""
        self._inner: IProtocol | None = None

    @property
    def _transport(self) -> ITransport:
        transport = self.transport
        assert transport is not None  # used between connectionMade and connectionLost only
        return transport

    def connectionMade(self) -> None:
        target = f"{self._endpoint.host}:{self._endpoint.port}".encode("idna")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self._endpoint.proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self._endpoint.proxy.authorization)
        self._transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._answer += data
        end = self._answer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._answer) > MAX_PROXY_ANSWER:
                self._fail("the proxy's answer to CONNECT is too long")
            return
        status = self._answer[:end].split(b"\r\n", 1)[0]
        words = status.split(None, 2)
        if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or not words[1].startswith(b"2"):
            shown = status[:200].decode("latin-1")
            self._fail(f"the proxy {self._endpoint.proxy.describe()} refused the tunnel to "
                       f"{self._endpoint.host}:{self._endpoint.port}: {shown!r}")
            return
        rest = self._answer[end + 4:]
        self._answer = b""
        inner = self._factory.buildProtocol(self._transport.getPeer())
        if inner is None:
            self._transport.loseConnection()
            self._ready.errback(ConnectError("the connection was refused by its factory"))
            return
        self._inner = inner
        inner.makeConnection(self._transport)
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = Failure(ConnectError())) -> None:  # noqa: B008
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(ProxyRefused(
                string=f"the proxy {self._endpoint.proxy.describe()} closed the connection "
                       f"before opening the tunnel"))

    def _fail(self, why: str) -> None:
        if not self._ready.called:
            self._ready.errback(ProxyRefused(string=why))
        self._transport.loseConnection()


class _TunnelFactory(Factory):
    def __init__(self, build: Callable[[], _Tunnel]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> _Tunnel:
        return self._build()


@implementer(IStreamClientEndpoint)
class ConnectTunnelEndpoint:
    """A raw TCP stream to ``host:port`` through ``proxy`` (``via``: connects to the proxy)."""

    def __init__(self, via: ClientEndpoint, proxy: ProxySetting, host: str, port: int) -> None:
        self._via = via
        self.proxy = proxy
        self.host = host
        self.port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        tunnels: list[_Tunnel] = []

        def cancel(d: Deferred[IProtocol]) -> None:
            connecting.cancel()
            for tunnel in tunnels:
                if tunnel.transport is not None:
                    tunnel.transport.abortConnection()  # type: ignore[attr-defined]

        ready: Deferred[IProtocol] = Deferred(cancel)

        def build() -> _Tunnel:
            tunnel = _Tunnel(self, protocolFactory, ready)
            tunnels.append(tunnel)
            return tunnel

        connecting = self._via.connect(_TunnelFactory(build))

        def failed(reason: Failure) -> None:
            if not ready.called:
                ready.errback(reason)

        connecting.addErrback(failed)
        return ready


def tunnels_through(reactor: IReactorTCP, proxy: ProxySetting) -> Callable[[str, int], ClientEndpoint]:
    """For ``BatchingEndpointFactory(..., connect_via=...)``: each server connection becomes a
    tunnel through ``proxy``."""

    def connect_via(host: str, port: int) -> ClientEndpoint:
        return ConnectTunnelEndpoint(HostnameEndpoint(reactor, proxy.host, proxy.port), proxy,
                                     host, port)

    return connect_via
