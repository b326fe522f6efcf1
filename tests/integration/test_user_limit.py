"""The daemon's per-user limit (``[limits] per_user_kbps``) with the real daemon: two parallel
uploads of one user share the cap, another user's upload at the same time gets a cap of its own."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.web.usershaping import SLICE_BYTES

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
KBPS = 200
RATE = KBPS * 1024
EACH = 3 * 200_000  # bytes each upload sends (three chunks)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(
        tmp_path_factory.mktemp("user-limit"), config_text=f"[limits]\nper_user_kbps = {KBPS}\n"
    )
    try:
        for user in ("alice", "bob"):
            d.add_user(user, PASSWORD)
        d.new_engagement("uplink", editors=["alice", "bob"])
        yield d
    finally:
        d.stop()


async def signed_in(server: Daemon, user: str) -> ServerAPI:
    api = ServerAPI(server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint))
    await api.login(user, PASSWORD)
    return api


async def timed_upload(api: ServerAPI, started: float, blobs: list[bytes] | None = None) -> float:
    blobs = blobs if blobs is not None else [os.urandom(200_000) for _ in range(3)]
    sent = await api.upload_chunks("uplink", [(chunk_hash(b), b) for b in blobs])
    assert sent >= EACH
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_one_users_connections_share_the_cap_and_another_user_is_unaffected(
    server: Daemon, tmp_path: Path
) -> None:
    apis = [await signed_in(server, u) for u in ("alice", "alice", "bob")]
    try:
        started = time.monotonic()
        alice1, alice2, bob = await gatherResults([
            Deferred.fromCoroutine(timed_upload(api, started)) for api in apis
        ])
        alice = max(alice1, alice2)
        print(f"alice's two uploads: {alice:.2f} s, bob's: {bob:.2f} s (cap {RATE} B/s each)")
        # alice's 1.2 MB at 204,800 B/s: at least ~5.5 s, whichever connection carried it
        assert alice >= (2 * EACH - 2 * SLICE_BYTES) / RATE, alice
        # bob's 600 kB ran at his own cap, at the same time: about half of alice's time
        assert (EACH - 2 * SLICE_BYTES) / RATE <= bob < 0.75 * alice, (bob, alice)
    finally:
        for api in apis:
            await api.close()

    # alone on a new connection, bob is still held to his cap, downloading too
    api = await signed_in(server, "bob")
    try:
        blobs = [os.urandom(200_000) for _ in range(3)]
        alone = await timed_upload(api, time.monotonic(), blobs)
        assert alone >= (EACH - 2 * SLICE_BYTES) / RATE, alone
        started = time.monotonic()
        got = await api.fetch_chunks("uplink", [(chunk_hash(b), len(b)) for b in blobs])
        fetched = time.monotonic() - started
        print(f"bob's upload alone: {alone:.2f} s, download: {fetched:.2f} s")
        assert sorted(got.values()) == sorted(blobs)
        assert fetched >= (EACH - 2 * SLICE_BYTES) / RATE, fetched
    finally:
        await api.close()
