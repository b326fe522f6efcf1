"""Why the client's memory grows with the file it uploads: request bodies kept by ref cycles.

    python bench/upload_cycles.py SIZE_MIB {plain,collect,release}

One large file uploaded in-process (``SyncCopy.sync``, the real daemon on loopback, no relay)
while the client's RSS is sampled every 0.1 s; then the reference cycles left are collected with
``gc.DEBUG_SAVEALL`` and counted by type. ``plain``: as shipped. ``collect``: ``gc.collect()`` at
every sample (if the peak falls, the memory was garbage in cycles). ``release``: the fix proposed
in bench/RESULTS.md applied by patching ``BytesProducer`` here (it drops its body once produced),
without changing smartsyncd/client.
"""

from __future__ import annotations

import collections
import gc
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402

PASSWORD = "bench password 1"


def rss() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]


def release_bodies() -> None:
    """The proposed fix: a finished or stopped ``BytesProducer`` keeps no body."""
    from smartsyncd.client import bodyproducer

    cls: Any = bodyproducer.BytesProducer
    write, stop = cls._write, cls.stopProducing

    def _write(self: Any) -> None:
        write(self)
        if self._pos >= len(self._body) or self._stopped:
            self._body = memoryview(b"")

    def stopProducing(self: Any) -> None:
        stop(self)
        self._body = memoryview(b"")

    cls._write, cls.stopProducing = _write, stopProducing


async def main(reactor: Any, size: int, mode: str) -> None:
    from twisted.internet import task

    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    work = Path(tempfile.mkdtemp(prefix="smartsync-cycles-"))
    daemon = running_daemon(work / "server")
    try:
        daemon.add_user("bench", PASSWORD)
        eng = daemon.new_engagement("cycles", editors=["bench"])
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        copy = await SyncCopy.clone(api, eng, work / "copy")
        datagen.write_big_file(work / "copy" / "big.bin", size, seed=3)
        peak = [0]

        def sample() -> None:
            if mode == "collect":
                gc.collect()
            peak[0] = max(peak[0], rss())

        sampler = task.LoopingCall(sample)
        sampler.start(0.1)
        await copy.sync(api)
        sampler.stop()
        stats = gc.get_stats()
        print(f"{size >> 20} MiB, {mode}: peak RSS {peak[0] / 1e6:.0f} MB; full (oldest "
              f"generation) collections during the run: {stats[2]['collections']}")
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        bodies = [o for o in gc.garbage if isinstance(o, memoryview) and o.nbytes > 1 << 20]
        print(f"left in unreachable cycles: {found} objects, {len(bodies)} request bodies of "
              f"{sum(b.nbytes for b in bodies) / 1e6:.0f} MB; most common: "
              f"{kinds.most_common(12)}")
        gc.set_debug(0)
        gc.garbage.clear()
        copy.close()
        await api.close()
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    size_mib, how = int(sys.argv[1]), sys.argv[2]
    if how == "release":
        release_bodies()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, size_mib << 20, how)))
