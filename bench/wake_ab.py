"""Wake-up CPU, A/B: two real daemons (two source trees) answer the same fan-out in turns.

    python bench/wake_ab.py --before /tmp/base_tree [--after .] [--sessions 2000] [--rounds 15]

Both daemons (``twistd smartsync``, SQLite, TLS on loopback) run at the same time, each with
``--holders`` holder processes keeping ``--sessions`` long-polls parked (the selectors holders
of bench/sessions.py: every answer read completely over TLS and checked: 200, the new head, the
change). Then, round after round and alternating which daemon goes first, each daemon gets one
commit; once every holder has its answers, the daemon's reactor CPU for the round is read (main
thread, ``/proc/PID/schedstat``, ns resolution) and the holders poll again with the new head.
Both sides see the same machine load, round by round, so the medians compare the trees even on a
busy machine. Per round and side: reactor CPU per answer (the commit request included), the last
answer's delay after the commit was sent, and the holders' CPU per answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE))

from daemon import Daemon, running_daemon  # noqa: E402
from sessions import (  # noqa: E402
    ENGAGEMENT,
    PASSWORD,
    _empty_content,
    cpu_seconds,
    raise_fd_limit,
    reactor_cpu_seconds,
    threads_cpu_seconds,
    wait_quiet,
)


class Side:
    """One daemon running one source tree, with its holders."""

    def __init__(self, name: str, tree: Path, work: Path, sessions: int, holders: int) -> None:
        self.name = name
        self.tree = tree
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(tree)  # the daemon and the admin CLI import this tree
        try:
            self.daemon: Daemon = running_daemon(work, name=f"daemon-{name}")
            d = self.daemon
            d.admin("user", "add", "bench", "--password-stdin", input=PASSWORD + "\n")
            d.admin("engagement", "create", ENGAGEMENT)
            d.admin("grant", ENGAGEMENT, "--user", "bench", "--role", "editor")
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        self.token = d.login("bench", PASSWORD)
        status, answer = d.request("GET", f"/v1/engagements/{ENGAGEMENT}", token=self.token)
        assert status == 200, answer
        head = int(answer["head"])
        assert d.process is not None
        self.pid = d.process.pid
        shares = [sessions // holders + (1 if i < sessions % holders else 0) for i in range(holders)]
        self.holders = [
            subprocess.Popen(
                [sys.executable, str(HERE / "sessions.py"), "--holder", "--holder-kind", "selectors",
                 "--rounds-held", "1000000", "--n", str(share), "--port", str(d.port),
                 "--cafile", str(d.cert_path), "--token", self.token, "--since", str(head)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for share in shares
        ]
        for p in self.holders:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"holder failed\n{d.log_text()[-3000:]}")
        self.sessions = sessions
        self.round = 0

    def wake(self) -> dict[str, float]:
        """One commit; wait for every answer; the round's figures; the holders poll again."""
        wait_quiet(self.pid, window=0.5)
        self.round += 1
        commit = {"batch": f"wake-{self.round}", "changes": [
            {"path": f"wake-{self.round}.txt", "kind": "put", "base": None, "size": 0, "manifest": [],
             "content": _empty_content()}]}
        reactor0 = reactor_cpu_seconds(self.pid)
        threads0 = threads_cpu_seconds(self.pid)
        cpu0 = cpu_seconds(self.pid)
        t0 = time.time()
        status, answer = self.daemon.request(
            "POST", f"/v1/engagements/{ENGAGEMENT}/commit", json_body=commit, token=self.token
        )
        assert status == 200, answer
        t_commit = time.time() - t0
        last, first, holder_cpu, errors = 0.0, float("inf"), 0.0, 0
        for p in self.holders:
            assert p.stdout is not None
            report = json.loads(p.stdout.readline())
            last = max([last, *report["answered"]])
            first = min([first, *report["answered"]])
            holder_cpu += report["cpu_s"]
            errors += report["n_errors"]
            if report["n_errors"]:
                print(self.name, "holder errors:", report["errors"], file=sys.stderr)
        reactor_cpu = reactor_cpu_seconds(self.pid) - reactor0
        threads_cpu = threads_cpu_seconds(self.pid) - threads0
        cpu = cpu_seconds(self.pid) - cpu0
        for p in self.holders:
            assert p.stdin is not None
            p.stdin.write("next\n")
            p.stdin.flush()
        n = self.sessions
        return {
            "errors": errors, "commit_ms": t_commit * 1000, "first_ms": (first - t0) * 1000,
            "last_ms": (last - t0) * 1000, "reactor_us": reactor_cpu * 1e6 / n,
            "threads_us": threads_cpu * 1e6 / n,
            "process_us": cpu * 1e6 / n, "holder_us": holder_cpu * 1e6 / n,
            "load": os.getloadavg()[0],
        }

    def stop(self) -> None:
        for p in self.holders:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="source tree (checkout) of the 'before' daemon")
    parser.add_argument("--after", default=str(HERE.parent), help="source tree of the 'after' daemon")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--holders", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--spy", help="py-spy (raw, --gil --native --nonblocking, 500/s) on the 'after' daemon for all rounds: file")
    args = parser.parse_args()
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="smartsync-wake-ab-"))
    sides: list[Side] = []
    spy: subprocess.Popen[bytes] | None = None
    rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        sides = [Side("before", Path(args.before).resolve(), work, args.sessions, args.holders),
                 Side("after", Path(args.after).resolve(), work, args.sessions, args.holders)]
        if args.spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(sides[1].pid), "-o", args.spy, "-f", "raw", "-r", "500", "--nonblocking", "--gil",
                 "--native"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        for i in range(args.rounds):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                row = side.wake()
                rows[side.name].append(row)
                print(json.dumps({"side": side.name, "round": i, **{k: round(v, 2) for k, v in row.items()}}),
                      flush=True)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        for side in sides:
            try:
                side.stop()
            except RuntimeError as e:  # a daemon slow to stop: report it, stop the other one too
                print(f"{side.name}: {str(e)[:300]}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.sessions} sessions, {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at the end; medians:")
    for name, got in rows.items():
        if got:
            med = {k: statistics.median(r[k] for r in got) for k in got[0]}
            print(f"  {name}: reactor CPU {med['reactor_us']:.1f} us/answer (all threads {med['threads_us']:.1f}), "
                  f"commit answer {med['commit_ms']:.0f} ms, first answer {med['first_ms']:.0f} ms, "
                  f"last answer {med['last_ms']:.0f} ms, holders {med['holder_us']:.1f} us/answer, "
                  f"errors {sum(r['errors'] for r in got):.0f}")


if __name__ == "__main__":
    main()
