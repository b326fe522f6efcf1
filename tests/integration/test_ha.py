"""Several servers, one truth: two real daemons on one real PostgreSQL 15 database and one
shared chunk folder, behind a real HAProxy 2.6 running the shipped conf/haproxy.cfg.

- A client pushes through HAProxy; the daemon serving it is SIGKILLed in the middle of the
  upload; the client finishes through the other one: every change present once, the log
  contiguous, ``smartsync-admin fsck`` clean, and it carries on with more changes.
- Concurrent commits through both daemons to one engagement: no gap, no duplicate; a batch
  retried on the other daemon is not applied twice.
- A long-poll on daemon B is woken by a commit on daemon A within a second (LISTEN/NOTIFY).
- A session made on one daemon works on the other; each daemon's /healthz reports the
  database going away, which is what HAProxy checks.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from haproxy import Cluster, start_cluster
from pg import PgCluster
from reliability import wait_for
from twisted.internet import reactor

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import CAPolicy
from smartsyncd.core.manifest import content_id

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
EMPTY = content_id(())
_files = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(pg: PgCluster, tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(tmp_path, pg.url(pg.create_database()))
    try:
        app1 = c.daemons["app1"]
        for args, stdin in (
            (("user", "add", "alice", "--password-stdin"), PASSWORD + "\n"),
            (("engagement", "create", "acme"), None),
            (("grant", "acme", "--user", "alice", "--role", "editor"), None),
        ):
            done = app1.admin(*args, input=stdin)
            assert done.returncode == 0, done.stderr
        yield c
    finally:
        c.stop()


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".smartsync" in dirnames:
            dirnames.remove(".smartsync")
        for name in filenames:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def sticky_server(api: ServerAPI) -> str | None:
    return next((c.value for c in api.cookies if c.name == "SERVERID"), None)


class KillingAPI(ServerAPI):
    """The real client; when ``kill_at`` chunk uploads have started, ``victim`` gets SIGKILL
    (so other uploads are on the wire at that moment). Only the moment is injected."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.kill_at: int | None = None
        self.victim: Any = None
        self.uploads = 0
        self.killed_after: int | None = None

    async def upload_chunks(self, eng: str, chunks: Any) -> int:
        self.uploads += 1
        if self.kill_at is not None and self.uploads == self.kill_at and self.victim is not None:
            assert self.victim.process is not None
            os.kill(self.victim.process.pid, signal.SIGKILL)
            self.killed_after = self.uploads
        return await super().upload_chunks(eng, chunks)


