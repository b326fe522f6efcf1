"""A real project's history replayed one commit per sync, smartsync beside rsync -az (issue 15).

    python bench/replay.py --repo PATH/TO/REPO.git [--commits 59] [--rtt 0.05] [--rate-mbit 20]

Takes the last ``--commits`` commits on the first-parent line of a git repository's HEAD and,
for each in turn, makes two folders hold that commit's tree: the smartsync copy and rsync's
source. Files are updated as an editor would (``rsync -r --checksum --delete`` from a
``git archive`` of the commit, without times: an unchanged file keeps its date, a changed one
gets the time of the edit). After each commit the real ``smartsync sync`` and ``rsync -az
--delete`` to an rsync daemon run through the same emulated link (smartsyncd.testing.wanrelay),
one after the other; the relay counts each tool's bytes (TCP payload) and turns.

The first commit's tree is the initial upload (its own row); the rows after it are the replay:
total bytes over all the commits' syncs, the median per sync, and a no-op sync at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from wan import PASSWORD, Sample, WanBench, fmt_b, smartsync_cmd  # noqa: E402

from smartsyncd.testing.wanrelay import LinkSettings, listen_relay  # noqa: E402


def first_parent_commits(repo: Path, count: int) -> list[str]:
    """The last ``count`` commits of HEAD's first-parent line, oldest first."""
    out = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-list", "--first-parent", "-n", str(count), "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return out[::-1]


def materialize(repo: Path, commit: str, scratch: Path, targets: list[Path]) -> None:
    """Make each of ``targets`` hold ``commit``'s tree (its .smartsync folder kept)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", commit],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rsync", "-r", "--checksum", "--delete", "--exclude", "/.smartsync",
                        f"{scratch}/", f"{target}/"], check=True)


class ReplayBench(WanBench):
    async def replay(self, repo: Path, commits: list[str], settings: LinkSettings) -> str:
        ours_relay, ours_f = listen_relay(self.reactor, self.daemon.port, settings)
        rsync_relay, theirs_f = listen_relay(self.reactor, self.rsync.port, settings)
        ours, theirs = ours_f.counters, theirs_f.counters
        url = f"https://127.0.0.1:{ours_relay.getHost().port}"
        rsync_url = f"rsync://127.0.0.1:{rsync_relay.getHost().port}/bench/"
        cli = [*smartsync_cmd(), "--quiet", "--config-dir", str(self.config)]
        rsync = ["rsync", "-az", "--delete"]
        mine, src, scratch = self.work / "mine", self.work / "src", self.work / "scratch"
        steps: list[tuple[Sample, Sample]] = []
        try:
            await self.run([*cli, "--trust-fingerprint", self.daemon.fingerprint, "login", url,
                            "--user", "bench", "--password-stdin"], stdin=PASSWORD + "\n")
            eng = self.daemon.new_engagement("replay", editors=["bench"])
            await self.run([*cli, "clone", f"{url}/{eng}", str(mine)])
            for i, commit in enumerate([*commits, commits[-1]]):  # the last again: a no-op
                materialize(repo, commit, scratch, [mine, src])
                os.sync()
                pair = (await self.measured(ours, [*cli, "sync", str(mine)]),
                        await self.measured(theirs, [*rsync, f"{src}/", rsync_url]))
                steps.append(pair)
                print(f"{i:3d} {commit[:10]}: ours {pair[0]}, rsync {pair[1]}", flush=True)
        finally:
            await ours_relay.stopListening()
            await rsync_relay.stopListening()
            ours.close_all()
            theirs.close_all()
        return self.replay_table(steps)

    @staticmethod
    def replay_table(steps: list[tuple[Sample, Sample]]) -> str:
        initial, edits, noop = steps[0], steps[1:-1], steps[-1]

        def total(samples: list[Sample]) -> int:
            return sum(s.up + s.down for s in samples)

        def row(name: str, o: list[Sample], r: list[Sample], median: bool = False) -> str:
            pick = statistics.median if median else sum
            ob = pick([s.up + s.down for s in o])
            rb = pick([s.up + s.down for s in r])
            ot, rt = pick([s.seconds for s in o]), pick([s.seconds for s in r])
            return (f"| {name} | {len(o)} | {fmt_b(ob)} | {fmt_b(rb)} | {ob / rb:.2f} | "
                    f"{ot:.2f} s | {rt:.2f} s | {pick([s.turns for s in o]):.0f} | "
                    f"{pick([s.turns for s in r]):.0f} |")

        ours, theirs = [o for o, _ in edits], [r for _, r in edits]
        lines = [
            "| rows | syncs | smartsync bytes | rsync -az bytes | bytes ratio | smartsync time "
            "| rsync time | smartsync turns | rsync turns |",
            "|---|---|---|---|---|---|---|---|---|",
            row("initial tree (first commit)", [initial[0]], [initial[1]]),
            row("replay, all commits (total)", ours, theirs),
            row("replay, per commit (median)", ours, theirs, median=True),
            row("no-op sync after the replay", [noop[0]], [noop[1]]),
        ]
        saved = total(theirs) - total(ours)
        lines.append(f"\nReplay total: smartsync {total(ours):,} B, rsync {total(theirs):,} B "
                     f"({'under' if saved >= 0 else 'over'} rsync by {abs(saved):,} B).")
        return "\n".join(lines)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    repo = Path(args.repo).resolve()
    commits = first_parent_commits(repo, args.commits)
    work = Path(tempfile.mkdtemp(prefix="smartsync-replay-"))
    bench = ReplayBench(reactor, work, args)
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()
    settings = LinkSettings(rtt=args.rtt, rate=args.rate_mbit * 1e6 / 8, shared=True)
    try:
        bench.start()
        table = await bench.replay(repo, commits, settings)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    from run import machine

    print(f"\nRun {start}, load {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, on "
          f"{machine()}; {len(commits)} commits {commits[0][:10]}..{commits[-1][:10]} of {repo}; "
          f"link {args.rtt * 1000:.0f} ms, {args.rate_mbit:g} Mbit/s; "
          f"`python bench/replay.py {' '.join(sys.argv[1:])}`\n")
    print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a git repository (bare or .git folder)")
    parser.add_argument("--commits", type=int, default=59)
    parser.add_argument("--rtt", type=float, default=0.05, help="round trip, seconds")
    parser.add_argument("--rate-mbit", type=float, default=20.0, help="each way, Mbit/s")
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
