"""Where a large download spends its time and CPU: wall time, MB/s, CPU-seconds of the client
and of the daemon per thread, for ``--runs`` clones of an engagement holding one seeded random
file (uploaded once, before the first run, not timed).

    python bench/download_cpu.py [--mb 256] [--runs 5] [--spy DIR] [--threads]

The twin of bench/upload_cpu.py, in the other direction: straight to the real daemon over TLS
on loopback, the client library in this process, CPU from /proc. To compare with another
checkout, run it with ``PYTHONPATH=/path/to/other/checkout`` (the daemon inherits it) and
alternate the two. With ``--spy DIR`` py-spy samples the daemon and this process during each
clone (raw profiles, one line per stack).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402
from upload_cpu import by_pool, measured, thread_names  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password 1"


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import smartsyncd
    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    print(f"smartsyncd from {Path(smartsyncd.__file__).parent}; load average {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="smartsync-download-cpu-"))
    daemon = running_daemon(work / "server")
    rows = []
    try:
        daemon.add_user("bench", PASSWORD)
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        pid = daemon.process.pid
        name = daemon.new_engagement("down", editors=["bench"])
        source = await SyncCopy.clone(api, name, work / "source")
        datagen.write_big_file(work / "source" / "big.bin", args.mb * MiB, seed=1)
        await source.sync(api)
        source.close()
        for run in range(args.runs):
            directory = work / "clones" / f"clone-{run}"
            m, copy = await measured(SyncCopy.clone(api, name, directory), pid, args.spy, f"down-{run}")
            copy.close()
            if (directory / "big.bin").stat().st_size != args.mb * MiB:
                raise RuntimeError("the clone did not bring the whole file")
            shutil.rmtree(directory)
            dd, cd = m.daemon, m.client
            rows.append((m.seconds, sum(dd.values()), sum(cd.values())))
            print(f"run {run + 1}: {m.seconds:.2f} s = {args.mb * MiB / m.seconds / 1e6:.0f} MB/s; "
                  f"daemon CPU {sum(dd.values()):.2f} s; client CPU {sum(cd.values()):.2f} s; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            print(m.split_line(pid), flush=True)
            if args.threads:
                print(f"  daemon by thread: {by_pool(dd, thread_names(pid))}", flush=True)
                print(f"  client by thread: {by_pool(cd, thread_names(os.getpid()))}", flush=True)
        await api.close()
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median of {args.runs}: {args.mb * MiB / med[0] / 1e6:.0f} MB/s ({med[0]:.2f} s); "
          f"daemon CPU {med[1]:.2f} s; client CPU {med[2]:.2f} s; "
          f"both {med[1] + med[2]:.2f} CPU-s per {args.mb} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", action="store_true",
                        help="name the threads (py-spy dump) and print CPU per pool")
    parser.add_argument("--spy", help="folder for py-spy raw profiles of the daemon and the client")
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
