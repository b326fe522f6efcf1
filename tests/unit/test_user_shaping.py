"""The daemon's per-user limit on a Clock (web/usershaping.py, ``[limits] per_user_kbps``): a
user's connections share one budget for reads and writes, another user has their own, the
transport is paused (never slept on) and the held time is counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError

from smartsyncd.service.config import load_config
from smartsyncd.web.metrics import SyncMetrics
from smartsyncd.web.usershaping import (
    SLICE_BYTES,
    ShapedConnection,
    UserShaper,
    UserShapingFactory,
)

RATE = 100_000  # bytes per second per user


class Wire(StringTransport):
    """A transport noting when each write reached it."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, int]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.seconds(), len(data)))
        super().write(data)


class App(Protocol):
    """The HTTP channel's place: notes what it read, and whether it was paused."""

    def __init__(self) -> None:
        self.read = 0
        self.paused = 0
        self.resumed = 0

    def dataReceived(self, data: bytes) -> None:
        self.read += len(data)

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


def connect(factory: UserShapingFactory, clock: Clock, user: str | None) -> tuple[ShapedConnection, App, Wire]:
    conn: Any = factory.buildProtocol(None)
    wire = Wire(clock)
    conn.makeConnection(wire)
    app = conn.wrappedProtocol
    conn.registerProducer(app, True)
    if user is not None:
        conn.bind(user)
    return conn, app, wire


def setup(held: list[float] | None = None) -> tuple[Clock, UserShaper, UserShapingFactory]:
    clock = Clock()
    shaper = UserShaper(RATE, clock, held.append if held is not None else None)
    return clock, shaper, UserShapingFactory(Factory.forProtocol(App), shaper)


def heaviest_window(events: list[tuple[float, int]], width: float = 1.0) -> int:
    return max(sum(n for t, n in events if s <= t < s + width - 1e-9) for s, _ in events)


def run(clock: Clock, until: float = 1000) -> None:
    while clock.getDelayedCalls():
        due = min(c.getTime() for c in clock.getDelayedCalls())
        if due > until:
            return
        clock.advance(max(0.0, due - clock.seconds()))


def test_two_connections_of_one_user_share_the_budget_and_another_user_has_their_own() -> None:
    held: list[float] = []
    clock, shaper, factory = setup(held)
    a1, _, w1 = connect(factory, clock, "local:alice")
    a2, _, w2 = connect(factory, clock, "local:alice")
    b, _, wb = connect(factory, clock, "local:bob")
    for conn in (a1, a2, b):
        conn.write(bytes(500_000))
    run(clock)
    alice = sorted(w1.writes + w2.writes)
    assert sum(n for _, n in alice) == 1_000_000
    assert heaviest_window(alice) <= RATE + SLICE_BYTES
    assert alice[-1][0] >= (1_000_000 - SLICE_BYTES) / RATE - 1e-6  # about 9.3 s
    # bob's 500 kB took his own 5 s, not a third of the combined 15 s
    assert wb.writes[-1][0] == pytest.approx((500_000 - wb.writes[-1][1]) / RATE)
    assert heaviest_window(wb.writes) <= RATE + SLICE_BYTES
    assert sum(held) > 10
    assert shaper.users == 2


def test_a_long_queue_pauses_the_channel_until_it_drains() -> None:
    clock, _, factory = setup()
    conn, app, wire = connect(factory, clock, "local:alice")
    conn.write(bytes(1_000_000))
    assert app.paused == 1 and app.resumed == 0
    run(clock)
    assert app.resumed == 1
    assert len(wire.value()) == 1_000_000


def test_reading_ahead_of_the_budget_pauses_the_transport() -> None:
    held: list[float] = []
    clock, _, factory = setup(held)
    conn, app, wire = connect(factory, clock, "local:alice")
    conn.dataReceived(bytes(50_000))
    assert app.read == 50_000  # what was read is handed on at once
    assert wire.producerState == "paused"
    assert held == [pytest.approx(0.5)]
    clock.advance(0.49)
    assert wire.producerState == "paused"
    clock.advance(0.02)
    assert wire.producerState == "producing"


def test_the_channels_own_pause_outlasts_the_budgets() -> None:
    clock, _, factory = setup()
    conn, _, wire = connect(factory, clock, "local:alice")
    conn.dataReceived(bytes(50_000))
    conn.pauseProducing()  # the channel, say, handling a pipelined request
    clock.advance(1)
    assert wire.producerState == "paused"
    conn.resumeProducing()
    assert wire.producerState == "producing"


def test_before_sign_in_nothing_is_shaped() -> None:
    clock, shaper, factory = setup()
    conn, _, wire = connect(factory, clock, None)
    conn.write(bytes(1_000_000))
    conn.dataReceived(bytes(1_000_000))
    assert len(wire.value()) == 1_000_000
    assert wire.producerState == "producing"
    assert clock.getDelayedCalls() == [] and shaper.users == 0


def test_closing_sends_what_is_queued_first_and_a_lost_connection_forgets_the_user() -> None:
    clock, shaper, factory = setup()
    conn, _, wire = connect(factory, clock, "local:alice")
    conn.write(bytes(300_000))
    conn.loseConnection()
    assert not wire.disconnecting
    run(clock)
    assert len(wire.value()) == 300_000 and wire.disconnecting
    conn.connectionLost(None)  # type: ignore[arg-type]
    assert clock.getDelayedCalls() == []
    assert shaper.users == 1  # the last slice is still owed: reconnecting does not skip it
    clock.advance(1)
    connect(factory, clock, "local:bob")
    assert shaper.users == 1  # alice's paid-up budget is forgotten


def test_config_reads_and_checks_per_user_kbps(tmp_path: Path) -> None:
    ini = tmp_path / "smartsync.ini"
    ini.write_text("[limits]\nper_user_kbps = 2048\n")
    assert load_config(str(ini), cwd=str(tmp_path)).per_user_kbps == 2048
    assert load_config(None, cwd=str(tmp_path)).per_user_kbps is None
    for bad in ("0", "fast", "-5"):
        ini.write_text(f"[limits]\nper_user_kbps = {bad}\n")
        with pytest.raises(UsageError, match=r"\[limits\] per_user_kbps: bad value"):
            load_config(str(ini), cwd=str(tmp_path))


def test_the_held_time_is_a_metric() -> None:
    metrics = SyncMetrics(lambda: 0.0)
    metrics.user_throttled.inc(2.5)
    assert b"smartsync_user_throttled_seconds_total 2.5" in metrics.render()
