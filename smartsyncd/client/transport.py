"""The client's transport to one server: requests, retries, re-login and error mapping.

``Transport`` sends one call of docs/protocol.md and returns its ``Reply``: over treq with a
persistent connection pool and a caller-chosen TLS policy (:mod:`smartsyncd.client.trust`), or
over an injected ``http`` client (tests pass treq's ``StubTreq``). Every call is idempotent (a
commit carries its batch key), so transport failures and 502/503/504 are retried with backoff
and full jitter; after ``max_attempts`` they surface as :class:`NetworkError`. A
``session_expired`` answer signs in again once. Any other error answer becomes the typed
refusal of its code (:func:`smartsyncd.client.errors.refusal`): an error is never read as "no
changes" or "not found". ``bytes_sent``/``bytes_received`` count request and response bodies.

The typed calls on top live in :mod:`smartsyncd.client.http` (``ServerAPI``).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

from OpenSSL import SSL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorSocket,
    IStreamClientEndpoint,
)
from twisted.internet.task import TaskStopped
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import NOT_MODIFIED
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

import twisted
from smartsyncd import __version__
from smartsyncd.client import preconnect
from smartsyncd.client.backoff import Backoff, RetryNotice, retrying
from smartsyncd.client.bodyproducer import PIECE_BYTES, Body, BytesProducer, body_length, joined
from smartsyncd.client.bodyread import read_body, read_pieces
from smartsyncd.client.errors import (
    AuthError,
    NetworkError,
    ProtocolError,
    SessionExpired,
    TrustError,
    refusal,
)
from smartsyncd.client.leanagent import LeanPool
from smartsyncd.client.pacing import PacedBytesProducer, paced_content
from smartsyncd.client.proxy import ProxySetting, proxy_for, tunnels_through
from smartsyncd.client.trust import CAPolicy, PinnedPolicy
from smartsyncd.client.warmup import open_early
from smartsyncd.core import bodycodec
from smartsyncd.core.errors import SyncError
from smartsyncd.core.pacing import TIMER_SLACK, Pacer
from smartsyncd.runtime.blocking import RunBlocking
from smartsyncd.runtime.tlsbatching import BatchingEndpointFactory
from smartsyncd.runtime.twistedcompat import newclient as _newclient

if TYPE_CHECKING:
    from smartsyncd.client.reactor import ClientReactor

log = Logger()

JSON_TYPE = b"application/json"
RETRY_STATUSES = frozenset({502, 503, 504})
RESPONSE_CAP = 256 * 1024 * 1024  # a compressed JSON answer may not decompress beyond this
CHUNKS_TYPE = b"application/x-smartsync-chunks"
IN_THREAD_BYTES = 256 * 1024  # (de)compress bodies larger than this off the reactor


def user_agent() -> bytes:
    """``smartsync/0.1.0 (Linux 6.1.0-18-amd64; x86_64; Python 3.11.2; Twisted 24.3.0)``:
    which client and system a request came from, for the server's access log and support."""
    system = " ".join(p for p in (platform.system(), platform.release()) if p) or "unknown"
    parts = [system, platform.machine(), f"Python {platform.python_version()}",
             f"Twisted {twisted.__version__}"]
    text = f"smartsync/{__version__} ({'; '.join(p for p in parts if p)})"
    return text.encode("ascii", "replace")


USER_AGENT = user_agent()

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    _newclient.ResponseFailed,
    _newclient.RequestTransmissionFailed,
    _newclient.RequestNotSent,
    OSError,
)

RunInThread = RunBlocking  # (de)compression of large bodies, off the reactor
_P = ParamSpec("_P")
_T = TypeVar("_T")


class HTTPResponse(Protocol):
    """What the transport reads of an answer (treq's response)."""

    code: int
    headers: Headers

    def content(self) -> Deferred[bytes]: ...

    def deliverBody(self, protocol: IProtocol) -> None: ...  # noqa: N802 - Twisted's name


