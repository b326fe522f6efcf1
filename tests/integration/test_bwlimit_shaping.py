"""--bwlimit on the wire (issue 15): an upload through the WAN relay to the real daemon leaves in
paced slices, never a burst at line rate, and a download takes as long as the limit says.

The relay (smartsyncd/testing/wanrelay.py) notes when each piece of the client's bytes reaches
it; the heaviest 100 ms of an upload must stay within the limit's share of 100 ms plus one
64 KiB slice (and TLS framing). The same upload without a limit is the control: it does burst,
so the measurement can fail."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from daemon import Daemon, daemon_with_users
from twisted.internet import reactor

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.pacing import SLICE_BYTES
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.testing.wanrelay import LinkSettings, listen_relay

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
RATE = 256 * 1024  # bytes per second: --bwlimit 256
FILE_BYTES = 1_200_000
WINDOW = 0.1
# headers, TLS record framing and the small requests around an upload
SLACK = 8 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from daemon_with_users(tmp_path_factory.mktemp("bwlimit"), "alice", password=PASSWORD)


def heaviest(trace: list[tuple[float, str, int]], direction: str, width: float = WINDOW) -> int:
    events = [(t, n) for t, d, n in trace if d == direction]
    return max(sum(n for t, n in events if start <= t < start + width) for start, _ in events)


async def through_relay(
    server: Daemon, bwlimit: int | None
) -> tuple[ServerAPI, list[tuple[float, str, int]], object]:
    listening, factory = listen_relay(reactor, server.port, LinkSettings(rtt=0.01, rate=None))
    trace: list[tuple[float, str, int]] = []
    factory.counters.trace = trace
    api = ServerAPI(
        f"https://127.0.0.1:{listening.getHost().port}", reactor=reactor,
        policy=PinnedPolicy(server.fingerprint), bwlimit=bwlimit,
    )
    await api.login("alice", PASSWORD)
    return api, trace, listening


@pytest_twisted.ensureDeferred
async def test_a_limited_upload_never_bursts_and_a_download_keeps_the_rate(
    server: Daemon, tmp_path: Path
) -> None:
    eng = server.new_engagement("bw-shape", editors=["alice"])
    api, trace, listening = await through_relay(server, RATE)
    try:
        a = await SyncCopy.clone(api, eng, tmp_path / "a")
        (tmp_path / "a" / "scan.pdf").write_bytes(os.urandom(FILE_BYTES))
        trace.clear()
        started = time.monotonic()
        assert (await a.sync(api)).uploaded == 1
        took = time.monotonic() - started
        up = sum(n for _, d, n in trace if d == "up")
        assert up > FILE_BYTES
        assert took >= (up - SLICE_BYTES) / RATE, (took, up)
        burst = heaviest(trace, "up")
        print(f"limited upload: {up} B in {took:.2f} s, heaviest 100 ms {burst} B")
        assert burst <= RATE * WINDOW + SLICE_BYTES + SLACK, burst

        a.close()
        received = api.bytes_received
        trace.clear()
        c_started = time.monotonic()
        c = await SyncCopy.clone(api, eng, tmp_path / "c")
        c_took = time.monotonic() - c_started
        assert (tmp_path / "c" / "scan.pdf").stat().st_size == FILE_BYTES
        down = api.bytes_received - received
        print(f"limited download: {down} B in {c_took:.2f} s")
        assert down > FILE_BYTES
        assert c_took >= (down - SLICE_BYTES) / RATE, (c_took, down)
        c.close()
    finally:
        await api.close()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_without_a_limit_the_same_upload_bursts(server: Daemon, tmp_path: Path) -> None:
    eng = server.new_engagement("bw-control", editors=["alice"])
    api, trace, listening = await through_relay(server, None)
    try:
        a = await SyncCopy.clone(api, eng, tmp_path / "a")
        (tmp_path / "a" / "scan.pdf").write_bytes(os.urandom(FILE_BYTES))
        trace.clear()
        assert (await a.sync(api)).uploaded == 1
        burst = heaviest(trace, "up")
        print(f"unlimited upload: heaviest 100 ms {burst} B")
        assert burst > 3 * (RATE * WINDOW + SLICE_BYTES + SLACK), burst
        a.close()
    finally:
        await api.close()
        await listening.stopListening()
