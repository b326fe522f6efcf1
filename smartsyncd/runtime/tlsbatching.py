"""TLS connections that move data through Twisted's TLS layer in large pieces (both sides).

Twisted's TLS protocol (``TLSMemoryBIOProtocol``) works one TLS record at a time: it delivers
decrypted data to the application at most 16 KiB per ``dataReceived``, and encrypts outgoing
data 16 KiB per ``SSL_write``, each followed by a 32 KiB ``bio_read`` and a transport write.
A 256 MiB upload is then 16,000 trips through the Python layers on each side: about a third of
the daemon's reactor CPU (py-spy), and the same on the client's send path.

``BatchingTLSProtocol`` keeps Twisted's logic (errors, shutdown, abort, buffering during the
handshake) and changes only the granularity:

- receive: the records decrypted from one socket read are joined and delivered in one call
  (same bytes, same order; data decrypted before a TLS error or close_notify is delivered
  before the error is handled);
- send: application data goes to ``SSL_write`` in pieces of up to 256 KiB (OpenSSL cuts the
  records) and everything OpenSSL produced is written to the transport in one call.

- eager send: when the TCP transport has nothing buffered, what OpenSSL produced is handed to
  the socket's ``send`` at once; only what the kernel did not take (all of it on EAGAIN or an
  error) goes through Twisted's buffered ``write``, whose ``doWrite`` then reports errors as
  usual. Bytes already buffered are never overtaken (anything buffered: the normal path), so
  order is kept. A small answer (a woken long-poll) then costs no epoll register/unregister and
  no ``doWrite`` pass.

It overrides three methods of Twisted's TLS protocol (``_flushReceiveBIO``, ``_flushSendBIO``,
``_write``); what they rely on is listed in ``twistedcompat.TLS_BATCHING`` (the daemon refuses
to start without it, ``twistedcompat.require``). Elsewhere (the client), if a future Twisted
lacks it, the stock protocol is used; on a transport that is not Twisted's TCP connection the
eager send is not used.

- ``batching_tls_endpoint`` (daemon): an ordinary ``ssl:`` endpoint string, parsed by Twisted
  (every option it knows, e.g. ``extraCertChain``), listening with the batching protocol.
- ``BatchingEndpointFactory`` (client): an ``IAgentEndpointFactory`` for ``Agent`` that
  connects like Twisted's default (HostnameEndpoint + the HTTPS policy's connection creator)
  with the batching protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from OpenSSL.SSL import Error as TLSError
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from smartsyncd.runtime.twistedcompat import (
    TLS_BATCHING,
    missing,
    name_port_tls,
    transport_has_buffered,
)

_RECORD_READ = 2**15
_WRITE_PIECE = 2**18  # plaintext per SSL_write: 16 records
_BIO_READ = 2**19  # more than the records of one piece with their overhead
_RECORD_OVERHEAD = 64  # per record of at most 16 KiB: header, tag, padding (TLS 1.3: 22)


class BatchingTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` moving many records per Python-level step (module docstring)."""

    # The HTTP channel pauses and resumes reading through these (``requestDone`` resumes after
    # every answer: each woken long-poll); defined here, they skip ``ProtocolWrapper.__getattr__``,
    # which reached the same transport method only after a failed attribute lookup.
    def pauseProducing(self) -> None:
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport: Any = self.transport
        transport.resumeProducing()

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces and not self._aborted:
            ProtocolWrapper.dataReceived(self, pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _flushReceiveBIO(self) -> None:
        pieces: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                data = self._tlsConnection.recv(_RECORD_READ)
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(pieces)
                pieces = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except TLSError:
                failure = Failure()
                self._deliver(pieces)
                pieces = []
                self._tlsShutdownFinished(failure)
            else:
                pieces.append(data)
        self._deliver(pieces)
        # Usually nothing to send after a read (no handshake, no answer written yet): a small
        # first bio_read keeps that check to a heap allocation instead of a 512 KiB mmap.
        self._flushSendBIO(_RECORD_READ)

    def _flushSendBIO(self, expected: int = _BIO_READ) -> None:
        """Send what OpenSSL produced. ``expected``: about how much that is (``_write`` knows),
        so a small answer costs one small ``bio_read`` instead of a 512 KiB buffer and a second
        call that only raises ``WantReadError``."""
        pieces: list[bytes] = []
        size = expected
        while True:
            try:
                piece = self._tlsConnection.bio_read(size)
            except WantReadError:
                break
            pieces.append(piece)
            if len(piece) < size:
                break  # a memory BIO hands out everything it holds: it is empty now
            size = _BIO_READ
        if pieces:
            self._send_out(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _send_out(self, data: bytes) -> None:
        """Write TLS bytes to the TCP transport: straight to the socket when nothing is
        buffered before them (module docstring), the rest through Twisted's buffer."""
        transport: Any = self.transport
        if type(transport) in _EAGER_TRANSPORTS and not transport_has_buffered(transport):
            try:
                sent = transport.socket.send(data)
            except OSError:  # EAGAIN/EINTR or a dead socket: Twisted's doWrite decides
                sent = 0
            if sent >= len(data):
                return
            if sent:
                data = data[sent:]
        transport.write(data)

    def _write(self, bytes: bytes) -> None:  # noqa: A002 - Twisted's parameter name
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        sent_total = 0
        while sent_total < len(view):
            try:
                sent = self._tlsConnection.send(view[sent_total : sent_total + _WRITE_PIECE])
            except WantReadError:
                self._bufferedWrite(view[sent_total:].tobytes())
                break
            except TLSError:
                # as Twisted does: report the error to the application via connectionLost
                self._tlsShutdownFinished(Failure())
                break
            else:
                sent_total += sent
                self._flushSendBIO(sent + _RECORD_OVERHEAD * (sent // 16384 + 1))


# Twisted's TCP connections (exact types: a subclass may write differently); ``_send_out``
# reads their buffer state, and a missing attribute (another Twisted) counts as "buffered".
_EAGER_TRANSPORTS = frozenset({tcp.Server, tcp.Client})


class BatchingTLSFactory(TLSMemoryBIOFactory):
    protocol = BatchingTLSProtocol


def batching_supported() -> bool:
    """Whether this Twisted's TLS protocol has what ``BatchingTLSProtocol`` overrides/uses."""
    return not missing(TLS_BATCHING)


# -- the daemon's listening side ---------------------------------------------------------------


class _BatchingListenSSL:
    """A reactor stand-in for endpoint parsing: ``listenSSL`` wraps with the batching factory
    (and, with ``proxy_protocol``, reads a PROXY header before TLS), everything else is the real
    reactor's."""

    def __init__(self, reactor: Any, proxy_protocol: bool = False) -> None:
        self._reactor = reactor
        self._proxy_protocol = proxy_protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        tls_factory = BatchingTLSFactory if batching_supported() else TLSMemoryBIOFactory
        wrapped: Any = tls_factory(contextFactory, False, factory)
        if self._proxy_protocol:
            listening = _listen_behind_proxy(self._reactor, port, wrapped, backlog, interface)
        else:
            listening = self._reactor.listenTCP(port, wrapped, backlog, interface)
        name_port_tls(listening)
        return listening


@implementer(IStreamServerEndpoint)
class _TCPNow:
    """``listenTCP`` as an endpoint whose Deferred has fired when ``listen`` returns."""

    def __init__(self, reactor: Any, port: int, backlog: int, interface: str) -> None:
        self._args = (reactor, port, backlog, interface)

    def listen(self, factory: Any) -> Deferred[Any]:
        reactor, port, backlog, interface = self._args
        return succeed(reactor.listenTCP(port, factory, backlog, interface))


def _listen_behind_proxy(reactor: Any, port: int, tls: Any, backlog: int, interface: str) -> Any:
    """Listen with Twisted's PROXY protocol wrapper outside ``tls``: HAProxy's send-proxy(-v2)
    header comes before the TLS handshake, and the wrapper answers getPeer() with the address it
    names, so everything above (rate limits, per-address caps, the access log) sees the client."""
    listened: list[Any] = []
    inner = cast(IStreamServerEndpoint, _TCPNow(reactor, port, backlog, interface))
    proxyEndpoint(inner).listen(tls).addBoth(listened.append)
    if isinstance(listened[0], Failure):
        listened[0].raiseException()
    return listened[0]


def batching_tls_endpoint(reactor: Any, description: str, *, proxy_protocol: bool = False) -> Any:
    """``serverFromString(reactor, description)`` (an IStreamServerEndpoint), listening with
    ``BatchingTLSProtocol`` when ``description`` is an ``ssl:`` endpoint (other kinds are
    returned as Twisted parses them). ``proxy_protocol``: every connection starts with a PROXY
    protocol (v1 or v2) header naming the client; connections without one are closed."""
    if description.split(":", 1)[0] != "ssl":
        if proxy_protocol:
            raise ValueError("the PROXY protocol is supported on ssl: endpoints only")
        return serverFromString(reactor, description)
    if not batching_supported() and not proxy_protocol:
        return serverFromString(reactor, description)
    return serverFromString(_BatchingListenSSL(reactor, proxy_protocol), description)


# -- the client's connecting side ---------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    """Connect ``inner``, then speak TLS over it with the batching protocol."""

    def __init__(self, inner: Any, creator: Any) -> None:
        self._inner = inner
        self._creator = creator

    def connect(self, protocolFactory: Any) -> Any:
        wrapped = BatchingTLSFactory(self._creator, True, protocolFactory)
        return self._inner.connect(wrapped).addCallback(lambda protocol: protocol.wrappedProtocol)


@implementer(IAgentEndpointFactory)
class BatchingEndpointFactory:
    """``Agent.usingEndpointFactory`` endpoints: HTTPS with the batching protocol and the
    given ``IPolicyForHTTPS`` (certificate checks exactly as the policy decides)."""

    def __init__(
        self,
        reactor: Any,
        policy: Any,
        connect_via: Callable[[str, int], Any] | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_via = connect_via  # e.g. a CONNECT tunnel through a proxy (client/proxy.py)

    def endpointForURI(self, uri: URI) -> Any:
        host = uri.host.decode("ascii")
        endpoint: Any = (
            HostnameEndpoint(self._reactor, host, uri.port)
            if self._connect_via is None else self._connect_via(host, uri.port)
        )
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        creator = self._policy.creatorForNetloc(uri.host, uri.port)
        if not batching_supported():
            from twisted.internet.endpoints import wrapClientTLS

            return wrapClientTLS(creator, endpoint)
        return _TLSClientEndpoint(endpoint, creator)