class HTTPRequester(Protocol):
    """What the transport needs of an HTTP client: treq's ``HTTPClient`` or ``StubTreq``."""

    def request(self, method: str, url: str, **kwargs: object) -> Deferred[HTTPResponse]: ...


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, body fully read."""

    status: int
    body: bytes
    content_type: str
    wire_bytes: int = -1  # body bytes as they travelled (compressed), -1: same as body
    # a chunk fetch answer as the pieces it arrived in (client/fetchanswer.py); body is b""
    pieces: list[bytes] | None = None


class Transport:
    """Requests to one smartsyncd server (``base_url`` like ``https://host:8443``).

    ``http``: the HTTP client to use (default: treq over a persistent pool with ``policy``);
    ``run_in_thread``: how (de)compression of large bodies leaves the reactor (default: the
    reactor's thread pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        reactor: ClientReactor,  # a Clock with ``http`` given
        policy: IPolicyForHTTPS,
        token: str | None = None,
        relogin: Callable[[], Awaitable[str]] | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 8,
        bwlimit: int | None = None,
        timeout: float = 120.0,
        http: HTTPRequester | None = None,
        run_in_thread: RunInThread | None = None,
        proxy: str | None = None,
    ) -> None:
        """``proxy``: ``http://[user:pass@]host:port`` or ``direct``; None: the system's
        setting (HTTPS_PROXY, the Windows/macOS proxy settings; client/proxy.py)."""
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.proxy: ProxySetting | None = proxy_for(self.base_url, proxy)
        self.token = token
        self.relogin = relogin
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.bwlimit = bwlimit
        self.timeout = timeout
        # JSON request bodies of 1 KiB and more go zstd-compressed (protocol.md, "Compressed
        # JSON bodies"); False for a server older than that
        self.compress_requests = True
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests = 0
        # the sync copy this connection speaks for (``Smartsync-Copy`` header), if any
        self.copy_id: str | None = None
        # told of each retry before its wait (what failed, when the next try is)
        self.on_retry: Callable[[RetryNotice], object] | None = None
        self._reactor = reactor
        # paces request and response bytes together as they move (client/pacing.py)
        self._pacer = Pacer(bwlimit) if bwlimit else None
        self._run_in_thread = run_in_thread
        # Cookies are kept for the life of this object: a load balancer's sticky-session
        # cookie (HAProxy's SERVERID) keeps every request on one server until it fails.
        self.cookies = IndexableCookieJar()
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            # User-Agent once per connection, one Accept-Encoding (client/leanagent.py)
            self._pool = LeanPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 4
            self._pool.retryAutomatically = False  # we retry ourselves, with backoff
            # HTTPS as Agent does it, with TLS moving data in large pieces
            # (smartsyncd/runtime/tlsbatching.py)
            self._endpoints = BatchingEndpointFactory(
                reactor, policy,
                connect_via=(tunnels_through(reactor, self.proxy)
                             if self.proxy is not None
                             else lambda host, port: PreconnectedEndpoint(reactor, host, port)),
            )
            agent = Agent.usingEndpointFactory(reactor, self._endpoints, pool=self._pool)
            http = cast(HTTPRequester, HTTPClient(agent, cookiejar=self.cookies))
        self._http: HTTPRequester = http

    def open_early(self) -> list[Deferred[None]]:
        """TLS now on the connections begun at the start for this server, if any; the first
        requests find them in the pool (client/warmup.py). Each fires once in the pool."""
        if self._pool is None or self.proxy is not None:
            return []
        return open_early(self._pool, self._endpoints, self.base_url)

    async def close(self) -> None:
        """Close pooled connections (call before stopping the reactor)."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: float | None = None,
        compress: bool = False,
        name_copy: bool | None = None,
        decode: Callable[[bytes], object] | None = None,
    ) -> object:
        """``decode``: parses the answer's bytes instead of ``json.loads`` (a manifests answer)."""
        reply = await self._request(
            method, path, body=body, params=params, auth=auth, timeout=timeout,
            compress=compress, name_copy=name_copy,
        )
        return decode_json(reply) if decode is None else decode(reply.body)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        data: Body | None = None,
        content_type: bytes | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        relogin: bool = True,
        timeout: float | None = None,
        expect: bytes = JSON_TYPE,
        compress: bool = False,
        name_copy: bool | None = None,
        if_none_match: str | None = None,
        encoding: bytes | None = None,
    ) -> Reply:
        """One call with retries; on ``session_expired`` sign in again once and repeat.
        ``compress``: the endpoint takes a zstd-encoded JSON body (commit, missing, fetch).
        ``name_copy``: send the ``Smartsync-Copy`` header (None: with signed-in calls).
        ``if_none_match``: a conditional GET; the answer may then be a bodiless 304.
        ``encoding``: the ``Content-Encoding`` of a ``data`` already encoded (a commit)."""
        copy = self.copy_id if (auth if name_copy is None else name_copy) else None
        if body is not None:
            encoded = json.dumps(body, separators=(",", ":")).encode()
            content_type = JSON_TYPE
            if compress and self.compress_requests and bodycodec.worth_compressing(encoded):
                encoded = (
                    await self._in_thread(bodycodec.compress, encoded)
                    if len(encoded) > IN_THREAD_BYTES else bodycodec.compress(encoded)
                )
                encoding = b"zstd"
            data = encoded
        relogged = False
        while True:
            try:
                return await retrying(
                    self._reactor,
                    lambda: self._attempt(
                        method, path, data,
                        self._headers(expect, auth, content_type, encoding, copy, if_none_match),
                        params, timeout, if_none_match,
                    ),
                    attempts=self.max_attempts,
                    is_retryable=lambda exc: isinstance(exc, NetworkError) and exc.retryable,
                    backoff=self.backoff,
                    on_retry=self.on_retry,
                    what=f"{method} {path}",
                )
            except SessionExpired:
                if not (auth and relogin and self.relogin is not None) or relogged:
                    raise
                relogged = True
                log.info("session expired at {url}; signing in again", url=self.base_url)
                self.token = await self.relogin()
            except NetworkError as exc:
                if exc.retryable:
                    raise NetworkError(
                        f"{exc} (gave up after {self.max_attempts} attempts)"
                    ) from exc
                raise

    def _headers(
        self, expect: bytes, auth: bool, content_type: bytes | None, encoding: bytes | None,
        copy: str | None, if_none_match: str | None,
    ) -> dict[bytes, list[bytes]]:
        """One attempt's request headers (built per attempt: a re-login changes the token)."""
        headers: dict[bytes, list[bytes]] = {
            b"Accept-Encoding": [b"zstd"], b"User-Agent": [USER_AGENT],
        }  # no Accept: each route answers one type
        if encoding is not None:
            headers[b"Content-Encoding"] = [encoding]
        if auth and self.token:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode("ascii")]
        if copy:
            headers[b"Smartsync-Copy"] = [copy.encode("ascii")]
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        if if_none_match is not None:
            headers[b"If-None-Match"] = [if_none_match.encode("ascii")]
        return headers

    async def _attempt(
        self,
        method: str,
        path: str,
        data: Body | None,
        headers: dict[bytes, list[bytes]],
        params: Mapping[str, str] | None,
        timeout: float | None,
        if_none_match: str | None = None,
    ) -> Reply:
        self.requests += 1
        exchange = Deferred.fromCoroutine(
            self._exchange(method, self.base_url + path, headers, data, params)
        )
        # Cancelling an Agent request fails it with ResponseNeverReceived, which looks like a
        # network error; the flags tell a timeout (retry) from a caller's cancel (stop).
        timed_out = False
        cancelled = False

        def cancel_by_caller(_: Deferred[Reply]) -> None:
            nonlocal cancelled
            cancelled = True
            exchange.cancel()

        waiter: Deferred[Reply] = Deferred(cancel_by_caller)

        def relay(result: Reply | Failure) -> None:
            if waiter.called:
                return  # already failed by the cancel; drop the late result
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

        exchange.addBoth(relay)

        limit = self.timeout if timeout is None else timeout
        timer: IDelayedCall

        def expire() -> None:
            nonlocal timed_out, timer
            if self._pacer is not None:
                # bytes the limit holds back are no silent server: the time counts from the
                # last slice the pacer has booked (a 24 MiB request at 100 KiB/s takes 4 min)
                now = self._reactor.seconds()
                if self._pacer.free_at + limit > now + TIMER_SLACK:
                    timer = self._reactor.callLater(self._pacer.free_at + limit - now, expire)
                    return
            timed_out = True
            exchange.cancel()

        timer = self._reactor.callLater(limit, expire)
        try:
            reply = await waiter
        except Exception as exc:
            if cancelled:
                raise CancelledError() from exc
            if timed_out:
                raise NetworkError(
                    f"{self.base_url}: no answer to {method} {path} within {limit:g}s",
                    retryable=True,
                ) from None
            if isinstance(exc, _TRANSPORT_ERRORS) or _body_stopped_by_lost_connection(exc):
                raise self._transport_error(exc) from exc
            raise
        finally:
            if timer.active():
                timer.cancel()
        received = reply.wire_bytes if reply.wire_bytes >= 0 else len(reply.body)
        self.bytes_sent += body_length(data) if data is not None else 0
        self.bytes_received += received
        if not (if_none_match is not None and reply.status == NOT_MODIFIED):
            raise_for_status(reply, self.base_url)
        return reply

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[bytes, list[bytes]],
        data: Body | None,
        params: Mapping[str, str] | None,
    ) -> Reply:
        response = await self._http.request(
            method,
            url,
            headers=Headers(headers),
            data=self._body(data),
            params=dict(params) if params else None,
            allow_redirects=False,  # a redirect must never carry the bearer token elsewhere
            reactor=self._reactor,
        )
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        encodings = response.headers.getRawHeaders(b"content-encoding")
        encoding = encodings[0] if encodings else None
        if not encoding and self._pacer is None and response.code == 200 and ctype == CHUNKS_TYPE:
            pieces = await read_pieces(response)  # cut into records as they are, not joined
            return Reply(response.code, b"", ctype.decode("latin-1"), sum(map(len, pieces)), pieces)
        body = await (
            read_body(response, self._in_thread, IN_THREAD_BYTES) if self._pacer is None
            else paced_content(response, self._pacer, self._reactor)
        )
        if encoding is None:
            return Reply(response.code, body, ctype.decode("latin-1"))
        try:
            name = encoding.decode("latin-1")
            raw = (
                await self._in_thread(bodycodec.decode, body, name, RESPONSE_CAP)
                if len(body) > IN_THREAD_BYTES else bodycodec.decode(body, name, RESPONSE_CAP)
            )
        except SyncError as exc:
            raise ProtocolError(f"server sent a body that does not decode: {exc.message}") from exc
        return Reply(response.code, raw, ctype.decode("latin-1"), len(body))

    def _body(self, data: Body | None) -> IBodyProducer | bytes | None:
        """A request body as treq takes it: paced slices under a limit, else large pieces."""
        if data is None:
            return None
        if self._pacer is not None:
            return PacedBytesProducer(data, self._pacer, self._reactor)
        return BytesProducer(data) if body_length(data) > PIECE_BYTES else joined(data)

    def _transport_error(self, exc: BaseException) -> NetworkError:
        if _is_tls_failure(exc):
            policy = self.policy
            if isinstance(policy, PinnedPolicy | CAPolicy):
                presented = policy.presented if isinstance(policy, PinnedPolicy) else None
                if presented is not None or _is_verify_failure(exc):
                    return TrustError(policy.failure_message(self.base_url), presented=presented)
            return TrustError(f"TLS handshake with {self.base_url} failed: {_describe(exc)}")
        return NetworkError(f"cannot reach {self.base_url}: {_describe(exc)}", retryable=True)

    async def _in_thread(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._run_in_thread is not None:
            return await self._run_in_thread(fn, *args, **kwargs)
        return await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), fn, *args, **kwargs
        )