def changes_via(daemon: Any, token: str, since: int = 0) -> tuple[int, list[dict[str, Any]]]:
    status, body = daemon.request("GET", f"/v1/engagements/acme/changes?since={since}", token=token)
    assert status == 200, body
    return body["head"], body["changes"]


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_upload_the_client_finishes_through_the_other_daemon(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = KillingAPI(
        cluster.url,
        reactor=reactor,
        policy=CAPolicy(cluster.ca_file),
        backoff=Backoff(initial=0.2, maximum=2.0),
        max_attempts=10,
    )
    try:
        await api.login("alice", PASSWORD)
        copy = await SyncCopy.clone(api, "acme", tmp_path / "a", window_bytes=256 * 1024)
        first = sticky_server(api)
        assert first in cluster.daemons, "HAProxy's sticky cookie is kept by the client"
        victim = cluster.daemons[first]
        survivor_name = next(n for n in cluster.daemons if n != first)
        survivor = cluster.daemons[survivor_name]

        # the stream: 12 incompressible files (~12 MiB, dozens of upload requests)
        for i in range(12):
            (tmp_path / "a" / f"scan-{i:02d}.pdf").write_bytes(os.urandom(1_000_000))
        api.victim, api.kill_at = victim, 6
        started = time.monotonic()
        report = await copy.sync(api)
        assert api.killed_after == 6, "the daemon died in the middle of the upload"
        assert report.uploaded == 12
        assert victim.process is not None and victim.process.wait(10) == -signal.SIGKILL
        assert sticky_server(api) == survivor_name
        assert "commit acme" not in victim.log_text()  # the victim never committed the batch
        # the upload resumed on the survivor: what had reached the shared store is not resent
        # (at most the requests on the wire at the kill: 4 x 256 KiB windows)
        assert api.bytes_sent < 12_000_000 + 4 * 300_000, api.bytes_sent
        failover_s = time.monotonic() - started

        # the stream goes on through the survivor: edits, a delete, new files
        (tmp_path / "a" / "scan-00.pdf").write_bytes(b"edited after the failover")
        (tmp_path / "a" / "scan-01.pdf").unlink()
        (tmp_path / "a" / "notes.txt").write_bytes(b"new")
        await copy.sync(api)

        # every change present once, in a contiguous log
        token = api.token
        assert token is not None
        head, changes = changes_via(survivor, token)
        assert [c["seq"] for c in changes] == list(range(1, head + 1))
        puts = [c["path"] for c in changes if c["kind"] == "put"]
        assert sorted(puts) == sorted([f"scan-{i:02d}.pdf" for i in range(12)] + ["scan-00.pdf", "notes.txt"])
        assert [c["path"] for c in changes if c["kind"] == "delete"] == ["scan-01.pdf"]
        assert head == 15

        # a fresh copy through HAProxy has exactly the client's files
        other = ServerAPI(cluster.url, reactor=reactor, policy=CAPolicy(cluster.ca_file))
        try:
            await other.login("alice", PASSWORD)
            await SyncCopy.clone(other, "acme", tmp_path / "b")
        finally:
            await other.close()
        assert tree(tmp_path / "b") == tree(tmp_path / "a")

        fsck = survivor.admin("fsck")
        assert fsck.returncode == 0 and "no problems" in fsck.stdout, fsck.stdout + fsck.stderr
        assert failover_s < 60, cluster.logs()
    finally:
        await api.close()


def commit_body(batch: str, path: str) -> dict[str, Any]:
    return {
        "batch": batch,
        "changes": [
            {"path": path, "kind": "put", "base": None, "content": EMPTY, "size": 0, "manifest": []}
        ],
    }


def test_concurrent_commits_through_both_daemons_have_no_gap_or_duplicate(cluster: Cluster) -> None:
    app1, app2 = cluster.daemons["app1"], cluster.daemons["app2"]
    token = app1.login("alice", PASSWORD)
    assert app2.request("GET", "/v1/session", token=token)[0] == 200  # sessions are shared

    def one(i: int) -> dict[str, Any]:
        daemon = app1 if i % 2 else app2
        status, body = daemon.request(
            "POST", "/v1/engagements/acme/commit", json_body=commit_body(f"batch-{i}", f"f{i:03d}.txt"),
            token=token,
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(60)))
    seqs = sorted(a["results"][0]["seq"] for a in answers)
    assert seqs == list(range(1, 61))
    head, changes = changes_via(app1, token)
    assert head == 60 and [c["seq"] for c in changes] == list(range(1, 61))
    assert len({c["path"] for c in changes}) == 60
    # both daemons really committed
    assert "commit acme" in app1.log_text() and "commit acme" in app2.log_text()

    # a batch whose answer was lost, retried on the other daemon: the first answer, nothing new
    again = app1.request(
        "POST", "/v1/engagements/acme/commit", json_body=commit_body("batch-0", "f000.txt"), token=token
    )
    assert again == (200, answers[0])
    assert changes_via(app2, token)[0] == 60
    assert app2.admin("fsck").returncode == 0


def test_a_long_poll_on_one_daemon_is_woken_by_a_commit_on_the_other(cluster: Cluster) -> None:
    """app2 learns of app1's commit by NOTIFY and queries; app1's own poll is answered from the
    commit's records (web/longpoll.py): both answers are the same bytes as a fresh GET."""
    app1, app2 = cluster.daemons["app1"], cluster.daemons["app2"]
    token = app1.login("alice", PASSWORD)
    head, _ = changes_via(app2, token)

    answers: dict[str, dict[str, Any]] = {"app1": {}, "app2": {}}

    def long_poll(daemon: Any, answer: dict[str, Any]) -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=daemon.ssl_context(), timeout=60)
        try:
            conn.request(
                "GET", f"/v1/engagements/acme/changes?since={head}&wait=30",
                headers={"Authorization": f"Bearer {token}"},
            )
            response = conn.getresponse()
            answer["status"], answer["raw"] = response.status, response.read()
            answer["body"] = json.loads(answer["raw"])
            answer["at"] = time.monotonic()
        finally:
            conn.close()

    pollers = [threading.Thread(target=long_poll, args=(d, answers[name])) for name, d in (("app1", app1), ("app2", app2))]
    for poller in pollers:
        poller.start()
    try:
        # each daemon has read its long-poll once it answered a later request on another connection
        assert app1.request("GET", "/v1/session", token=token)[0] == 200
        assert app2.request("GET", "/v1/session", token=token)[0] == 200
        assert all(p.is_alive() for p in pollers), "the long-polls must be waiting (no change yet)"
        status, _ = app1.request(
            "POST", "/v1/engagements/acme/commit", json_body=commit_body("wake", "wake.txt"), token=token
        )
        committed = time.monotonic()
        assert status == 200
    finally:
        for poller in pollers:
            poller.join(35)
    answer = answers["app2"]
    assert answer["status"] == 200 and answers["app1"]["status"] == 200
    assert [c["path"] for c in answer["body"]["changes"]] == ["wake.txt"]
    fresh = http.client.HTTPSConnection("127.0.0.1", app2.port, context=app2.ssl_context(), timeout=30)
    try:
        fresh.request("GET", f"/v1/engagements/acme/changes?since={head}", headers={"Authorization": f"Bearer {token}"})
        fresh_raw = fresh.getresponse().read()
    finally:
        fresh.close()
    assert answers["app1"]["raw"] == answer["raw"] == fresh_raw
    latency = answer["at"] - committed
    assert latency < 1.0, f"woken after {latency:.3f} s\n{cluster.logs()}"


