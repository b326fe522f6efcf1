"""A branch daemon's HTTPS link to the central server (docs/branch-offices.md).

``CentralLink.request`` sends one request to central over a persistent connection pool and
returns the status, headers and body of the answer (answers to forwarded writes are small
JSON); a connection that cannot be made, breaks, or gives no answer within ``timeout`` seconds
raises ``CentralUnreachable`` and marks the link down until a request or ``probe`` (a
``GET /healthz`` the branch sends every few seconds) gets through again. The trust policy is
built by the service from ``[branch]`` (a pinned fingerprint or a CA file, as the client pins).

``BodyPipe`` is the ``IBodyProducer`` that streams a request body from the branch's client to
central as it arrives: the central connection's flow control pauses the client's socket
(``pause``/``resume``), so a 32 MiB chunk upload is never held whole in the branch's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.web.client import (
    UNKNOWN_LENGTH,
    Agent,
    HTTPConnectionPool,
    PartialDownloadError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from smartsyncd.core.errors import CentralUnreachable

log = Logger(namespace="smartsyncd.branch")

DOWN_MESSAGE = (
    "the central server cannot be reached from this branch office: your change is kept"
    " locally, will sync when the central server is back"
)
_LINK_ERRORS = (
    ConnectError, DNSLookupError, TimeoutError, DeferredTimeout, ConnectionLost, ResponseFailed,
    RequestNotSent, RequestTransmissionFailed, PartialDownloadError,
)
MAX_ANSWER = 64 << 20  # a commit's answer for 100,000 files is well under this


class CentralLink:
    def __init__(
        self, reactor: Any, base_url: str, policy: IPolicyForHTTPS, *, timeout: float = 120.0,
        connect_timeout: float = 10.0,
    ) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 16
        self._agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=connect_timeout)
        self._pool = pool
        self._clock: IReactorTime = reactor
        self.base = base_url.rstrip("/").encode("ascii")
        self.timeout = timeout
        self.reachable = True
        self.last_error: str | None = None

    async def request(
        self, method: bytes, uri: bytes, headers: Headers, body: IBodyProducer | None = None,
        *, timeout: float | None = None,
    ) -> tuple[int, Headers, bytes]:
        """One request to ``base + uri``; ``CentralUnreachable`` when the link fails."""
        try:
            sent = self._agent.request(method, self.base + uri, headers, body)
            sent.addTimeout(timeout or self.timeout, self._clock)
            response = await sent
            answer = readBody(response)
            answer.addTimeout(timeout or self.timeout, self._clock)
            data = await answer
        except _LINK_ERRORS as e:
            self._down(e)
            raise CentralUnreachable(DOWN_MESSAGE) from e
        if not self.reachable:
            log.info("the central server is reachable again")
        self.reachable, self.last_error = True, None
        return response.code, response.headers, data

    async def probe(self) -> bool:
        """``GET /healthz`` at central: is the link up (any HTTP answer counts)?"""
        try:
            await self.request(b"GET", b"/healthz", Headers(), timeout=10.0)
        except CentralUnreachable:
            return False
        return True

    def _down(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        if self.reachable:
            log.warn("the central server is unreachable: {error}", error=text)
        self.reachable, self.last_error = False, text

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


@implementer(IBodyProducer)
class BodyPipe:
    """A request body that arrives while it is sent on (see the module docstring)."""

    def __init__(self, length: int | None, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self._pause = pause
        self._resume = resume
        self._consumer: IConsumer | None = None
        self._pending: list[bytes] = []
        self._ended = False
        self._stopped = False
        self._finished: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        pending, self._pending = self._pending, []
        for data in pending:
            consumer.write(data)
        if self._ended:
            return succeed(None)
        return self._finished

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._consumer is None:
            self._pending.append(data)
        else:
            self._consumer.write(data)

    def end(self) -> None:
        """The whole body arrived."""
        self._ended = True
        if self._consumer is not None and not self._finished.called:
            self._finished.callback(None)

    def pauseProducing(self) -> None:
        self._pause()

    def resumeProducing(self) -> None:
        self._resume()

    def stopProducing(self) -> None:
        self._stopped = True
        self._resume()  # the rest of the body is read and dropped; the answer says what happened
