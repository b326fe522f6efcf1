"""Requests in flight, and the drain that lets them finish before the daemon stops.

``InFlight`` holds every request from its first line to its answer (``web/metrics.meter_site``
adds it from the Site's request factory and drops it from ``Site.log``). It holds them weakly: a
request whose client went away without an answer is forgotten with it, so nothing grows.

``drain`` (SIGTERM; service/server.py calls it after the listener stopped accepting) marks the
daemon as draining, so every answer from then on closes its connection (a client's next request
opens a new one, which is refused, and it comes back later), then waits until every request in
flight was answered or ``seconds`` ran out. What is still running then (an upload that would not
finish in time) has its connection closed: the chunk upload aborts (web/upload.py removes what
it wrote and indexes nothing) and the client resends it later. Not waited for: a request that
was already refused and answered (``answered_early``, web/bodies.py), and one still arriving
before its sender signed in (a stalled or hostile client: it has done nothing yet), whose
connection is closed at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

RouteOf = Callable[[bytes, bytes], str]

# After the drain: how long answered connections may take to send their last bytes and close,
# and cut ones to abort (the reactor's shutdown drops whatever a socket has not sent yet).
CLOSE_GRACE = 5.0
_CLOSE_POLL = 0.02


class InFlight:
    """The requests received and not yet answered (weakly held)."""

    def __init__(self, route_of: RouteOf | None = None) -> None:
        self._requests: weakref.WeakSet[Request] = weakref.WeakSet()
        self._route_of = route_of
        self._closing: weakref.WeakSet[HTTPChannel] = weakref.WeakSet()  # answered while draining
        self.draining = False

    def add(self, request: Request) -> None:
        self._requests.add(request)
        if self.draining:
            _close_after(request)

    def finished(self, request: Request) -> None:
        """``request`` is answered (called from ``Site.log``, before its connection is reused)."""
        self._requests.discard(request)
        if self.draining:
            channel = request.channel
            if channel is not None:
                channel.persistent = False  # HTTPChannel.requestDone then closes it
                self._closing.add(channel)

    def live(self) -> list[Request]:
        """The requests still waiting for their answer on an open connection."""
        return [
            r for r in list(self._requests)
            if not r.finished and not getattr(r, "_disconnected", False)
            and not getattr(r, "answered_early", False)
        ]

    def by_route(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request in self.live():
            route = self.route(request)
            counts[route] = counts.get(route, 0) + 1
        return counts

    def uploads(self) -> int:
        """Chunk uploads whose body is still arriving or being stored (web/upload.py)."""
        return sum(1 for r in self.live() if getattr(r, "upload", None) is not None)

    def route(self, request: Request) -> str:
        """The route template of ``request`` (``other`` when no rule matches)."""
        # Before its body is in, a request has no ``path`` yet: the channel has the request line.
        channel = request.channel
        method = getattr(request, "method", None) or getattr(channel, "_command", None) or b""
        path = getattr(request, "path", None) or getattr(channel, "_path", None) or b""
        if self._route_of is None:
            return "other"
        return self._route_of(method, path.split(b"?", 1)[0])

    async def drain(self, clock: IReactorTime, seconds: float) -> int:
        """Let the requests in flight finish within ``seconds``; close the connections of
        those still running then. Returns how many were cut."""
        self.draining = True
        for request in self.live():
            if _unsigned_and_arriving(request):
                _abort(request)
            else:
                _close_after(request)
        now = clock.seconds
        end = now() + seconds
        while True:
            live = self.live()
            remaining = end - now()
            if not live or remaining <= 0:
                break
            await _first(clock, remaining, [r.notifyFinish() for r in live])
        live = self.live()
        channels = list(self._closing)
        for request in live:
            channels.append(request.channel)
            _abort(request)
        await _closed(clock, channels, CLOSE_GRACE)
        return len(live)


def _unsigned_and_arriving(request: Request) -> bool:
    """Still receiving its request line, headers or body, and not signed in."""
    return request.path is None and not getattr(request, "authenticated", True)


def _abort(request: Request) -> None:
    transport = getattr(request.channel, "transport", None)
    if transport is not None:
        abort = getattr(transport, "abortConnection", None)
        (abort or transport.loseConnection)()


def _close_after(request: Request) -> None:
    """Answer ``request`` with ``Connection: close`` and close its connection afterwards."""
    if not request.startedWriting:
        request.setHeader(b"connection", b"close")
    channel = request.channel
    if channel is not None:
        channel.persistent = False


def _socket_open(channel: HTTPChannel) -> bool:
    """Whether the socket under ``channel`` (below any TLS layer) is still open."""
    transport = getattr(channel, "transport", None)
    while transport is not None and not hasattr(transport, "disconnected"):
        transport = getattr(transport, "transport", None)
    return transport is not None and not transport.disconnected


async def _closed(clock: IReactorTime, channels: list[HTTPChannel], timeout: float) -> None:
    """Until the sockets of ``channels`` are closed (their last answer sent) or ``timeout``."""
    waited = 0.0
    while waited < timeout and any(_socket_open(c) for c in channels):
        tick: Deferred[None] = Deferred()
        clock.callLater(_CLOSE_POLL, tick.callback, None)
        await tick
        waited += _CLOSE_POLL


async def _first(clock: IReactorTime, timeout: float, waits: list[Deferred[None]]) -> None:
    """Until every Deferred of ``waits`` fired (errors included) or ``timeout`` ran out."""
    timer: Deferred[None] = Deferred()
    call = clock.callLater(timeout, timer.callback, None)
    everything: Deferred[None] = DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
    await DeferredList([everything, timer], fireOnOneCallback=True, consumeErrors=True)
    if call.active():
        call.cancel()
