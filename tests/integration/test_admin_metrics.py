"""Issue 17: the admin endpoint and its Prometheus metrics, through the real daemon.

A daemon with ``[admin] listen = tcp:0:...``; real sync copies (the client library over TLS)
sync, collide and pull; a sign-in fails; a long-poll parks. Each time ``/metrics`` is scraped
over HTTP and parsed with prometheus_client's parser, and the counters must have moved by what
was done. Without ``[admin]`` there is no admin listener.
"""

from __future__ import annotations

import json
import random
import re
import signal
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from blake3 import blake3
from twisted.internet import reactor

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy
from tests.integration.admin_endpoint import (
    ADMIN_CONFIG,
    admin_port,
    exposed_names,
    scrape,
    scrape_text,
    total,
    value,
    wait_for_metric,
)
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
ENG = "/v1/engagements/<eng>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("metrics"), config_text=ADMIN_CONFIG)
    try:
        d.add_user("alice", PASSWORD)
        yield d
    finally:
        # twistd stops cleanly, then ends by the signal it was sent (systemd: a clean stop)
        assert d.stop() == -signal.SIGTERM


async def connect(d: Daemon) -> ServerAPI:
    api = ServerAPI(d.url, reactor=reactor, policy=PinnedPolicy(d.fingerprint))  # type: ignore[arg-type]
    await api.login("alice", PASSWORD)
    return api


def test_metrics_are_prometheus_text_with_the_daemon_s_names(server: Daemon) -> None:
    content_type, text = scrape_text(admin_port(server))
    assert content_type.startswith("text/plain; version=")
    samples = scrape(admin_port(server))
    assert value(samples, "smartsync_info", version=__import__("smartsyncd").__version__) == 1
    assert value(samples, "smartsync_draining") == 0
    assert value(samples, "smartsync_store_free_bytes", folder="chunks") > 0
    # the daemon's own registry: no process-wide default collectors mixed in
    assert {name for name, _ in samples if not name.startswith("smartsync_")} == set()


@pytest_twisted.ensureDeferred
async def test_syncs_move_the_counters(server: Daemon, tmp_path: Path) -> None:
    port = admin_port(server)
    eng = server.new_engagement("m-sync", editors=["alice"])
    before = scrape(port)
    api = await connect(server)
    payload = random.Random(3).randbytes(3 << 20)
    try:
        a = await SyncCopy.clone(api, eng, tmp_path / "a")
        b = await SyncCopy.clone(api, eng, tmp_path / "b")
        (tmp_path / "a" / "ledger.bin").write_bytes(payload)
        (tmp_path / "a" / "notes.txt").write_text("first")
        (tmp_path / "a" / "memo.txt").write_text("memo")
        assert (await a.sync(api)).uploaded == 3
        assert (await b.sync(api)).downloaded == 3
        # both edit notes.txt: the second commit keeps its edit as a conflict copy
        (tmp_path / "a" / "notes.txt").write_text("edited in a")
        (tmp_path / "b" / "notes.txt").write_text("edited in b")
        await a.sync(api)
        await b.sync(api)
        a.close()
        b.close()
    finally:
        await api.close()
    status, _ = server.request("POST", "/v1/login", json_body={"user": "alice", "password": "wrong"})
    assert status == 401
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    commits = moved("smartsync_requests_total", route=f"{ENG}/commit", method="POST", status="200")
    assert commits == 3  # a: the new files, a: its edit, b: its edit (a conflict)
    assert moved("smartsync_request_duration_seconds_count", route=f"{ENG}/commit") == 3
    assert moved("smartsync_commits_total", outcome="written") == 3
    assert moved("smartsync_committed_files_total") >= 5  # 3 new files, then 2 edits
    assert moved("smartsync_conflicts_total") == 1
    assert moved("smartsync_signin_failures_total") == 1
    assert moved("smartsync_requests_total", route="/v1/login", status="401") == 1
    assert moved("smartsync_requests_total", route="/v1/login", status="200") == 1
    # upload and pull throughput: the payload went up in chunk bodies and came down again
    assert moved("smartsync_request_body_bytes_total", route=f"{ENG}/chunks") >= len(payload)
    assert moved("smartsync_response_body_bytes_total", route=f"{ENG}/chunks/fetch") >= len(payload)
    assert value(after, "smartsync_active_sessions") >= 1
    assert total(after, "smartsync_store_errors_total") == 0
    # an engagement name never becomes a label
    assert not any(eng in v for _, labels in after for _, v in labels)


def test_an_unknown_path_is_counted_as_other(server: Daemon) -> None:
    port = admin_port(server)
    before = scrape(port)
    status, _ = server.request("GET", "/v1/no-such-thing/abc")
    assert status == 404
    after = scrape(port)
    key = {"route": "other", "method": "GET", "status": "404"}
    assert total(after, "smartsync_requests_total", **key) == total(before, "smartsync_requests_total", **key) + 1


