"""A TCP relay on loopback that behaves like a WAN link: delay and rate in each direction.

Used by bench/wan.py (smartsync's TLS and rsync's daemon protocol pass through it unchanged) and
usable by hand::

    python -m smartsyncd.testing.wanrelay --listen 9443 --target 127.0.0.1:8443 \\
        --rtt 0.05 --rate 20e6

Each direction is a :class:`Link`: a token bucket (``rate`` bytes/s, ``burst`` bytes deep) lets
packets of at most ``packet`` bytes leave when the bucket holds enough tokens, so a large write
leaves at the link rate, not at line rate followed by a pause; each packet arrives ``latency``
seconds after it left. Departure times are computed when the bytes arrive, so the only timer is
the one for the next delivery, which delivers every packet due by then in order. The bytes
waiting to leave are the link's queue (a router's buffer): past ``buffer`` bytes the sender is
paused (TCP's flow control) until the queue has drained to half. The TCP handshake's round trip
is charged too: the first client bytes leave no earlier than one round trip after the accept.
With ``LinkSettings(shared=True)`` every connection through the relay shares one
:class:`Pacer` per direction (one access link, as a laptop on a hotel line has): two connections
together get the link's rate, not twice it, and share its queue. Without it each connection is
paced on its own (a link per connection). Not modelled: loss, TCP slow start, per-packet header
bytes. Counts are of TCP payload bytes.
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

DEFAULT_PACKET = 1448  # a TCP segment's payload on a 1500-byte MTU
DEFAULT_BUFFER = 256 * 1024


def default_burst(packet: int = DEFAULT_PACKET) -> int:
    """The bucket's depth when none is given: four full segments."""
    return max(packet, 4 * DEFAULT_PACKET)


class Pacer:
    """A token bucket (``rate`` bytes/s, ``burst`` bytes deep): when each packet leaves.

    Departures are computed in the order packets are offered, so a pacer shared by several
    :class:`Link` objects is one first-in first-out link for all of them."""

    def __init__(self, clock: Any, rate: float | None, burst: int) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0")
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.t_last = clock.seconds()

    def departure(self, t: float, n: int) -> float:
        """When a packet of ``n`` bytes, ready to leave at ``t``, leaves."""
        t = max(t, self.t_last)
        if self.rate is None:
            return t
        tokens = min(float(self.burst), self.tokens + (t - self.t_last) * self.rate)
        if tokens < n:
            t += (n - tokens) / self.rate
            tokens = float(n)
        self.tokens = tokens - n
        self.t_last = t
        return t

    def backlog(self, now: float) -> float:
        """Bytes waiting to leave at ``now``."""
        if self.rate is None:
            return 0.0
        return max(0.0, self.t_last - now) * self.rate


