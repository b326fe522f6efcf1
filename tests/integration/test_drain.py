"""Issue 17: SIGTERM drains the real daemon, with a real client mid-upload.

The client library syncs a large file through a proxy in this process that forwards the
client's bytes until a threshold, then holds them: the upload is mid-stream (the daemon's
metrics show it in progress; no sleeps). SIGTERM is sent; the daemon stops accepting, logs that
it drains one request, and when the proxy lets the rest through, the upload completes and is
answered before the daemon exits. The client's next request finds no server; after a restart
the same copy's sync finishes without sending the stored chunks again, and another copy gets
the file byte for byte. With a short drain time the held upload is cut instead: nothing of it
is indexed or left behind, and the next sync sends it whole. A parked long-poll is answered at
once on SIGTERM.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.protocols import portforward

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.early import UPLOAD_WINDOW_BYTES
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy
from tests.integration.admin_endpoint import ADMIN_CONFIG, admin_port, value, wait_for_metric
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
MiB = 1 << 20
DEADLINE_S = 30.0


class HoldingProxy(portforward.ProxyFactory):
    """Forwards to the daemon; once ``hold_after`` bytes went from the client to the daemon,
    holds the client's further bytes (``holding`` fires) until ``release``."""

    def __init__(self, port: int, hold_after: int) -> None:
        super().__init__("127.0.0.1", port)
        self.up = 0
        self.hold_after = hold_after
        self.held: list[tuple[portforward.ProxyServer, bytes]] = []
        self.holding: Deferred[None] = Deferred()
        self.released = False
        outer = self

        class _Server(portforward.ProxyServer):
            def dataReceived(self, data: bytes) -> None:
                if outer.released or (not outer.held and outer.up + len(data) <= outer.hold_after):
                    outer.up += len(data)
                    super().dataReceived(data)
                    return
                if not outer.held:
                    room = max(0, outer.hold_after - outer.up)
                    outer.up += room
                    super().dataReceived(data[:room])
                    data = data[room:]
                    outer.holding.callback(None)
                outer.held.append((self, data))
                self.transport.pauseProducing()  # type: ignore[attr-defined]

        self.protocol = _Server

    def release(self) -> None:
        self.released = True
        held, self.held = self.held, []
        for proto, data in held:
            if proto.peer is not None:
                proto.peer.transport.write(data)  # type: ignore[union-attr]
            proto.transport.resumeProducing()  # type: ignore[attr-defined]


def start(tmp_path: Path, drain_seconds: float) -> Daemon:
    d = running_daemon(
        tmp_path, config_text=ADMIN_CONFIG + f"[server]\ndrain_seconds = {drain_seconds}\n"
    )
    d.add_user("alice", PASSWORD)
    d.new_engagement("drain", editors=["alice"])
    return d


async def connect(d: Daemon, url: str | None = None, **kw: Any) -> ServerAPI:
    api = ServerAPI(url or d.url, reactor=reactor, policy=PinnedPolicy(d.fingerprint), **kw)  # type: ignore[arg-type]
    await api.login("alice", PASSWORD)
    return api


