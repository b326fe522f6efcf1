"""A branch office (issue 18): a branch daemon on a PostgreSQL hot standby, a central daemon on
the primary, and a byte-counting relay as the office link between them. All real: PostgreSQL
15 primary + streaming standby (pg_basebackup -R), two ``twistd smartsync`` daemons, the
``smartsync`` CLI for every user.

- The branch refuses to start on a primary (``pg_is_in_recovery()`` false).
- Branch users clone and pull through the branch while a central user commits; a branch user's
  commit is visible at central and, when its sync answers, already at the branch.
- Five branch users clone the same 3 MiB file at once: its chunk bytes cross the link once.
- The link cut: reads keep working at the branch, a write is refused with the client's
  "kept locally" message, /healthz and the status page say central is unreachable (and the
  replication lag); restored, the next sync
  sends what was kept and central has it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from admin_endpoint import ADMIN_CONFIG, admin_port, scrape, value
from daemon import Daemon, DaemonStartError, running_daemon
from pg import PgCluster
from relay import ByteRelay
from test_cli_client import Client

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
BRANCH_USERS = ("bob", "carol", "dave", "erin", "frank")


def _config(url: str, extra: str = "") -> str:
    return f"[database]\nurl = {url}\n{extra}"


class Office:
    """central (on the primary) -- relay -- branch (on the standby)."""

    def __init__(self, base: Path, primary: PgCluster, standby: PgCluster, wal_link: ByteRelay) -> None:
        self.primary, self.standby, self.wal_link = primary, standby, wal_link
        self.database = primary.create_database("branch")
        self.central = running_daemon(base, config_text=_config(primary.url(self.database)), name="central")
        for user in ("alice", *BRANCH_USERS):
            self.central.add_user(user, PASSWORD)
        self.central.new_engagement("acme", editors=("alice", *BRANCH_USERS))
        self.relay = ByteRelay(self.central.port).start()
        standby.wait_replayed()
        branch_config = _config(
            standby.url(self.database),
            f"[branch]\ncentral = https://127.0.0.1:{self.relay.port}\n"
            f"central_fingerprint = {self.central.fingerprint}\ncommit_wait_seconds = 8\n"
            + ADMIN_CONFIG,
        )
        self.branch = running_daemon(base, config_text=branch_config, name="branch")

    def stop(self) -> None:
        self.branch.stop()
        self.relay.stop()
        self.central.stop()


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PgCluster, PgCluster, ByteRelay]]:
    """The primary, and the standby streaming from it through a relay (the office link)."""
    primary = PgCluster().start()
    wal_link = ByteRelay(primary.port).start()
    try:
        standby = PgCluster.standby_of(primary, via_port=wal_link.port).start()
        try:
            yield primary, standby, wal_link
        finally:
            standby.stop()
    finally:
        wal_link.stop()
        primary.stop()


@pytest.fixture(scope="module")
def office(clusters: tuple[PgCluster, PgCluster, ByteRelay], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Office]:
    o = Office(tmp_path_factory.mktemp("office"), *clusters)
    try:
        yield o
    finally:
        o.stop()


def user(tmp_path: Path, name: str, server: Daemon) -> Client:
    home = tmp_path / f"home-{name}"
    home.mkdir()
    client = Client(home)
    done = client.run(
        "login", server.url, "--user", name, "--password-stdin",
        "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    return client


def status_signin_page(daemon: Daemon) -> str:
    """The admin listener's ``/status/signin`` page (plain HTTP on loopback in these tests)."""
    url = f"http://127.0.0.1:{admin_port(daemon)}/status/signin"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        return answer.read().decode("utf-8")


def ok(done: object) -> None:
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"  # type: ignore[attr-defined]


def test_branch_refuses_a_primary(clusters: tuple[PgCluster, PgCluster, ByteRelay], tmp_path: Path) -> None:
    primary = clusters[0]
    config = _config(
        primary.url(primary.create_database("notstandby")),
        "[branch]\ncentral = https://127.0.0.1:9\n",
    )
    with pytest.raises(DaemonStartError) as refused:
        running_daemon(tmp_path, config_text=config, name="wrong")
    assert "pg_is_in_recovery() is false" in str(refused.value)