@pytest.mark.allow_logged_errors
def test_health_reports_the_database_and_haproxy_routes_around_a_dead_daemon(
    cluster: Cluster, pg: PgCluster
) -> None:
    app1, app2 = cluster.daemons["app1"], cluster.daemons["app2"]
    token = app1.login("alice", PASSWORD)
    app1.kill()
    # every request through HAProxy is answered by app2 from now on, without an error
    for _ in range(10):
        status, body, headers = cluster.request("GET", "/v1/session", token=token)
        assert status == 200, (body, cluster.logs())
    # the database gone: app2 says so, in the shape HAProxy checks (503)
    dbname = cluster.database_url.rsplit("/", 1)[1]
    pg.sql(f"ALTER DATABASE \"{dbname}\" ALLOW_CONNECTIONS false")
    pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
    )
    try:
        # /healthz reuses a check's result for 1 s (web/health.py): poll until it shows
        deadline = time.monotonic() + 10
        while (answer := app2.request("GET", "/healthz"))[0] != 503:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)  # polling a real condition with a deadline
        status, body = answer
        assert (status, body["database"], body["storage"]) == (503, "error", "ok")
    finally:
        pg.sql(f"ALTER DATABASE \"{dbname}\" ALLOW_CONNECTIONS true")
    deadline = time.monotonic() + 10
    while app2.request("GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline, app2.log_text()
        time.sleep(0.1)  # polling a real condition with a deadline


def test_failed_sign_ins_count_for_the_account_on_every_daemon(cluster: Cluster) -> None:
    """Five failures spread over two daemons reach the per-user limit (5): the counts live in
    the database. Before, each daemon counted its own (3 and 2) and kept accepting guesses."""
    app1, app2 = cluster.daemons["app1"], cluster.daemons["app2"]

    def attempt(daemon: Any, password: str) -> int:
        body = {"user": "alice", "password": password}
        return daemon.request("POST", "/v1/login", json_body=body)[0]

    for daemon in (app1, app1, app1, app2, app2):
        assert attempt(daemon, "wrong guess") == 401
    assert attempt(app1, PASSWORD) == 429
    assert attempt(app2, PASSWORD) == 429


def test_behind_haproxy_one_clients_failures_do_not_lock_out_the_others(
    pg: PgCluster, tmp_path: Path
) -> None:
    """Every connection reaches the daemon from HAProxy; with HAProxy as the trusted proxy the
    daemon counts failures per real client (X-Forwarded-For) and logs that address. Before, 20
    failures from one client gave every client 429."""
    c = start_cluster(tmp_path, pg.url(pg.create_database()), names=("app1",))
    try:
        done = c.daemons["app1"].admin("user", "add", "alice", "--password-stdin",
                                       input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

        def login(source: str, password: str, spoof: str | None = None) -> int:
            headers = {"X-Forwarded-For": spoof} if spoof else None
            body = {"user": f"nobody-{next(_files)}", "password": password}
            if password == PASSWORD:
                body["user"] = "alice"
            return c.request("POST", "/v1/login", json_body=body, source=source,
                             headers=headers)[0]

        # the storm: 20 failures (per-address limit) from 127.0.0.2, which also claims to be
        # 127.0.0.3 in its own X-Forwarded-For (HAProxy appends the real address after it)
        for _ in range(20):
            assert login("127.0.0.2", "wrong guess", spoof="127.0.0.3") == 401
        assert login("127.0.0.2", PASSWORD) == 429
        assert login("127.0.0.3", PASSWORD) == 200
        # The access line is written after the answer is sent: wait for it, don't race it.
        def logged() -> str | None:
            text = c.daemons["app1"].log_text()
            return text if '"127.0.0.3" - - ' in text else None

        log = wait_for(logged, 20, "the access log line of the last request")
        assert '"127.0.0.3" - - ' in log and '"127.0.0.2" - - ' in log
        assert "sign-in alice from 127.0.0.3" in log
    finally:
        c.stop()