def test_a_parked_long_poll_shows_and_leaves(server: Daemon, tmp_path: Path) -> None:
    port = admin_port(server)
    eng = server.new_engagement("m-poll", editors=["alice"])
    token = server.login("alice", PASSWORD)
    status, answer = server.request("GET", f"/v1/engagements/{eng}/changes?since=0", token=token)
    assert status == 200
    head = answer["head"]
    result: dict[str, Any] = {}

    def poll() -> None:
        result["answer"] = server.request(
            "GET", f"/v1/engagements/{eng}/changes?since={head}&wait=60", token=token
        )

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        wait_for_metric(port, lambda s: value(s, "smartsync_longpolls_parked") == 1, "a parked poll")
        status, _ = server.request("POST", f"/v1/engagements/{eng}/commit", token=token, json_body={
            "batch": "b-metrics-1",
            "changes": [{"path": "empty.txt", "kind": "put", "base": None, "manifest": []}],
        })
        assert status == 200
    finally:
        thread.join(30)
    assert not thread.is_alive()
    assert result["answer"][0] == 200
    wait_for_metric(port, lambda s: value(s, "smartsync_longpolls_parked") == 0, "no parked poll")


def test_no_admin_listener_without_the_setting(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        assert "admin endpoint" not in d.log_text()


def test_the_sample_dashboard_and_alerts_use_only_names_the_daemon_exposes(server: Daemon) -> None:
    conf = Path(__file__).parents[2] / "conf"
    dashboard = json.loads((conf / "grafana" / "smartsyncd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"smartsync_[a-z_]+", " ".join(exprs)))
    used |= set(re.findall(r"smartsync_[a-z_]+", (conf / "prometheus" / "smartsyncd.yml").read_text()))
    exposed = exposed_names(admin_port(server))
    assert used and used <= exposed, used - exposed


def test_an_ssl_admin_endpoint_serves_metrics_with_the_daemon_s_certificate(tmp_path: Path) -> None:
    config = "[admin]\nlisten = ssl:0:interface=127.0.0.1\n"
    with running_daemon(tmp_path, config_text=config) as d:
        port = admin_port(d)
        with pytest.raises(OSError):  # no plain HTTP on it
            scrape(port)
        url = f"https://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, context=d.ssl_context(), timeout=10) as answer:
            text = answer.read().decode()
        assert "smartsync_requests_total" in text or "smartsync_requests " in text
        assert "# TYPE smartsync_longpolls_parked gauge" in text


def test_low_free_space_is_a_warning_in_healthz_and_the_metrics(tmp_path: Path) -> None:
    # a threshold above any disk here: every storage folder is "low"
    config = ADMIN_CONFIG + "[storage]\nwarn_free_mb = 1000000000\n"
    with running_daemon(tmp_path, config_text=config) as d:
        status, health = d.request("GET", "/healthz")
        assert status == 200 and health["status"] == "warning"  # still serving: not an error
        assert health["disk"]["chunks"]["low"] is True
        assert any("chunks folder has" in w and "warn_free_mb" in w for w in health["warnings"])
        samples = scrape(admin_port(d))
        warn = value(samples, "smartsync_store_free_warn_bytes")
        assert warn == 1000000000 << 20
        assert 0 < value(samples, "smartsync_store_free_bytes", folder="chunks") < warn


def test_the_last_fsck_and_gc_show_in_the_metrics(tmp_path: Path) -> None:
    with running_daemon(tmp_path, config_text=ADMIN_CONFIG) as d:
        port = admin_port(d)
        names = {name for name, _ in scrape(port)}
        assert "smartsync_fsck_last_problems" not in names  # never run: nothing to show
        d.add_user("alice", PASSWORD)
        d.new_engagement("m-fsck", editors=["alice"])
        token = d.login("alice", PASSWORD)
        data = random.Random(7).randbytes(20_000)
        digest = blake3(data).hexdigest()
        record = bytes.fromhex(digest) + bytes([0]) + struct.pack(">II", len(data), len(data)) + data
        status, _ = d.request("POST", "/v1/engagements/m-fsck/chunks", body=record, token=token,
                              content_type="application/x-smartsync-chunks")
        assert status == 200
        status, _ = d.request("POST", "/v1/engagements/m-fsck/commit", token=token, json_body={
            "batch": "b-fsck", "changes": [
                {"path": "a.bin", "kind": "put", "base": None, "manifest": [[digest, len(data)]]}
            ],
        })
        assert status == 200
        assert d.admin("fsck").returncode == 0
        samples = scrape(port)
        assert value(samples, "smartsync_fsck_last_problems") == 0
        first = value(samples, "smartsync_fsck_last_run_timestamp_seconds")
        assert first > 0

        [pack] = list((d.data_dir / "chunks").rglob("*.pack"))
        blob = bytearray(pack.read_bytes())
        blob[blob.find(data[10_000:10_032])] ^= 0xFF
        pack.write_bytes(bytes(blob))
        assert d.admin("fsck").returncode == 1
        samples = scrape(port)
        assert value(samples, "smartsync_fsck_last_problems") >= 1
        assert value(samples, "smartsync_fsck_last_run_timestamp_seconds") >= first

        assert d.admin("gc", "--grace-hours", "0").returncode == 0
        samples = scrape(port)
        assert value(samples, "smartsync_gc_last_run_timestamp_seconds") >= first
        assert value(samples, "smartsync_gc_last_bytes_freed") == 0  # every chunk is referenced