def test_branch_reads_local_and_writes_reach_central(office: Office, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    bob = user(tmp_path, "bob", office.branch)
    at_central, at_branch = tmp_path / "alice", tmp_path / "bob"
    ok(alice.run("clone", f"{office.central.url}/acme", str(at_central)))
    ok(bob.run("clone", f"{office.branch.url}/acme", str(at_branch)))

    # a central user's commit reaches the branch user's pull through replication
    (at_central / "Central memo.txt").write_text("from the data centre\n")
    ok(alice.run("sync", str(at_central)))
    office.standby.wait_replayed()
    ok(bob.run("sync", str(at_branch)))
    assert (at_branch / "Central memo.txt").read_text() == "from the data centre\n"

    # a branch user's commit: at central, and at the branch as soon as the sync answered
    (at_branch / "Branch note.txt").write_text("from the office\n")
    ok(bob.run("sync", str(at_branch)))
    status, answer = office.branch.request(
        "GET", "/v1/engagements/acme/snapshot", token=_token(bob, office.branch)
    )
    assert status == 200 and "Branch note.txt" in {f["path"] for f in answer["files"]}
    ok(alice.run("sync", str(at_central)))
    assert (at_central / "Branch note.txt").read_text() == "from the office\n"

    # and a second branch user sees it, pulled locally
    carol_copy = tmp_path / "carol"
    carol = user(tmp_path, "carol", office.branch)
    ok(carol.run("clone", f"{office.branch.url}/acme", str(carol_copy)))
    assert (carol_copy / "Branch note.txt").read_text() == "from the office\n"


def test_a_long_poll_at_the_branch_wakes_on_replay(office: Office, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    token = _token(user(tmp_path, "dave", office.branch), office.branch)
    status, head = office.branch.request("GET", "/v1/engagements/acme", token=token)
    assert status == 200
    copy = tmp_path / "alice-lp"
    ok(alice.run("clone", f"{office.central.url}/acme", str(copy)))
    (copy / "wake.txt").write_text("wake up\n")
    started = time.monotonic()
    ok(alice.run("sync", str(copy)))
    status, answer = office.branch.request(
        "GET", f"/v1/engagements/acme/changes?since={head['head']}&wait=20", token=token
    )
    assert status == 200 and "wake.txt" in {c["path"] for c in answer["changes"]}
    assert time.monotonic() - started < 15


def test_five_branch_users_one_copy_on_the_link(office: Office, tmp_path: Path) -> None:
    clients = [user(tmp_path, name, office.branch) for name in BRANCH_USERS]
    # a branch user uploads it (streamed through the branch to central: not kept at the branch)
    copy = tmp_path / "bob-big"
    ok(clients[0].run("clone", f"{office.branch.url}/acme", str(copy)))
    size = 3 << 20
    (copy / "Ledger.bin").write_bytes(os.urandom(size))  # incompressible: bytes are bytes
    office.relay.reset()
    ok(clients[0].run("sync", str(copy)))
    sent = office.relay.to_target
    assert size <= sent < size * 1.05, sent
    office.relay.reset()
    # all five at once: the branch fetches each chunk from central once, the others wait for it
    with ThreadPoolExecutor(len(clients)) as pool:
        done = list(pool.map(
            lambda pair: pair[1].run("clone", f"{office.branch.url}/acme", str(tmp_path / f"big-{pair[0]}")),
            zip(BRANCH_USERS, clients, strict=True),
        ))
    for name, clone in zip(BRANCH_USERS, done, strict=True):
        ok(clone)
        assert (tmp_path / f"big-{name}" / "Ledger.bin").read_bytes() == (copy / "Ledger.bin").read_bytes()
    crossed = office.relay.to_client
    print(f"upload of {size} bytes: {sent} bytes to central; five concurrent clones: {crossed}"
          " bytes from central over the link")
    assert size <= crossed < size * 1.05, crossed


def test_link_down_reads_work_writes_kept_then_sent(office: Office, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    erin = user(tmp_path, "erin", office.branch)
    at_branch, at_central = tmp_path / "erin", tmp_path / "alice-down"
    second = tmp_path / "erin-laptop"
    ok(erin.run("clone", f"{office.branch.url}/acme", str(at_branch)))
    ok(erin.run("clone", f"{office.branch.url}/acme", str(second)))
    ok(alice.run("clone", f"{office.central.url}/acme", str(at_central)))
    (at_central / "Before the cut.txt").write_text("replayed before the link went down\n")
    ok(alice.run("sync", str(at_central)))
    office.standby.wait_replayed()
    ok(erin.run("sync", str(at_branch)))  # its chunks are now in the branch's cache
    office.relay.stop()  # the office link: HTTPS and the WAL stream both
    office.wal_link.stop()
    try:
        # reads: another copy pulls what the branch has, with central out of reach (the
        # copy's report to central is best effort: one attempt)
        ok(erin.run("--attempts", "1", "sync", str(second)))
        assert (second / "Before the cut.txt").read_text() == "replayed before the link went down\n"
        status, snapshot = office.branch.request(
            "GET", "/v1/engagements/acme/snapshot", token=_token(erin, office.branch)
        )
        assert status == 200 and "Before the cut.txt" in {f["path"] for f in snapshot["files"]}
        # a write: refused with the message the client shows, the edit stays
        (at_branch / "Offline.txt").write_text("written while the link was down\n")
        refused = erin.run("--attempts", "1", "sync", str(at_branch))
        assert refused.returncode == 4, refused.stderr
        assert "kept locally, will sync when the central server is back" in refused.stderr
        wait_for(lambda: office.branch.request("GET", "/healthz")[1]["branch"]["central"] == "unreachable")
        status, health = office.branch.request("GET", "/healthz")
        assert status == 200, health  # reads work: a warning, not an error
        assert any("central unreachable" in w for w in health["warnings"])
        assert health["branch"]["replication_lag_seconds"] >= 0
        # the status page says it too: its sign-in page (a branch cannot sign anyone in: a
        # session is a write) shows the same facts as /metrics beside it
        page = status_signin_page(office.branch)
        assert "Link to central" in page and "DOWN: reads are served from this branch" in page
        samples = scrape(admin_port(office.branch))
        assert value(samples, "smartsync_branch_central_reachable") == 0
        assert value(samples, "smartsync_branch_replication_lag_seconds") >= 0
    finally:
        office.wal_link.start()
        office.relay.start()
    assert (at_branch / "Offline.txt").read_text() == "written while the link was down\n"
    ok(erin.run("sync", str(at_branch)))  # the kept edit goes now
    ok(alice.run("sync", str(at_central)))
    assert (at_central / "Offline.txt").read_text() == "written while the link was down\n"
    wait_for(lambda: office.branch.request("GET", "/healthz")[1]["branch"]["central"] == "reachable")
    back = status_signin_page(office.branch)
    assert '<span class="ok">reachable</span>' in back and "DOWN" not in back


def test_a_commit_waits_for_the_standby_then_says_it_is_on_central(office: Office, tmp_path: Path) -> None:
    frank = user(tmp_path, "frank", office.branch)
    copy = tmp_path / "frank"
    ok(frank.run("clone", f"{office.branch.url}/acme", str(copy)))
    (copy / "Lagging.txt").write_text("committed while the standby is cut off\n")
    office.wal_link.stop()  # HTTPS still up, replication stopped: the commit cannot replay
    try:
        started = time.monotonic()
        refused = frank.run("--attempts", "1", "sync", str(copy))
        waited = time.monotonic() - started
        assert refused.returncode == 4, refused.stderr
        assert "saved on the central server" in refused.stderr and "sending it again is safe" in refused.stderr
        assert waited >= 8  # [branch] commit_wait_seconds
        status, health = office.branch.request("GET", "/healthz")
        assert health["branch"]["replication_lag_seconds"] is not None
    finally:
        office.wal_link.start()
    ok(frank.run("sync", str(copy)))  # the retry: the same batch, not applied twice
    office.standby.wait_replayed()
    status, feed = office.central.request(
        "GET", "/v1/engagements/acme/changes?since=0&limit=1000", token=_token(frank, office.branch)
    )
    assert status == 200
    assert [c["path"] for c in feed["changes"]].count("Lagging.txt") == 1


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _token(client: Client, server: Daemon) -> str:
    settings = client.settings()
    text = json.dumps(settings)
    for entry in _walk(settings):
        if isinstance(entry, dict) and isinstance(entry.get("token"), str):
            return entry["token"]
    raise AssertionError(f"no token in the client's settings: {text[:200]}")


def _walk(value: object) -> Iterator[object]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
