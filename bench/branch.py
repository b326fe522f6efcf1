"""Branch office figures (issue 18): bytes on the office link for N branch users pulling one
file, time per user at the branch beside pulling from central, and the replication lag from a
central commit to the branch's long-poll answer.

    python bench/branch.py [--mb 20] [--users 5] [--commits 100] [--wan]

All real and on loopback: a PostgreSQL 15 primary and a streaming standby (through a relay,
like the office link), a central ``twistd smartsync`` on the primary and a branch one on the
standby, the ``smartsync`` CLI for every user, and a byte-counting relay between branch and
central (tests/integration/relay.py). No WAN emulation (no delay, no rate cap): the time rows
show the CPU cost of the branch's path, not a WAN's; the byte rows are what a WAN would carry.

``--wan``: the office link is bench/wan.py's emulated WAN (``smartsyncd.testing.wanrelay``,
50 ms round trip, 20 Mbit/s each way, run as its own process) behind the byte relay, and the
users who clone from central directly go through the same kind of relay: the branch's users
are on the LAN, the direct ones across the WAN. The relay paces each TCP connection on its
own, so five concurrent direct users get five links' worth, not one shared office link: the
direct row is the best case for central.

``--carry``: the branch carries the engagement (``smartsync-admin branch carry``, a branch
credential): the time from central's commit answer until the branch's prefetch has the whole
head (its /healthz), the bytes that crossed the office link meanwhile, then the bytes and time
per user of ``--users`` branch users cloning it at once (the lag rows are skipped).

Lag: a branch session long-polls (``changes?wait=30``) while the central daemon takes a
one-file commit (an empty file: no chunks); the lag is the time from central's commit answer to
the branch's long-poll answer, median and 99th percentile over ``--commits`` commits. The
branch polls its standby's replay position every 0.2 s, which adds up to 0.2 s (0.1 s on
average) to the replication delay itself. The 0.3-0.5 s random pause before each commit lets the
long-poll park and spreads the commits over the poll's phase (a bench: nothing is asserted).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent))

from pg import PgCluster  # noqa: E402
from relay import ByteRelay  # noqa: E402
from run import machine  # noqa: E402
from test_branch import PASSWORD, Office, user  # noqa: E402
from test_cli_client import Client  # noqa: E402

from smartsyncd.core.manifest import content_id  # noqa: E402

EMPTY = content_id(())


def timed_clones(clients: list, url: str, base: Path, tag: str) -> tuple[float, float]:
    """All clients clone at once: (median seconds per user, wall seconds)."""
    times: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        done = clients[i].run("clone", f"{url}/acme", str(base / f"{tag}-{i}"), timeout=600)
        assert done.returncode == 0, done.stderr
        times.append(time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one, range(len(clients))))
    return statistics.median(times), time.monotonic() - started


def login_at(base: Path, name: str, url: str, fingerprint: str) -> Client:
    """A signed-in ``smartsync`` home for ``name`` at ``url`` (central, or a relay in front)."""
    home = base / f"home-{name}"
    home.mkdir()
    client = Client(home)
    done = client.run("login", url, "--user", name, "--password-stdin",
                      "--trust-fingerprint", fingerprint, input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return client


def start_wan_relay(target_port: int) -> tuple[subprocess.Popen[str], int]:
    """``smartsyncd.testing.wanrelay`` at 50 ms / 20 Mbit/s in front of ``target_port``."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "smartsyncd.testing.wanrelay", "--target",
         f"127.0.0.1:{target_port}", "--rtt", "0.05", "--rate", "20000000"],
        stdout=subprocess.PIPE, text=True,
    )
    assert relay.stdout is not None
    line = relay.stdout.readline()  # "relaying 127.0.0.1:PORT -> ..." once it listens
    return relay, int(line.split()[1].rsplit(":", 1)[1])


def central_through(office: Office, port: int) -> None:
    """Point the office link (the byte relay, same port) at ``port``; wait till central answers."""
    office.relay.stop()
    office.relay.target_port = port
    deadline = time.monotonic() + 30
    while True:
        try:
            office.relay.start()  # the same port: the branch's config names it
            break
        except OSError:  # the listener's accept thread has not let go of the port yet
            assert time.monotonic() < deadline, "the office link's port stayed busy"
            time.sleep(0.2)
    while office.branch.request("GET", "/healthz")[1]["branch"]["central"] != "reachable":
        assert time.monotonic() < deadline, "the branch did not reach central through the relay"
        time.sleep(0.2)


def lag_samples(office: Office, commits: int) -> list[float]:
    central_token = office.central.login("alice", PASSWORD)
    branch_token = office.branch.login("bob", PASSWORD)
    head = office.branch.request("GET", "/v1/engagements/acme", token=branch_token)[1]["head"]
    samples: list[float] = []
    for i in range(commits):
        answered: list[float] = []

        def poll(since: int = head, answered: list[float] = answered) -> None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", office.branch.port, context=office.branch.ssl_context(), timeout=60)
            conn.request("GET", f"/v1/engagements/acme/changes?since={since}&wait=30",
                         headers={"Authorization": f"Bearer {branch_token}"})
            body = conn.getresponse().read()
            answered.append(time.monotonic())
            assert json.loads(body)["head"] > since
            conn.close()

        waiter = threading.Thread(target=poll)
        waiter.start()
        # let the long-poll park; random so commits fall at every phase of the 0.2 s replay poll
        time.sleep(0.3 + random.random() * 0.2)
        status, answer = office.central.request(
            "POST", "/v1/engagements/acme/commit", token=central_token,
            json_body={"batch": f"bench-lag-{os.getpid()}-{i}", "changes": [
                {"path": f"lag/{i}.txt", "kind": "put", "base": None, "content": EMPTY,
                 "size": 0, "manifest": []}]},
        )
        committed = time.monotonic()
        assert status == 200, answer
        waiter.join()
        samples.append(answered[0] - committed)
        head = answer["head"]
    return samples