class Link:
    """One direction of the link: pacing by a token bucket, then a fixed delay, in order.

    ``deliver`` receives the bytes at the far end; ``on_drained_close`` runs once the far end
    has had everything after :meth:`close`. ``sender`` (an ``IPushProducer``, the near
    end's transport) is paused while more than ``buffer`` bytes wait to leave. ``pacer``, when
    given, is a bucket shared with other links (its rate and depth then apply, not this link's).
    """

    def __init__(
        self,
        clock: Any,
        deliver: Callable[[bytes], None],
        *,
        latency: float,
        rate: float | None,
        burst: int | None = None,
        packet: int = DEFAULT_PACKET,
        buffer: int = DEFAULT_BUFFER,
        not_before: float = 0.0,
        pacer: Pacer | None = None,
    ) -> None:
        if latency < 0 or (rate is not None and rate <= 0):
            raise ValueError("latency must be >= 0 and rate > 0")
        self.clock = clock
        self.deliver = deliver
        self.latency = latency
        if pacer is None:
            pacer = Pacer(clock, rate, burst if burst is not None else default_burst(packet))
        self.pacer = pacer
        self.rate = pacer.rate
        self.burst = pacer.burst
        self.packet = min(packet, self.burst)
        self.buffer = buffer
        self.not_before = not_before
        self.sender: Any = None  # an IPushProducer
        self.on_drained_close: Callable[[], None] | None = None
        self.bytes = 0  # everything ever sent into this direction
        self._queue: deque[tuple[float, bytes]] = deque()  # (arrival time, packet), in order
        self._held: list[bytes] = []  # written before ``not_before``
        self._hold_timer: Any = None
        self._timer: Any = None  # IDelayedCall
        self._resume: Any = None
        self._paused = False
        self._closing = False

    def send(self, data: bytes) -> None:
        """Bytes written at the near end now."""
        if self._closing:
            return
        self.bytes += len(data)
        now = self.clock.seconds()
        if now < self.not_before or self._held:
            # the TCP handshake is not over: the bytes join the link's queue only then, so a
            # shared pacer is not held up by this connection's handshake
            self._held.append(data)
            if self._hold_timer is None:
                self._hold_timer = self.clock.callLater(self.not_before - now, self._release)
            return
        self._offer(data, now)

    def _release(self) -> None:
        self._hold_timer = None
        held, self._held = b"".join(self._held), []
        self._offer(held, self.not_before)  # the handshake's end, even if this call runs late
        if self._closing and not self._queue:
            self._finish()

    def _offer(self, data: bytes, now: float) -> None:
        view = memoryview(data)
        for at in range(0, len(data), self.packet):
            piece = view[at : at + self.packet]
            self._queue.append((self._departure(now, len(piece)) + self.latency, bytes(piece)))
        self._arm()
        self._flow_control(self.clock.seconds())

    def backlog(self, now: float | None = None) -> float:
        """Bytes waiting to leave (the link's queue), at ``now``."""
        return self.pacer.backlog(self.clock.seconds() if now is None else now)

    def close(self) -> None:
        """The near end closed: deliver what is queued, then run ``on_drained_close``."""
        self._closing = True
        self._cancel_resume()
        if not self._queue and not self._held:
            self._finish()

    def abort(self) -> None:
        """Drop everything queued (the far end is gone)."""
        self._closing = True
        self._queue.clear()
        self._held.clear()
        for call in (self._timer, self._resume, self._hold_timer):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._resume = self._hold_timer = None

    def _departure(self, now: float, n: int) -> float:
        """When a packet of ``n`` bytes written at ``now`` leaves (token bucket)."""
        return self.pacer.departure(max(now, self.not_before), n)

    def _arm(self) -> None:
        if self._timer is None and self._queue:
            delay = max(0.0, self._queue[0][0] - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        due: list[bytes] = []
        while self._queue and self._queue[0][0] <= now:
            due.append(self._queue.popleft()[1])
        if due:
            self.deliver(b"".join(due))
        if self._queue:
            self._arm()
        elif self._closing and not self._held:
            self._finish()

    def _finish(self) -> None:
        done, self.on_drained_close = self.on_drained_close, None
        if done is not None:
            done()

    def _flow_control(self, now: float) -> None:
        if self.sender is None or self.rate is None or self._paused:
            return
        if self.backlog(now) > self.buffer:
            self._paused = True
            self.sender.pauseProducing()
            # resume once half the buffer is left: the queue drains at the link rate
            wait = (self.backlog(now) - self.buffer / 2) / self.rate
            self._resume = self.clock.callLater(wait, self._resume_sender)

    def _resume_sender(self) -> None:
        self._resume = None
        self._paused = False
        if self.sender is not None and not self._closing:
            self.sender.resumeProducing()

    def _cancel_resume(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None


@dataclass
class Counters:
    """Payload bytes through the relay, each direction, over every connection."""

    up: int = 0  # client -> server
    down: int = 0  # server -> client
    connections: int = 0
    # request-answer turns: client bytes arriving after server bytes on the same connection
    # (or first on it); with one request at a time on a connection, one per request
    turns: int = 0
    links: list[tuple[Link, Link]] = field(default_factory=list)
    # when set, (reactor time, "up" or "down", bytes) as each piece reaches the relay: how a
    # shaped sender spread its bytes (tests/integration/test_bwlimit_shaping.py)
    trace: list[tuple[float, str, int]] | None = None

    def note(self, clock: Any, direction: str, nbytes: int) -> None:
        if self.trace is not None:
            self.trace.append((clock.seconds(), direction, nbytes))

    @property
    def total(self) -> int:
        return self.up + self.down

    def reset(self) -> None:
        self.up = self.down = self.connections = self.turns = 0

    def close_all(self) -> None:
        for up, down in self.links:
            up.abort()
            down.abort()
        self.links.clear()


@dataclass
class LinkSettings:
    """Both directions are the same: ``rtt`` is the round trip, ``rate`` bytes/s each way.

    ``shared``: one pacing bucket per direction for all the relay's connections (one link that
    a client's several connections share); otherwise each connection is paced on its own."""

    rtt: float
    rate: float | None
    burst: int | None = None
    packet: int = DEFAULT_PACKET
    buffer: int = DEFAULT_BUFFER
    handshake: bool = True
    shared: bool = False

    def pacer(self, clock: Any) -> Pacer:
        """A bucket at this setting's rate and depth (one direction's, when ``shared``)."""
        burst = self.burst if self.burst is not None else default_burst(self.packet)
        return Pacer(clock, self.rate, burst)

    def link(self, clock: Any, deliver: Callable[[bytes], None], *,
             not_before: float = 0.0, pacer: Pacer | None = None) -> Link:
        return Link(clock, deliver, latency=self.rtt / 2, rate=self.rate, burst=self.burst,
                    packet=self.packet, buffer=self.buffer, not_before=not_before, pacer=pacer)


class _Outbound(Protocol):
    """The relay's connection to the target (the server side)."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def peer(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        self.inbound.target_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.inbound.counters.down += len(data)
        self.inbound.counters.note(self.inbound.reactor, "down", len(data))
        self.inbound.answered = True
        assert self.inbound.down is not None
        self.inbound.down.send(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.inbound.target_lost()


class _Inbound(Protocol):
    """A client's connection to the relay."""

    factory: RelayFactory

    def __init__(self, counters: Counters, settings: LinkSettings, reactor: Any,
                 target: tuple[str, int],
                 pacers: tuple[Pacer, Pacer] | None = None) -> None:
        self.counters = counters
        self.pacers = pacers  # (up, down) shared by every connection, or None
        self.settings = settings
        self.reactor = reactor
        self.target = target
        self.up: Link | None = None
        self.down: Link | None = None
        self.outbound: _Outbound | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.answered = True  # the server has spoken since the client last did

    def connectionMade(self) -> None:
        self.counters.connections += 1
        accepted = self.reactor.seconds()
        hold = self.settings.rtt if self.settings.handshake else 0.0
        up_pacer, down_pacer = self.pacers if self.pacers is not None else (None, None)
        self.up = self.settings.link(self.reactor, self._to_target, not_before=accepted + hold,
                                     pacer=up_pacer)
        self.down = self.settings.link(self.reactor, self._to_client,
                                       not_before=accepted + hold, pacer=down_pacer)
        self.up.sender = self.transport
        self.up.on_drained_close = self._close_target
        self.down.on_drained_close = self._close_client
        self.counters.links.append((self.up, self.down))
        self.reactor.connectTCP(self.target[0], self.target[1], _OutboundFactory(self))

    def _transport(self) -> Any:
        return self.transport

    def target_connected(self, outbound: _Outbound) -> None:
        self.outbound = outbound
        assert self.down is not None
        self.down.sender = outbound.transport
        pending, self.pending = self.pending, []
        for data in pending:
            outbound.peer().write(data)
        if self.closed:
            outbound.peer().loseConnection()

    def target_failed(self) -> None:
        self._transport().loseConnection()

    def target_lost(self) -> None:
        if self.down is not None:
            self.down.close()

    def dataReceived(self, data: bytes) -> None:
        self.counters.up += len(data)
        self.counters.note(self.reactor, "up", len(data))
        if self.answered:
            self.counters.turns += 1
            self.answered = False
        assert self.up is not None
        self.up.send(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.up is not None:
            self.up.close()
        if self.down is not None:
            self.down.abort()
        self._forget()

    def _to_target(self, data: bytes) -> None:
        if self.outbound is not None:
            self.outbound.peer().write(data)
        else:
            self.pending.append(data)

    def _to_client(self, data: bytes) -> None:
        self._transport().write(data)

    def _close_target(self) -> None:
        self.closed = True
        if self.outbound is not None:
            self.outbound.peer().loseConnection()

    def _close_client(self) -> None:
        self._transport().loseConnection()
        if self.up is not None:
            self.up.abort()
        self._forget()

    def _forget(self) -> None:
        pair = (self.up, self.down)
        if pair in self.counters.links:
            self.counters.links.remove(pair)  # type: ignore[arg-type]


class _OutboundFactory(ClientFactory):
    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def buildProtocol(self, addr: Any) -> Any:
        return _Outbound(self.inbound)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.inbound.target_failed()

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass


class RelayFactory(Factory):
    """Accepts clients and relays each to ``target`` through a :class:`Link` each way."""

    def __init__(self, reactor: Any, target: tuple[str, int], settings: LinkSettings) -> None:
        self.reactor = reactor
        self.target = target
        self.settings = settings
        self.counters = Counters()
        self.pacers: tuple[Pacer, Pacer] | None = None
        if settings.shared:
            self.pacers = (settings.pacer(reactor), settings.pacer(reactor))

    def buildProtocol(self, addr: Any) -> Any:
        return _Inbound(self.counters, self.settings, self.reactor, self.target, self.pacers)


def listen_relay(reactor: Any, target_port: int, settings: LinkSettings,
                 port: int = 0) -> tuple[Any, RelayFactory]:
    """Listen on 127.0.0.1 (``port``, 0 for a free one) relaying to 127.0.0.1:target_port.

    Returns the listening port (``.getHost().port``) and the factory (``.counters``)."""
    factory = RelayFactory(reactor, ("127.0.0.1", target_port), settings)
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    return listening, factory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A loopback TCP relay emulating a WAN link.")
    parser.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--rtt", type=float, default=0.05, help="round trip in seconds")
    parser.add_argument("--rate", type=float, default=None,
                        help="bits per second each way (default: unlimited)")
    parser.add_argument("--buffer", type=int, default=DEFAULT_BUFFER,
                        help="bytes queued per direction before the sender is paused")
    parser.add_argument("--per-connection", action="store_true",
                        help="pace each connection on its own (default: one shared link)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor

    settings = LinkSettings(rtt=args.rtt, rate=args.rate / 8 if args.rate else None,
                            buffer=args.buffer, shared=not args.per_connection)
    factory = RelayFactory(reactor, (host or "127.0.0.1", int(port)), settings)
    listening = reactor.listenTCP(args.listen, factory, interface="127.0.0.1")
    print(f"relaying 127.0.0.1:{listening.getHost().port} -> {args.target}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
