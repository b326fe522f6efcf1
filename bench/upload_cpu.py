"""Where a large initial upload spends its time and CPU: wall time, MB/s, CPU-seconds of the
client and of the daemon per thread, for ``--runs`` uploads of a seeded random file.

    python bench/upload_cpu.py [--mb 256] [--runs 5]

Straight to the real daemon over TLS on loopback (no proxy), the client library in this
process. CPU comes from /proc (user + system per thread), so it is less sensitive to a busy
machine than wall time. To compare with another checkout, run this script with
``PYTHONPATH=/path/to/other/checkout`` (the daemon inherits it); alternate the two.
"""

from __future__ import annotations

import argparse
import os
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
from daemon import running_daemon  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password 1"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU-seconds per thread of ``pid`` (thread name + id), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        out[f"{name}-{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import smartsyncd
    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    print(f"smartsyncd from {Path(smartsyncd.__file__).parent}; load average {os.getloadavg()[0]:.2f}")
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
            d0, c0 = thread_cpu(pid), thread_cpu(os.getpid())
            start = time.perf_counter()
            await copy.sync(api)
            seconds = time.perf_counter() - start
            d1, c1 = thread_cpu(pid), thread_cpu(os.getpid())
            copy.close()
            dd, cd = delta(d1, d0), delta(c1, c0)
            main_thread = max(dd.values()) if dd else 0.0
            rows.append((seconds, sum(dd.values()), main_thread, sum(cd.values())))
            print(f"run {run + 1}: {seconds:.2f} s = {args.mb * MiB / seconds / 1e6:.0f} MB/s; "
                  f"daemon CPU {sum(dd.values()):.2f} s (busiest thread {main_thread:.2f}); "
                  f"client CPU {sum(cd.values()):.2f} s", flush=True)
        await api.close()
    finally:
        daemon.stop()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median of {args.runs}: {args.mb * MiB / med[0] / 1e6:.0f} MB/s ({med[0]:.2f} s); "
          f"daemon CPU {med[1]:.2f} s (busiest thread {med[2]:.2f}); client CPU {med[3]:.2f} s; "
          f"both {med[1] + med[3]:.2f} CPU-s per {args.mb} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MiB")
    parser.add_argument("--runs", type=int, default=5)
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
