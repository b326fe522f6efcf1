"""Where the time of a 10,000 x 4 KiB initial sync goes: phase timings, optional py-spy.

    python bench/small_profile.py [--count N] [--spy DIR] [--runs N]

Starts the real daemon (tests/integration/daemon.py), clones a fresh engagement per run,
writes the seeded small files (bench/datagen.py) and times one ``SyncCopy.sync`` (and its scan+early upload, push and pull) through the
real ``ServerAPI`` over TLS; the client calls are wrapped only to time them (the wrapped
methods run unchanged). With ``--spy DIR`` py-spy samples the daemon and this process during
the sync and writes raw (collapsed-stack) profiles there. Prints the phase times, the client's
and daemon's CPU seconds (from /proc; the client's also for its reactor thread alone: the rest
is its thread pool: scan, state writes, compression) and the load average.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402
from procstat import cpu_seconds, thread_cpu_seconds  # noqa: E402

PASSWORD = "bench password 1"


class GCTimer:
    """CPU time this process spends in cyclic garbage collections (gc.callbacks, per thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self.by_generation = [0.0, 0.0, 0.0]
        self._start = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            took = time.thread_time() - self._start
            self.seconds += took
            self.by_generation[info["generation"]] += took
            self.collections[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds, self.collections, self.by_generation = 0.0, [0, 0, 0], [0.0, 0.0, 0.0]


def timed(phases: dict[str, float], name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

    return wrapper


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    work = Path(tempfile.mkdtemp(prefix="small-profile-"))
    daemon = running_daemon(work / "server")
    try:
        daemon.add_user("bench", PASSWORD)
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        phases: dict[str, float] = {}
        for name in ("missing_chunks", "upload_chunks", "commit", "changes", "report_copy"):
            setattr(api, name, timed(phases, name, getattr(api, name)))
        walls: list[float] = []
        gc_timer = GCTimer()
        for run in range(args.runs):
            phases.clear()
            eng = daemon.new_engagement(f"small-{run}", editors=["bench"])
            directory = work / "copies" / eng
            copy = await SyncCopy.clone(api, eng, directory)
            if args.ab:  # alternate: even runs without early commits, odd runs with them
                copy.early_commit_files = 10**9 if run % 2 == 0 else args.ab
            for name in ("_scan_and_upload", "_commit_early", "_push", "_pull"):
                if hasattr(copy, name):  # (an older tree on PYTHONPATH may lack some)
                    setattr(copy, name, timed(phases, name.strip("_"), getattr(copy, name)))
            datagen.write_small_files(directory, count=args.count)
            os.sync()
            spies: list[subprocess.Popen[bytes]] = []
            if args.spy:
                out = Path(args.spy)
                out.mkdir(parents=True, exist_ok=True)
                assert daemon.process is not None
                for label, pid in (("daemon", daemon.process.pid), ("client", os.getpid())):
                    spies.append(subprocess.Popen(
                        ["py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "250", "--threads",
                         "-o", str(out / f"{label}-{run}.txt")] + (["--gil"] if args.gil else []),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ))
                time.sleep(1.0)  # py-spy attaches before the sync starts (bench only)
            assert daemon.process is not None
            d0, c0 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
            t0 = thread_cpu_seconds(os.getpid())
            gc_timer.reset()
            start = time.perf_counter()
            report = await copy.sync(api)
            wall = time.perf_counter() - start
            d1, c1 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
            t1 = thread_cpu_seconds(os.getpid())
            main_tid = threading.get_native_id()
            reactor_cpu = t1.get(main_tid, 0.0) - t0.get(main_tid, 0.0)
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait()
            assert report.uploaded == args.count, report
            walls.append(wall)
            print(f"run {run}: wall {wall:.2f} s, client CPU {c1 - c0:.2f} s (reactor thread"
                  f" {reactor_cpu:.2f}; in gc {gc_timer.seconds:.2f} s, {gc_timer.collections} collections taking"
                  f" {[round(t, 2) for t in gc_timer.by_generation]} s per generation), daemon CPU {d1 - d0:.2f} s;"
                  " " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
                  + f"; load {os.getloadavg()[0]:.2f}", flush=True)
            copy.close()
        print(f"median wall {statistics.median(walls):.2f} s over {len(walls)} runs")
        if args.ab:
            print(f"A (no early commits) median {statistics.median(walls[0::2]):.2f} s,"
                  f" B (early commits of {args.ab}) median {statistics.median(walls[1::2]):.2f} s")
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--ab", type=int, default=0,
                        help="A/B: even runs without early commits, odd runs with batches of AB files")
    parser.add_argument("--spy", help="folder for py-spy raw profiles of daemon and client")
    parser.add_argument("--gil", action="store_true",
                        help="py-spy samples only the thread holding the GIL (CPU, not waits)")
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, ns)))
