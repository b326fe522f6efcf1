"""Daemon CPU of a 10,000 x 4 KiB initial sync, A/B interleaved between two daemon trees.

    cd /tmp && PYTHONPATH=<client tree> python /work/main/bench/small_server_cpu.py \\
        --before <old tree> [--after <new tree>] [--runs N] [--count N]

Starts two real daemons side by side (tests/integration/daemon.py), each with its own
PYTHONPATH (``--before`` and ``--after``, default: this checkout), and syncs a fresh engagement
of seeded small files (bench/datagen.py) with the same client code (whatever this process
imports: pin it with PYTHONPATH so both daemons meet the same client) through the real
``SyncCopy`` + ``ServerAPI`` over TLS, alternating before/after (and which goes first) per pair.
Prints, per run, wall time and the daemon's and client's CPU seconds (from /proc), then the
medians and the load average. CPU seconds are steadier than wall time on a shared machine.
The daemon's CPU is also split by thread: its reactor (the main thread), the busiest other
thread (with SQLite, the single DB thread that runs every commit batch and pack record) and
the rest (CPU pool: commit body parsing; file pool: pack writes; the read connection).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import Daemon, running_daemon  # noqa: E402
from procstat import cpu_seconds, thread_cpu_seconds  # noqa: E402

PASSWORD = "bench password 1"


def start_daemon(work: Path, label: str, tree: str) -> Daemon:
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = tree  # the daemon imports smartsyncd from this tree
    try:
        return running_daemon(work / label)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


async def one_run(reactor: Any, daemon: Daemon, api: Any, eng: str, work: Path, count: int) -> dict[str, float]:
    from smartsyncd.client.engine import SyncCopy

    directory = work / "copies" / eng
    copy = await SyncCopy.clone(api, eng, directory)
    datagen.write_small_files(directory, count=count)
    os.sync()
    assert daemon.process is not None
    d0, c0 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
    t0 = thread_cpu_seconds(daemon.process.pid)
    start = time.perf_counter()
    report = await copy.sync(api)
    wall = time.perf_counter() - start
    d1, c1 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
    t1 = thread_cpu_seconds(daemon.process.pid)
    copy.close()
    assert report.uploaded == count, report
    used = {tid: t1[tid] - t0.get(tid, 0.0) for tid in t1}
    reactor = used.pop(daemon.process.pid, 0.0)
    busiest = max(used.values(), default=0.0)
    return {
        "wall": wall, "daemon": d1 - d0, "client": c1 - c0, "load": os.getloadavg()[0],
        "reactor": reactor, "busiest": busiest, "rest": sum(used.values()) - busiest,
    }


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    work = Path(tempfile.mkdtemp(prefix="small-server-cpu-"))
    trees = {"before": args.before, "after": args.after}
    daemons: dict[str, Daemon] = {}
    try:
        apis = {}
        for label, tree in trees.items():
            daemon = daemons[label] = start_daemon(work, label, tree)
            daemon.add_user("bench", PASSWORD)
            api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
            await api.login("bench", PASSWORD)
            apis[label] = api
        results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for run in range(args.runs):
            order = ("before", "after") if run % 2 == 0 else ("after", "before")
            for label in order:
                eng = daemons[label].new_engagement(f"small-{label}-{run}", editors=["bench"])
                r = await one_run(reactor, daemons[label], apis[label], eng, work, args.count)
                results[label].append(r)
                print(f"run {run} {label:6}: wall {r['wall']:.2f} s, daemon CPU {r['daemon']:.2f} s"
                      f" (reactor {r['reactor']:.2f}, busiest thread {r['busiest']:.2f}, rest {r['rest']:.2f}),"
                      f" client CPU {r['client']:.2f} s, load {r['load']:.2f}", flush=True)
                shutil.rmtree(work / "copies" / eng, ignore_errors=True)
        for label in ("before", "after"):
            rs = results[label]
            print(f"{label:6} ({trees[label]}): median wall {statistics.median(r['wall'] for r in rs):.2f} s,"
                  f" daemon CPU {statistics.median(r['daemon'] for r in rs):.2f} s"
                  f" (reactor {statistics.median(r['reactor'] for r in rs):.2f},"
                  f" busiest thread {statistics.median(r['busiest'] for r in rs):.2f},"
                  f" rest {statistics.median(r['rest'] for r in rs):.2f}),"
                  f" client CPU {statistics.median(r['client'] for r in rs):.2f} s over {len(rs)} runs;"
                  f" load {min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f}")
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="the tree the 'before' daemon imports")
    parser.add_argument("--after", default=str(HERE.parent), help="the tree the 'after' daemon imports")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, ns)))