@implementer(IStreamClientEndpoint)
class PreconnectedEndpoint:
    """TCP to ``host:port``: over the connection the command began while importing
    (client/preconnect.py) if there is one for it, else as ``HostnameEndpoint`` connects."""

    def __init__(self, reactor: ClientReactor, host: str, port: int) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        early = preconnect.claim(self._host, self._port)
        if early is not None and not IReactorSocket.providedBy(self._reactor):
            early.discard()  # a reactor that cannot adopt it: connect as usual
            early = None
        if early is None:
            return self._fresh().connect(protocolFactory)
        return Deferred.fromCoroutine(self._adopt(early, protocolFactory))

    def _fresh(self) -> IStreamClientEndpoint:
        return HostnameEndpoint(self._reactor, self._host, self._port)

    async def _adopt(self, early: preconnect.Preconnect, factory: IProtocolFactory) -> IProtocol:
        sock = await early.take(self._reactor)
        if sock is None:  # it failed: connect as usual, which reports its own error
            return await self._fresh().connect(factory)
        try:
            sock.setblocking(False)
            # posixbase's returns the new connection (the interface promises nothing)
            adopt: Any = cast(IReactorSocket, self._reactor).adoptStreamConnection
            adopted = adopt(sock.fileno(), sock.family, factory)
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor
        protocol = cast(IProtocol | None, getattr(adopted, "protocol", None))
        if protocol is None:
            raise net_error.ConnectError(string="the connection was refused by its protocol")
        return protocol


