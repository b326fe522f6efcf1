"""What the copy lock and the "sync in progress" marker cost (client/copylock.py).

    python bench/copylock.py [--files N] [--runs N]

Times, on the real file system of a temp folder: taking and giving up the lock (once per
``SyncCopy.open``/``close``); ``begin_sync`` + ``end_sync`` of a clean sync (create the marker,
fsync it and its folder, unlink it: paid by every sync); and the one walk after an interrupted
sync over a folder of N files in N/100 folders holding 10 orphaned temp files. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smartsyncd.client.copylock import (  # noqa: E402
    CopyLock,
    begin_sync,
    end_sync,
    remove_stale_temps,
)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp) / "copy"
        (root / ".smartsync").mkdir(parents=True)
        lock_t, marker_t, walk_t = [], [], []
        for _ in range(max(args.runs, 1) * 20):
            t = time.perf_counter()
            CopyLock.acquire(root).release()
            lock_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            begin_sync(root)
            end_sync(root)
            marker_t.append(time.perf_counter() - t)
        for i in range(args.files):
            folder = root / f"d{i % max(args.files // 100, 1)}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i}.txt").write_bytes(b"x")
        for _ in range(args.runs):
            for i in range(10):
                (root / f"d{i}" / f".~smartsync-{i:032x}.tmp").write_bytes(b"half")
            t = time.perf_counter()
            assert remove_stale_temps(root) == 10
            walk_t.append(time.perf_counter() - t)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"lock acquire + release: {median_ms(lock_t):.3f} ms (median of {len(lock_t)})")
    print(f"clean sync marker (create+fsync+fsync dir+unlink): {median_ms(marker_t):.3f} ms "
          f"(median of {len(marker_t)})")
    print(f"walk after an interrupted sync, {args.files} files, 10 orphans removed: "
          f"{median_ms(walk_t):.1f} ms (median of {len(walk_t)})")


if __name__ == "__main__":
    main()