def wait_for_log(d: Daemon, text: str, after: int = 0) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while text not in d.log_text()[after:]:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n" + d.log_text()
        time.sleep(0.02)
    return d.log_text()[after:]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def upload_held_mid_stream(d: Daemon, tmp_path: Path, data: bytes) -> tuple[
    HoldingProxy, Any, ServerAPI, SyncCopy, Deferred[Any]
]:
    """Clone, write ``data``, and start a sync through a proxy that holds its upload mid-body;
    returns once the daemon reports the upload in progress."""
    direct = await connect(d)
    copy = await SyncCopy.clone(direct, "drain", tmp_path / "a")
    await direct.close()
    (tmp_path / "a" / "ledger.bin").write_bytes(data)
    proxy = HoldingProxy(d.port, hold_after=1 << 62)  # nothing held until the sign-in is done
    listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")  # type: ignore[attr-defined]
    api = await connect(d, f"https://127.0.0.1:{listening.getHost().port}", max_attempts=1,
                        backoff=Backoff(initial=0.01, maximum=0.01))
    proxy.hold_after = proxy.up + 2 * MiB  # sign-in done: hold 2 MiB into the sync
    syncing = Deferred.fromCoroutine(copy.sync(api))
    await proxy.holding
    port = admin_port(d)
    try:
        await deferToThread(wait_for_metric, port,
                            lambda s: value(s, "smartsync_uploads_in_progress") == 1,
                            "an upload in progress")
    except BaseException:  # this test fails: its sync must not fail a later test when it ends
        syncing.addErrback(lambda _: None)
        proxy.release()
        await api.close()
        await listening.stopListening()
        raise
    return proxy, listening, api, copy, syncing


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_an_upload_mid_stream_finish_then_exits(tmp_path: Path) -> None:
    d = start(tmp_path / "server", drain_seconds=120)
    # one upload request (within one upload window: a new file goes up as the scan reads
    # it, 4 MiB a request, client/early.py; a larger file would put two requests on the
    # wire, both held)
    data = random.Random(5).randbytes(UPLOAD_WINDOW_BYTES * 3 // 4)
    proxy, listening, api, copy, syncing = await upload_held_mid_stream(d, tmp_path, data)
    try:
        before = len(d.log_text())
        assert d.process is not None
        d.process.send_signal(signal.SIGTERM)
        text = await deferToThread(wait_for_log, d, "draining:", before)
        assert "draining: 1 requests in flight" in text
        assert refused(d.port)  # no new connections while draining
        assert d.running  # the upload holds the stop
        proxy.release()
        with pytest.raises(NetworkError):  # its next request finds no server
            await syncing
        status = await deferToThread(d.process.wait, DEADLINE_S)
        assert status == -signal.SIGTERM  # twistd's clean stop ends by the signal it was sent
        text = d.log_text()[before:]
        assert "drained: every request in flight was answered" in text
        assert "smartsyncd stopped" in text
    finally:
        await api.close()
        await listening.stopListening()

    d.start()
    try:
        direct = await connect(d)
        report = await copy.sync(direct)
        # the chunks of the upload that finished while draining were kept
        assert report.bytes_sent < len(data) - 2 * MiB, report.bytes_sent
        b = await SyncCopy.clone(direct, "drain", tmp_path / "b")
        assert (tmp_path / "b" / "ledger.bin").read_bytes() == data
        assert (tmp_path / "a" / "ledger.bin").read_bytes() == data
        b.close()
        await direct.close()
    finally:
        copy.close()
        d.stop()


@pytest_twisted.ensureDeferred
async def test_an_upload_over_the_drain_time_is_cut_and_sent_again(tmp_path: Path) -> None:
    d = start(tmp_path / "server", drain_seconds=1)
    data = random.Random(6).randbytes(UPLOAD_WINDOW_BYTES * 3 // 4)  # one request
    proxy, listening, api, copy, syncing = await upload_held_mid_stream(d, tmp_path, data)
    try:
        before = len(d.log_text())
        assert d.process is not None
        d.process.send_signal(signal.SIGTERM)
        with pytest.raises(NetworkError):
            await syncing
        status = await deferToThread(d.process.wait, DEADLINE_S)
        assert status == -signal.SIGTERM
        text = d.log_text()[before:]
        assert "ran out: closed 1 connections" in text
        assert "smartsyncd stopped" in text
    finally:
        proxy.release()
        await api.close()
        await listening.stopListening()
    # nothing of the cut upload is left in the chunk folder's temp files
    assert not [p for p in (d.data_dir / "chunks").rglob("*") if p.is_file() and ".tmp" in p.name]

    d.start()
    try:
        direct = await connect(d)
        report = await copy.sync(direct)
        assert report.uploaded == 1
        assert report.bytes_sent >= len(data)  # sent whole again: none of it had been indexed
        b = await SyncCopy.clone(direct, "drain", tmp_path / "b")
        assert (tmp_path / "b" / "ledger.bin").read_bytes() == data
        b.close()
        await direct.close()
    finally:
        copy.close()
        d.stop()


def test_sigterm_answers_a_parked_long_poll(tmp_path: Path) -> None:
    d = start(tmp_path / "server", drain_seconds=60)
    try:
        token = d.login("alice", PASSWORD)
        status, answer = d.request("GET", "/v1/engagements/drain/changes?since=0", token=token)
        head = answer["head"]
        result: dict[str, Any] = {}

        def poll() -> None:
            result["answer"] = d.request(
                "GET", f"/v1/engagements/drain/changes?since={head}&wait=60", token=token
            )

        thread = threading.Thread(target=poll)
        thread.start()
        wait_for_metric(admin_port(d), lambda s: value(s, "smartsync_longpolls_parked") == 1,
                        "a parked long-poll")
        assert d.process is not None
        d.process.send_signal(signal.SIGTERM)
        assert d.process.wait(DEADLINE_S) == -signal.SIGTERM  # well before the poll's 60 s
        thread.join(DEADLINE_S)
        status, answer = result["answer"]
        assert status == 200 and answer["changes"] == [] and answer["head"] == head
        assert "(1 parked long-polls answered)" in d.log_text()
    finally:
        d.stop()
