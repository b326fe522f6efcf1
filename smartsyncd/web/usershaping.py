"""The per-user bandwidth limit of the daemon (``[limits] per_user_kbps``, for an office uplink).

Each connection is wrapped (:class:`UserShapingFactory` around the Site) and, once a request on
it has signed in (``Authorizer`` calls :meth:`UserShaper.bind`), counts against its user's
:class:`~smartsyncd.core.pacing.Pacer`: one budget per user for upload and download together,
over all of that user's connections. Requests before sign-in are not shaped (they are small and
capped by web/admission.py).

- Bytes read: when the user is ahead of the budget, reading the connection pauses (the TLS
  transport's ``pauseProducing``) until the bytes are paid for; TCP's flow control slows the
  client.
- Bytes written: held in the wrapper and released in 64 KiB slices at the pacer's times (reactor
  timers, no thread, no sleep); while more than a few slices wait, the HTTP channel (and through
  it a streaming response) is paused as it is by a full socket buffer.

The time connections are held back is counted (``smartsync_user_throttled_seconds``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from smartsyncd.core.pacing import Pacer

SLICE_BYTES = 64 * 1024
# written bytes waiting in the wrapper before the HTTP channel is paused
QUEUE_PAUSE_BYTES = 4 * SLICE_BYTES


class UserShaper:
    """One pacer per signed-in user, at ``rate`` bytes per second each."""

    def __init__(
        self, rate: float, clock: IReactorTime,
        on_throttled: Callable[[float], object] | None = None,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.on_throttled = on_throttled
        self._pacers: dict[str, Pacer] = {}
        self._connections: dict[str, int] = {}

    def pacer(self, user: str) -> Pacer:
        pacer = self._pacers.get(user)
        if pacer is None:
            self._forget_idle()
            pacer = self._pacers[user] = Pacer(self.rate)
        return pacer

    def _forget_idle(self) -> None:
        # users without a connection whose budget is paid up (those who left owing some)
        now = self.clock.seconds()
        for user in [u for u, p in self._pacers.items() if p.free_at <= now]:
            if user not in self._connections:
                del self._pacers[user]

    def bind(self, request: Request, user: str) -> None:
        """Count the connection ``request`` came on against ``user`` (from now on)."""
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if isinstance(transport, ShapedConnection):
            transport.bind(user)

    def attach(self, user: str) -> None:
        self._connections[user] = self._connections.get(user, 0) + 1

    def detach(self, user: str) -> None:
        left = self._connections.get(user, 0) - 1
        if left > 0:
            self._connections[user] = left
            return
        self._connections.pop(user, None)
        pacer = self._pacers.get(user)
        if pacer is not None and pacer.free_at <= self.clock.seconds():
            del self._pacers[user]  # nothing owed: a new connection starts afresh anyway

    def held(self, seconds: float) -> None:
        if self.on_throttled is not None and seconds > 0:
            self.on_throttled(seconds)

    @property
    def users(self) -> int:
        """Users with a budget in use (for tests and the status page)."""
        return len(self._pacers)


@implementer(IPushProducer)
class _TransportPressure:
    """What the real transport pauses and resumes in place of the HTTP channel."""

    def __init__(self, connection: ShapedConnection) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection.transport_full = True
        self.connection.update_producer()

    def resumeProducing(self) -> None:
        self.connection.transport_full = False
        self.connection.update_producer()

    def stopProducing(self) -> None:
        producer = self.connection.producer
        if producer is not None:
            producer.stopProducing()


class ShapedConnection(ProtocolWrapper):
    """One connection: passes everything through until bound to a user, then paces it."""

    factory: UserShapingFactory

    def __init__(self, factory: UserShapingFactory, wrapped: Any) -> None:
        super().__init__(cast(Any, factory), wrapped)
        self.shaper = factory.shaper
        self.user: str | None = None
        self._pacer: Pacer | None = None
        self._outgoing: deque[bytes] = deque()
        self._queued = 0
        self._slot: float | None = None  # the booked start of the next slice written
        self._write_timer: IDelayedCall | None = None
        self._read_timer: IDelayedCall | None = None
        self._app_paused = False  # the HTTP channel asked us to stop reading
        self._closing = False
        self.producer: IPushProducer | None = None
        self._producer_paused = False
        self.transport_full = False

    @property
    def _real(self) -> Any:
        """The connection's own transport (TLS), with its producer methods."""
        return self.transport

    def bind(self, user: str) -> None:
        if self.user == user:
            return
        if self.user is not None:
            self.shaper.detach(self.user)
        self.user = user
        self.shaper.attach(user)
        self._pacer = self.shaper.pacer(user)

    # -- reading ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        pacer = self._pacer
        if pacer is not None and self._read_timer is None:
            wait = pacer.charge(len(data), self.shaper.clock.seconds())
            if wait:
                self._real.pauseProducing()
                self._read_timer = self.shaper.clock.callLater(wait, self._read_again)
                self.shaper.held(wait)
        elif pacer is not None:  # bytes of the read that was under way: still count them
            pacer.charge(len(data), self.shaper.clock.seconds())
        super().dataReceived(data)

    def _read_again(self) -> None:
        self._read_timer = None
        if not self._app_paused and self.transport is not None:
            self._real.resumeProducing()

    def pauseProducing(self) -> None:
        self._app_paused = True
        self._real.pauseProducing()

    def resumeProducing(self) -> None:
        self._app_paused = False
        if self._read_timer is None:
            self._real.resumeProducing()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._pacer is None and not self._outgoing:
            self._real.write(data)
            return
        if data:
            self._outgoing.append(data)
            self._queued += len(data)
            self._flush()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def _flush(self) -> None:
        pacer, clock = self._pacer, self.shaper.clock
        while self._outgoing and self.transport is not None:
            head = self._outgoing[0]
            n = min(SLICE_BYTES, len(head))
            now = clock.seconds()
            if pacer is not None:
                if self._slot is None:
                    self._slot = pacer.reserve(n, now)
                if not pacer.due(self._slot, now):
                    if self._write_timer is None:
                        self._write_timer = clock.callLater(self._slot - now, self._write_due)
                        self.shaper.held(self._slot - now)
                    break
            self._slot = None
            if n == len(head):
                self._outgoing.popleft()
            else:
                self._outgoing[0] = head[n:]
            self._queued -= n
            self._real.write(head[:n])
        self.update_producer()
        if self._closing and not self._outgoing and self.transport is not None:
            self._real.loseConnection()

    def _write_due(self) -> None:
        self._write_timer = None
        self._flush()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer
        self._producer_paused = False
        self._real.registerProducer(_TransportPressure(self), streaming)

    def unregisterProducer(self) -> None:
        self.producer = None
        self._real.unregisterProducer()

    def update_producer(self) -> None:
        """Pause the HTTP channel while the transport is full or our queue is long."""
        producer = self.producer
        if producer is None:
            return
        hold = self.transport_full or self._queued > QUEUE_PAUSE_BYTES
        if hold and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not hold and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    # -- closing ---------------------------------------------------------------------------

    def loseConnection(self) -> None:
        self.disconnecting = 1
        if self._outgoing:
            self._closing = True  # after what is queued has gone
        else:
            self._real.loseConnection()

    def abortConnection(self) -> None:
        self._drop_queue()
        self._real.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._drop_queue()
        if self._read_timer is not None and self._read_timer.active():
            self._read_timer.cancel()
        self._read_timer = None
        if self.user is not None:
            self.shaper.detach(self.user)
            self.user = None
        self._pacer = None
        self.producer = None
        super().connectionLost(reason)

    def _drop_queue(self) -> None:
        self._outgoing.clear()
        self._queued = 0
        if self._write_timer is not None and self._write_timer.active():
            self._write_timer.cancel()
        self._write_timer = None


class UserShapingFactory(WrappingFactory):
    """Wraps every connection of ``site`` in a :class:`ShapedConnection` of ``shaper``."""

    protocol = ShapedConnection

    def __init__(self, site: Any, shaper: UserShaper) -> None:
        super().__init__(site)
        self.shaper = shaper
