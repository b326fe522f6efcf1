"""Idle cost of ``smartsync watch``'s local-change detection (issue 16): CPU seconds spent by the
system file watcher against the stat walk every second, over a folder of N files, per minute.

Both run in this process on the real reactor (client/watcher.py with the real scanner's stat
walk); nothing changes in the folder, so all the CPU is the cost of waiting. ``process_time``
counts every thread, so watchdog's observer thread is included.

    python bench/watch_idle.py --files 10000 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from smartsyncd.client.scanner import Scanner
from smartsyncd.client.watcher import LocalWatcher, NativeWatcher, PollingWatcher


def make_folder(root: Path, files: int) -> None:
    per_folder = 100
    for i in range(files):
        folder = root / f"section-{i // per_folder:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"paper-{i:05d}.xlsx").write_bytes(os.urandom(64))


async def idle_cpu(watcher: LocalWatcher, scanner: Scanner, seconds: float) -> float:
    signature = await deferToThread(scanner.signature)
    waiting = watcher.changed(watcher.mark(), signature)
    start = time.process_time()
    await task.deferLater(reactor, seconds, lambda: None)
    used = time.process_time() - start
    assert not waiting.called, "the folder changed during the idle run"
    waiting.cancel()
    waiting.addErrback(lambda f: None)
    return used


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.files)
        scanner = Scanner(root)

        def signature_of() -> Deferred:
            return deferToThread(scanner.signature)

        rows: dict[str, list[float]] = {"native": [], "polling 1 s": []}
        for _ in range(args.runs):
            native = NativeWatcher(root, signature_of, reactor)
            native.start(reactor)
            rows["native"].append(await idle_cpu(native, scanner, args.seconds))
            native.stop()
            polling = PollingWatcher(signature_of, reactor, interval=1.0)
            rows["polling 1 s"].append(await idle_cpu(polling, scanner, args.seconds))
        print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{platform.system()} {platform.release()}; {args.files} files, "
              f"{args.seconds:.0f} s idle x {args.runs} runs")
        print("| detection | CPU s per minute idle (median) | share of one core |")
        print("|---|---|---|")
        for name, values in rows.items():
            per_minute = statistics.median(values) * 60 / args.seconds
            print(f"| {name} | {per_minute:.3f} | {per_minute / 60:.2%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    task.react(lambda _r: Deferred.fromCoroutine(main(options)))