def carry_main(size: int, users: int) -> None:
    from test_branch_carry import CarryOffice

    base = Path(tempfile.mkdtemp(prefix="bench-carry-"))
    primary = PgCluster().start()
    wal = ByteRelay(primary.port).start()
    standby = PgCluster.standby_of(primary, via_port=wal.port).start()
    office = CarryOffice(base, primary, standby, wal, cache_max=None)
    try:
        alice = user(base, "alice", office.central)
        copy = base / "alice"
        assert alice.run("clone", f"{office.central.url}/acme", str(copy)).returncode == 0
        for i in range(10):
            (copy / f"Part {i}.bin").write_bytes(os.urandom(size // 10))
        office.relay.reset()  # alice uploads to central directly: the relay sees the prefetch only
        assert alice.run("sync", str(copy), timeout=600).returncode == 0
        committed = time.monotonic()
        office.wait_carried("acme", office.central_head("acme"))
        prefetched, link = time.monotonic() - committed, office.relay.to_client
        names = ["bob", "carol", "dave", "erin", "alice"][:users]
        (base / "b").mkdir()
        at_branch = [user(base / "b", n, office.branch) for n in names]
        office.relay.reset()
        per_user, wall = timed_clones(at_branch, office.branch.url, base, "carried")
        print(f"machine: {machine()}; office link: loopback")
        print(f"carried engagement of {size} bytes (10 files): complete at the branch {prefetched:.2f} s"
              f" after central's commit answer (replication included; it starts as the commit replays), {link} bytes on the office link"
              f" ({link / size:.3f} copies)")
        print(f"{users} branch users then clone it at once: {office.relay.to_client} bytes on the"
              f" office link; per user median {per_user:.2f} s (wall {wall:.2f} s)")
    finally:
        office.stop()
        standby.stop()
        wal.stop()
        primary.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--wan", action="store_true", help="a 50 ms, 20 Mbit/s office link")
    parser.add_argument("--carry", action="store_true", help="prefetch: the branch carries it")
    args = parser.parse_args()
    if args.carry:
        carry_main(args.mb << 20, args.users)
        return
    relays: list[subprocess.Popen[str]] = []
    base = Path(tempfile.mkdtemp(prefix="bench-branch-"))
    primary = PgCluster().start()
    wal = ByteRelay(primary.port).start()
    standby = PgCluster.standby_of(primary, via_port=wal.port).start()
    office = Office(base, primary, standby, wal)
    try:
        alice = user(base, "alice", office.central)
        copy = base / "alice"
        assert alice.run("clone", f"{office.central.url}/acme", str(copy)).returncode == 0
        size = args.mb << 20
        (copy / "Engagement.bin").write_bytes(os.urandom(size))
        assert alice.run("sync", str(copy), timeout=600).returncode == 0
        standby.wait_replayed()
        names = ["bob", "carol", "dave", "erin", "frank"][: args.users]
        at_branch = [user(base, n, office.branch) for n in names]
        central_url = office.central.url
        if args.wan:
            to_central, wan_port = start_wan_relay(office.central.port)
            direct, direct_port = start_wan_relay(office.central.port)
            relays += [to_central, direct]
            central_through(office, wan_port)
            central_url = f"https://127.0.0.1:{direct_port}"
        office.relay.reset()
        branch_user, branch_wall = timed_clones(at_branch, office.branch.url, base, "branch")
        link = office.relay.to_client
        (base / "c").mkdir()
        central_clients = [login_at(base / "c", n, central_url, office.central.fingerprint)
                           for n in names]
        central_user, central_wall = timed_clones(central_clients, central_url, base, "central")
        lags = sorted(lag_samples(office, args.commits)) or [0.0]
        p99 = lags[min(len(lags) - 1, int(round(0.99 * (len(lags) - 1))))]
        print(f"machine: {machine()}; office link: "
              + ("50 ms RTT, 20 Mbit/s (wanrelay)" if args.wan else "loopback"))
        print(f"{args.users} branch users cloning {size} bytes at once: {link} bytes on the office "
              f"link ({link / size:.3f} copies); per user median {branch_user:.2f} s "
              f"(wall {branch_wall:.2f} s)")
        print(f"same {args.users} users cloning from central directly"
              f"{' across the WAN relay' if args.wan else ''}: per user median "
              f"{central_user:.2f} s (wall {central_wall:.2f} s); {args.users * size} bytes would "
              "cross a WAN")
        print(f"replication lag, central commit answer -> branch long-poll answer, "
              f"{len(lags)} commits: median {statistics.median(lags) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms")
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait()
        office.stop()
        standby.stop()
        wal.stop()
        primary.stop()


if __name__ == "__main__":
    main()