def raise_for_status(reply: Reply, url: str) -> None:
    if 200 <= reply.status < 300:
        return
    code, message, details = _error_fields(reply)
    if reply.status in RETRY_STATUSES:
        raise NetworkError(
            f"{url} is unavailable (HTTP {reply.status}{': ' + message if message else ''})",
            retryable=True,
        )
    if reply.status == 401:
        if code == "session_expired":
            raise SessionExpired(
                f"session at {url} expired or ended; run 'smartsync login {url}'"
            )
        raise AuthError(f"sign-in failed: {message or 'user name or password not accepted'}")
    raise refusal(
        code or f"http_{reply.status}", message or f"HTTP {reply.status}", reply.status, details
    )


def _error_fields(reply: Reply) -> tuple[str | None, str, dict[str, object]]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        return None, "", {}
    if not isinstance(data, dict):
        return None, "", {}
    code = data.get("error")
    message = data.get("message")
    details = {k: v for k, v in data.items() if k not in ("error", "message")}
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else "",
        details,
    )


def decode_json(reply: Reply) -> object:
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise ProtocolError(f"server answered HTTP {reply.status} without valid JSON") from exc


def _body_stopped_by_lost_connection(exc: BaseException) -> bool:
    """A body cut because its connection went away: the transport stops the body's producer
    before it tells the HTTP protocol, so the request fails with RequestGenerationFailed
    holding only TaskStopped, not with RequestTransmissionFailed (a race in the same loss)."""
    if not isinstance(exc, _newclient.RequestGenerationFailed):
        return False
    reasons = [r.value if isinstance(r, Failure) else r for r in exc.reasons]
    return bool(reasons) and all(isinstance(r, TaskStopped) for r in reasons)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (treq/Agent keep reasons as Failure lists)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if isinstance(item, Failure):
            item = item.value
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(getattr(item, "reasons", None) or [])
        todo.extend(x for x in (item.__cause__, item.__context__) if x is not None)


def _is_tls_failure(exc: BaseException) -> bool:
    return any(
        isinstance(e, SSL.Error) or type(e).__name__ == "VerificationError" for e in _causes(exc)
    )


def _is_verify_failure(exc: BaseException) -> bool:
    for e in _causes(exc):
        if type(e).__name__ == "VerificationError":
            return True
        if isinstance(e, SSL.Error) and "certificate verify failed" in str(e):
            return True
    return False


def _describe(exc: BaseException) -> str:
    for e in _causes(exc):
        if isinstance(e, net_error.ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, net_error.DNSLookupError):
            return "host name not found"
        if isinstance(e, net_error.TimeoutError):
            return "connection timed out"
        if isinstance(e, SSL.Error):
            return f"TLS error {e}"
    if isinstance(exc, _newclient.ResponseNeverReceived | _newclient.ResponseFailed):
        return "connection lost before the answer arrived"
    return str(exc) or type(exc).__name__
