"""Branch office figures (issue 18): bytes on the office link for N branch users pulling one
file, time per user at the branch beside pulling from central, and the replication lag from a
central commit to the branch's long-poll answer.

    python bench/branch.py [--mb 20] [--users 5] [--commits 100]

All real and on loopback: a PostgreSQL 15 primary and a streaming standby (through a relay,
like the office link), a central ``twistd smartsync`` on the primary and a branch one on the
standby, the ``smartsync`` CLI for every user, and a byte-counting relay between branch and
central (tests/integration/relay.py). No WAN emulation (no delay, no rate cap): the time rows
show the CPU cost of the branch's path, not a WAN's; the byte rows are what a WAN would carry.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--commits", type=int, default=100)
    args = parser.parse_args()
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
        office.relay.reset()
        branch_user, branch_wall = timed_clones(at_branch, office.branch.url, base, "branch")
        link = office.relay.to_client
        (base / "c").mkdir()
        central_clients = [user(base / "c", n, office.central) for n in names]
        central_user, central_wall = timed_clones(central_clients, office.central.url, base, "central")
        lags = sorted(lag_samples(office, args.commits))
        p99 = lags[min(len(lags) - 1, int(round(0.99 * (len(lags) - 1))))]
        print(f"machine: {machine()}")
        print(f"{args.users} branch users cloning {size} bytes at once: {link} bytes on the office "
              f"link ({link / size:.3f} copies); per user median {branch_user:.2f} s "
              f"(wall {branch_wall:.2f} s)")
        print(f"same {args.users} users cloning from central directly: per user median "
              f"{central_user:.2f} s (wall {central_wall:.2f} s); {args.users * size} bytes would "
              "cross a WAN")
        print(f"replication lag, central commit answer -> branch long-poll answer, "
              f"{len(lags)} commits: median {statistics.median(lags) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms")
    finally:
        office.stop()
        standby.stop()
        wal.stop()
        primary.stop()


if __name__ == "__main__":
    main()
