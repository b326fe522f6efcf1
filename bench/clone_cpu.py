"""The daemon's CPU per clone (issue 15, s13: the fetch stream's compression costs daemon CPU).

    python bench/clone_cpu.py [--only 50] [--clone-rounds 5] [--files 1000] --base-code DIR [--compile]

``bench/wan.py --clone-rounds`` (same arguments: ours, then the ``--base-code`` checkout's
client, then rsync, each round) with the daemon's user + system CPU (``/proc/PID/stat``, all its
threads) read before and after each clone. The daemon is this checkout's in both cases: the
base client does not ask for the stream, so the difference is what the stream costs the daemon.
Linux only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wan  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
_cpu: dict[str, list[float]] = {}
_bench: list[Any] = []


def _daemon_cpu() -> float:
    pid = int(_bench[0].daemon.pidfile.read_text().strip())
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def main() -> None:
    start, run = wan.WanBench.start, wan.deferred_run

    def starting(self: Any) -> None:
        start(self)
        _bench.append(self)

    async def measured_run(cmd: list[str], env: dict[str, str]) -> None:
        kind = "rsync" if cmd[0] == "rsync" else "base" if "PYTHONPATH" in env else "ours"
        before = _daemon_cpu()
        await run(cmd, env)
        used = _daemon_cpu() - before
        _cpu.setdefault(kind, []).append(used)
        print(f"{kind}: daemon CPU {used:.2f} s", flush=True)

    wan.WanBench.start = starting  # type: ignore[method-assign]
    wan.deferred_run = measured_run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="50")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--clone-rounds", type=int, default=5)
    parser.add_argument("--base-code", metavar="DIR")
    parser.add_argument("--compile", action="store_true")
    ns = parser.parse_args()
    # the rest of wan.py's options, as its defaults
    ns.runs, ns.slow_runs, ns.slow_files, ns.profile, ns.trace = 3, 1, ns.files, None, False
    from twisted.internet import defer, task

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(wan.main(r, ns)))
    finally:
        for kind, got in _cpu.items():
            print(f"daemon CPU per clone, {kind}: median {statistics.median(got):.2f} s; runs "
                  + ", ".join(f"{g:.2f}" for g in got))


if __name__ == "__main__":
    main()
