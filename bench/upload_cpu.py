"""Where a large initial upload spends its time and CPU: wall time, MB/s, CPU-seconds of the
client and of the daemon per thread, for ``--runs`` uploads of a seeded random file.

    python bench/upload_cpu.py [--mb 256] [--runs 5] [--spy DIR]

Straight to the real daemon over TLS on loopback (no proxy), the client library in this
process. CPU comes from /proc (user + system per thread), so it is less sensitive to a busy
machine than wall time. To compare with another checkout, run this script with
``PYTHONPATH=/path/to/other/checkout`` (the daemon inherits it); alternate the two. With
``--spy DIR`` py-spy samples the daemon and this process during each upload (raw profiles).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402
from procstat import thread_cpu_seconds  # noqa: E402

MiB = 1 << 20
T = TypeVar("T")
PASSWORD = "bench password 1"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU-seconds per thread of ``pid`` (thread name + id), from /proc."""
    out: dict[str, float] = {}
    for tid, seconds in thread_cpu_seconds(pid).items():
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        out[f"{name}-{tid}"] = seconds
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (fresh memory touched: large buffers allocated anew)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def thread_names(pid: int) -> dict[str, str]:
    """Thread id -> Python thread name of ``pid`` (from ``py-spy dump``; {} without py-spy)."""
    try:
        out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for line in out.splitlines():
        if line.startswith("Thread ") and '"' in line:
            names[line.split()[1]] = line.split('"')[1].rstrip("0123456789").rstrip("-")
    return names


def by_pool(cpu: dict[str, float], names: dict[str, str]) -> str:
    """CPU-seconds per named thread group (the reactor is MainThread; pools by name)."""
    out: dict[str, float] = {}
    for key, value in cpu.items():
        name = names.get(key.rsplit("-", 1)[1], "other")
        out[name] = out.get(name, 0.0) + value
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(out.items(), key=lambda kv: -kv[1]))


def split_main(cpu: dict[str, float], pid: int) -> tuple[float, float]:
    """(CPU of the main thread, i.e. the reactor, and of all other threads) of process ``pid``."""
    main = sum(v for k, v in cpu.items() if k.rsplit("-", 1)[1] == str(pid))
    return main, sum(cpu.values()) - main


@dataclass
class Measured:
    """One timed transfer: wall seconds, CPU per thread of the daemon and of this process, and
    the two processes' minor page faults."""

    seconds: float
    daemon: dict[str, float]
    client: dict[str, float]
    faults: tuple[int, int]

    def split_line(self, pid: int) -> str:
        """The reactor-thread / pool-threads split of both ends, and the page faults."""
        dm, dp = split_main(self.daemon, pid)
        cm, cp = split_main(self.client, os.getpid())
        return (f"  daemon: reactor thread {dm:.2f}, pool threads {dp:.2f}; "
                f"client: reactor thread {cm:.2f}, pool threads {cp:.2f}; minor page faults: "
                f"daemon {self.faults[0]}, client {self.faults[1]}")


async def measured(transfer: Awaitable[T], pid: int, spy: str | None, label: str) -> tuple[Measured, T]:
    """Await ``transfer`` (a coroutine: it starts when awaited) and measure it against the daemon
    ``pid``; with ``spy`` (a folder), py-spy records both processes meanwhile (raw profiles
    ``{daemon,client}-{label}.txt``). Its result comes back beside the figures."""
    spies = []
    if spy:
        Path(spy).mkdir(parents=True, exist_ok=True)
        for who, spied in (("daemon", pid), ("client", os.getpid())):
            spies.append(subprocess.Popen(
                ["py-spy", "record", "-p", str(spied), "-f", "raw", "-r", "250", "--threads",
                 "-o", str(Path(spy) / f"{who}-{label}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        time.sleep(1.0)  # py-spy attaches before the transfer starts (bench only)
    d0, c0 = thread_cpu(pid), thread_cpu(os.getpid())
    f0 = minor_faults(pid), minor_faults(os.getpid())
    start = time.perf_counter()
    result = await transfer
    seconds = time.perf_counter() - start
    d1, c1 = thread_cpu(pid), thread_cpu(os.getpid())
    f1 = minor_faults(pid), minor_faults(os.getpid())
    for running in spies:
        running.send_signal(signal.SIGINT)
        running.wait()
    return Measured(seconds, delta(d1, d0), delta(c1, c0), (f1[0] - f0[0], f1[1] - f0[1])), result


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import smartsyncd
    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    print(f"smartsyncd from {Path(smartsyncd.__file__).parent}; load average {os.getloadavg()[0]:.2f}")
    if args.window:  # an experiment: the client's upload window (one request each) in MiB
        from smartsyncd.client import chunkpacking, push

        push.BULK_UPLOAD_WINDOW_BYTES = int(args.window * MiB)
        chunkpacking.UPLOAD_BODY_LIMIT = max(chunkpacking.UPLOAD_BODY_LIMIT, int(args.window * MiB) + (1 << 20))
    if args.in_flight:
        from smartsyncd.client import early, push

        push.BULK_UPLOADS_IN_FLIGHT = args.in_flight
        if hasattr(early, "STREAM_IN_FLIGHT"):  # a new large file's windows (issue 15, s13)
            early.STREAM_IN_FLIGHT = args.in_flight
    work = Path(tempfile.mkdtemp(prefix="smartsync-upload-cpu-"))
    daemon = running_daemon(work / "server")
    rows = []
    try:
        daemon.add_user("bench", PASSWORD)
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        pid = daemon.process.pid
        for run in range(args.runs):
            name = daemon.new_engagement(f"up-{run}", editors=["bench"])
            directory = work / "copies" / name
            copy = await SyncCopy.clone(api, name, directory)
            datagen.write_big_file(directory / "big.bin", args.mb * MiB, seed=run + 1)
            m, _ = await measured(copy.sync(api), pid, args.spy, str(run))
            copy.close()
            dd, cd = m.daemon, m.client
            main_thread = max(dd.values()) if dd else 0.0
            rows.append((m.seconds, sum(dd.values()), main_thread, sum(cd.values())))
            print(f"run {run + 1}: {m.seconds:.2f} s = {args.mb * MiB / m.seconds / 1e6:.0f} MB/s; "
                  f"daemon CPU {sum(dd.values()):.2f} s (busiest thread {main_thread:.2f}); "
                  f"client CPU {sum(cd.values()):.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)
            print(m.split_line(pid), flush=True)
            if args.threads:
                print(f"  daemon by thread: {by_pool(dd, thread_names(pid))}", flush=True)
        await api.close()
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)  # a 256 MiB file and its packs per run
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median of {args.runs}: {args.mb * MiB / med[0] / 1e6:.0f} MB/s ({med[0]:.2f} s); "
          f"daemon CPU {med[1]:.2f} s (busiest thread {med[2]:.2f}); client CPU {med[3]:.2f} s; "
          f"both {med[1] + med[3]:.2f} CPU-s per {args.mb} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, help="client upload window in MiB (experiment)")
    parser.add_argument("--in-flight", type=int, help="client upload requests in flight (experiment)")
    parser.add_argument("--threads", action="store_true",
                        help="name the daemon's threads (py-spy dump) and print CPU per pool")
    parser.add_argument("--spy", help="folder for py-spy raw profiles of the daemon and the client")
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
