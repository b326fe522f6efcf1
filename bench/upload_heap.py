"""What the client holds per chunk of a large upload: a tracemalloc ranking at the peak.

    python bench/upload_heap.py SIZE_MIB [--top 15]

One seeded random file uploaded in-process (``SyncCopy.sync`` against the real daemon on
loopback, as bench/upload_cycles.py). Every 0.25 s the traced heap is sampled; at each new
maximum a snapshot is taken, and the last one (the peak) is ranked by allocating line, with
bytes per chunk of the file beside each line (tracemalloc, so the run is several times slower).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402

PASSWORD = "bench password 1"


async def main(reactor: Any, size: int, top: int) -> None:
    from twisted.internet import task

    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    work = Path(tempfile.mkdtemp(prefix="smartsync-heap-"))
    daemon = running_daemon(work / "server")
    try:
        daemon.add_user("bench", PASSWORD)
        eng = daemon.new_engagement("heap", editors=["bench"])
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        copy = await SyncCopy.clone(api, eng, work / "copy")
        datagen.write_big_file(work / "copy" / "big.bin", size, seed=3)
        tracemalloc.start(8)
        best: list[Any] = [0, None]

        def sample() -> None:
            now = tracemalloc.get_traced_memory()[0]
            if now > best[0] * 1.02:
                best[0], best[1] = now, tracemalloc.take_snapshot()

        sampler = task.LoopingCall(sample)
        sampler.start(0.25)
        await copy.sync(api)
        sampler.stop()
        peak = tracemalloc.get_traced_memory()[1]
        chunks = len(copy.state.get("big.bin").chunks or ())  # type: ignore[attr-defined]
        print(f"{size >> 20} MiB, {chunks} chunks: traced peak {peak / 1e6:.0f} MB, "
              f"largest sample {best[0] / 1e6:.0f} MB")
        stats = best[1].filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        for stat in stats.statistics("traceback")[:top]:
            frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[::-1][:4])
            print(f"{stat.size / 1e6:8.1f} MB {stat.size / max(chunks, 1):7.0f} B/chunk "
                  f"{stat.count:9d} blocks  {frames}")
        copy.close()
        await api.close()
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mib", type=int)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, args.size_mib << 20, args.top)))
