"""One command runs the transfer benchmarks: smartsyncd over TLS beside rsync's daemon, same data.

    python bench/run.py [--quick] [--runs N] [--write]

Starts the real ``twistd smartsync`` on loopback behind a byte-counting TCP proxy (so the bytes
are wire bytes: TLS records, HTTP headers and all), drives it with the real client library, and
runs rsync's daemon over loopback on the same seeded data in the same go. Prints a table; with
``--write`` also rewrites ``bench/RESULTS.md``. Figures are medians of ``--runs`` runs where a
scenario is repeated; byte counts are deterministic for seeded data.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
import engagement  # noqa: E402
from countingproxy import listen_counting_proxy  # noqa: E402
from daemon import running_daemon  # noqa: E402
from rsync_baseline import RsyncDaemon  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password 1"


@dataclass
class Row:
    scenario: str
    target: str
    ours_bytes: list[int] = field(default_factory=list)
    ours_seconds: list[float] = field(default_factory=list)
    rsync_bytes: list[int] = field(default_factory=list)
    rsync_z_bytes: list[int] = field(default_factory=list)
    rsync_seconds: list[float] = field(default_factory=list)
    payload: int = 0
    note: str = ""

    def med(self, values: list[Any]) -> Any:
        return statistics.median(values) if values else None


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 10 * MiB:
        return f"{n / 1e6:.1f} MB"
    if n >= 10_000:
        return f"{n / 1e3:.1f} KB"
    return f"{int(n)} B"


def fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f} s"


class Bench:
    def __init__(self, reactor: Any, work: Path, runs: int, quick: bool,
                 small_count: int | None = None) -> None:
        self.reactor = reactor
        self.work = work
        self.runs = runs
        self.quick = quick
        self.big = (32 if quick else 256) * MiB
        self.small_count = small_count or (1000 if quick else 10_000)
        self.csv_size = (8 if quick else 64) * MiB
        self.rows: list[Row] = []
        self._engagements = 0

    async def setup(self) -> None:
        from smartsyncd.client.http import ServerAPI
        from smartsyncd.client.trust import PinnedPolicy

        self.daemon = running_daemon(self.work / "server")
        self.daemon.add_user("bench", PASSWORD)
        port, self.counter = listen_counting_proxy(self.reactor, self.daemon.port)
        self.api = ServerAPI(f"https://127.0.0.1:{port}", reactor=self.reactor,
                             policy=PinnedPolicy(self.daemon.fingerprint))
        await self.api.login("bench", PASSWORD)
        # Times of the throughput rows come from runs straight to the daemon: the counting proxy
        # relays every byte through this process's reactor, CPU the product does not spend (and
        # rsync's times have no proxy either). Their wire bytes come from one proxied run.
        self.direct = ServerAPI(self.daemon.url, reactor=self.reactor,
                                policy=PinnedPolicy(self.daemon.fingerprint))
        await self.direct.login("bench", PASSWORD)
        self.rsync = RsyncDaemon(self.work / "rsync")
        self.rsync.__enter__()

    def teardown(self) -> None:
        self.rsync.__exit__()
        self.daemon.stop()

    async def new_copy(self, label: str) -> tuple[Any, Path]:
        from smartsyncd.client.engine import SyncCopy

        self._engagements += 1
        name = self.daemon.new_engagement(f"{label}-{self._engagements}", editors=["bench"])
        directory = self.work / "copies" / name
        copy = await SyncCopy.clone(self.api, name, directory)
        return copy, directory

    async def measure_sync(self, copy: Any) -> tuple[int, float]:
        self.counter.reset()
        start = time.perf_counter()
        await copy.sync(self.api)
        return self.counter.total, time.perf_counter() - start

    async def time_direct_sync(self, copy: Any) -> float:
        """Seconds of a sync straight to the daemon (no proxy in the path; bytes not counted)."""
        start = time.perf_counter()
        await copy.sync(self.direct)
        return time.perf_counter() - start

    def rsync_push(self, src: Path, row: Row, *, reset: bool = False) -> None:
        """Push ``src`` with and without -z; the -z run goes first onto a reset copy of the target."""
        module = self.rsync.module_dir
        before = self.work / "rsync-before"
        if before.exists():
            shutil.rmtree(before)
        shutil.copytree(module, before, symlinks=True)
        z = self.rsync.push(src, compress=True)
        shutil.rmtree(module)
        shutil.copytree(before, module, symlinks=True)
        plain = self.rsync.push(src)
        row.rsync_bytes.append(plain.total)
        row.rsync_z_bytes.append(z.total)
        row.rsync_seconds.append(plain.seconds)

    def rsync_pull(self, dest: Path, row: Row) -> None:
        """Pull the module into ``dest`` with and without -z, each from ``dest``'s state before."""
        before = self.work / "rsync-pull-before"
        if before.exists():
            shutil.rmtree(before)
        shutil.copytree(dest, before, symlinks=True)
        z = self.rsync.pull(dest, compress=True)
        shutil.rmtree(dest)
        shutil.copytree(before, dest, symlinks=True)
        plain = self.rsync.pull(dest)
        row.rsync_bytes.append(plain.total)
        row.rsync_z_bytes.append(z.total)
        row.rsync_seconds.append(plain.seconds)

    async def second_copy(self, directory: Path) -> Any:
        """Another copy of the engagement of the copy in ``directory`` (downloads everything)."""
        from smartsyncd.client.engine import SyncCopy

        return await SyncCopy.clone(self.api, directory.name, directory.with_name(directory.name + "-b"))

    def reset_rsync(self) -> None:
        shutil.rmtree(self.rsync.module_dir)
        self.rsync.module_dir.mkdir()

    async def big_file(self) -> None:
        initial = Row(f"{self.big // MiB} MiB random file, initial upload",
                      "ratio to rsync >= 1.0; >= 300 MB/s", payload=self.big)
        initial.note = "time: direct runs (no proxy); bytes: one proxied run"
        src = self.work / "rs-big"
        shutil.rmtree(src, ignore_errors=True)
        datagen.write_big_file(src / "ledger.db", self.big, seed=1)
        for run in range(self.runs + 1):  # run 0 through the proxy for the bytes
            copy, directory = await self.new_copy("big")
            datagen.write_big_file(directory / "ledger.db", self.big, seed=1)
            if run == 0:
                nbytes, _ = await self.measure_sync(copy)
                initial.ours_bytes.append(nbytes)
                keep = copy, directory  # the copy the edit rows continue with
                continue
            initial.ours_seconds.append(await self.time_direct_sync(copy))
            copy.close()
            self.reset_rsync()
            start = time.perf_counter()
            result = self.rsync.push(src)
            initial.rsync_bytes.append(result.total)
            initial.rsync_seconds.append(time.perf_counter() - start)
        copy, directory = keep
        self.rows.append(initial)
        # a second copy and an rsync pull target, both with the initial version, to measure
        # the download of the 1-byte edit
        other = await self.second_copy(directory)
        pulled = self.work / "rs-big-pull"
        shutil.rmtree(pulled, ignore_errors=True)
        pulled.mkdir()
        self.rsync.pull(pulled)

        edits: list[tuple[str, str, Callable[[Path], None]]] = [
            ("1-byte edit in the middle", "<= 100 KB", datagen.flip_byte_in_middle),
            ("100-byte insert at the start", "<= 100 KB", datagen.insert_at_start),
            ("1 MiB append", "<= 1.1 MB", datagen.append),
        ]
        for label, target, edit in edits:
            row = Row(label, target)
            edit(directory / "ledger.db")
            edit(src / "ledger.db")
            nbytes, seconds = await self.measure_sync(copy)
            row.ours_bytes.append(nbytes)
            row.ours_seconds.append(seconds)
            self.rsync_push(src, row)
            self.rows.append(row)
            if other is not None:
                down = Row(f"{label}, download", "<= 100 KB")
                nbytes, seconds = await self.measure_sync(other)
                down.ours_bytes.append(nbytes)
                down.ours_seconds.append(seconds)
                self.rsync_pull(pulled, down)
                self.rows.append(down)
                other.close()
                other = None

        row = Row("rename of the big file", "<= 10 KB")
        os.rename(directory / "ledger.db", directory / "ledger-final.db")
        os.rename(src / "ledger.db", src / "ledger-final.db")
        nbytes, seconds = await self.measure_sync(copy)
        row.ours_bytes.append(nbytes)
        row.ours_seconds.append(seconds)
        self.rsync_push(src, row)
        self.rows.append(row)
        copy.close()

    async def small_files(self) -> None:
        n = self.small_count
        initial = Row(f"{n:,} x 4 KiB files, initial", "no slower than rsync; <= 1.05 x payload",
                      payload=n * 4096)
        initial.note = "time: direct runs (no proxy); bytes: one proxied run"
        src = self.work / "rs-small"
        shutil.rmtree(src, ignore_errors=True)
        datagen.write_small_files(src, count=n)
        for _ in range(self.runs):
            timed, timed_dir = await self.new_copy("small")
            datagen.write_small_files(timed_dir, count=n)
            # both timed runs start with nothing left for the kernel to write back (the 10,000
            # files just written, the last run's removals): else whichever run meets that
            # writeback pays for it, and rsync's time for this row ranged 0.8-6.8 s
            os.sync()
            initial.ours_seconds.append(await self.time_direct_sync(timed))
            timed.close()
            shutil.rmtree(timed_dir, ignore_errors=True)
            self.reset_rsync()
            os.sync()
            result = self.rsync.push(src)
            initial.rsync_bytes.append(result.total)
            initial.rsync_seconds.append(result.seconds)
        copy, directory = await self.new_copy("small")  # the copy the next rows continue with
        datagen.write_small_files(directory, count=n)
        nbytes, _ = await self.measure_sync(copy)
        initial.ours_bytes.append(nbytes)
        self.rows.append(initial)

        noop = Row(f"no-op sync of {n:,} files", "< 0.5 s")
        for _ in range(self.runs):
            nbytes, seconds = await self.measure_sync(copy)
            noop.ours_bytes.append(nbytes)
            noop.ours_seconds.append(seconds)
            result = self.rsync.push(src)
            noop.rsync_bytes.append(result.total)
            noop.rsync_seconds.append(result.seconds)
        self.rows.append(noop)

        edited = Row(f"10 of {n:,} files edited (100 B each)", "<= 50 KB")
        datagen.edit_small_files(directory)
        datagen.edit_small_files(src)
        nbytes, seconds = await self.measure_sync(copy)
        edited.ours_bytes.append(nbytes)
        edited.ours_seconds.append(seconds)
        self.rsync_push(src, edited)
        self.rows.append(edited)
        copy.close()

    async def csv(self) -> None:
        copy, directory = await self.new_copy("csv")
        src = self.work / "rs-csv"
        shutil.rmtree(src, ignore_errors=True)
        datagen.write_csv(directory / "ledger.csv", self.csv_size)
        datagen.write_csv(src / "ledger.csv", self.csv_size)
        await self.measure_sync(copy)
        self.reset_rsync()
        self.rsync.push(src)
        other = await self.second_copy(directory)
        pulled = self.work / "rs-csv-pull"
        shutil.rmtree(pulled, ignore_errors=True)
        pulled.mkdir()
        self.rsync.pull(pulled)
        row = Row(f"{self.csv_size // MiB} MiB CSV, 1% of rows edited", "<= 1 MB")
        datagen.edit_csv_rows(directory / "ledger.csv")
        datagen.edit_csv_rows(src / "ledger.csv")
        nbytes, seconds = await self.measure_sync(copy)
        row.ours_bytes.append(nbytes)
        row.ours_seconds.append(seconds)
        self.rsync_push(src, row)
        self.rows.append(row)
        down = Row(f"{self.csv_size // MiB} MiB CSV, 1% of rows edited, download", "<= 1 MB")
        nbytes, seconds = await self.measure_sync(other)
        down.ours_bytes.append(nbytes)
        down.ours_seconds.append(seconds)
        self.rsync_pull(pulled, down)
        self.rows.append(down)
        assert (directory / "ledger.csv").read_bytes() == (
            directory.with_name(directory.name + "-b") / "ledger.csv"
        ).read_bytes()
        other.close()
        copy.close()

    async def engagement(self) -> None:
        """The realistic engagement folder (bench/engagement.py): initial sync, then a day of
        typical edits."""
        scale = 0.25 if self.quick else 1.0
        copy, directory = await self.new_copy("engagement")
        src = self.work / "rs-engagement"
        shutil.rmtree(src, ignore_errors=True)
        stats = engagement.write_engagement(directory, scale=scale)
        engagement.write_engagement(src, scale=scale)
        label = f"engagement folder ({stats.files} files, {stats.bytes / 1e6:.0f} MB), initial"
        initial = Row(label, "no slower than rsync; <= 1.05 x payload", payload=stats.bytes)
        nbytes, seconds = await self.measure_sync(copy)
        initial.ours_bytes.append(nbytes)
        initial.ours_seconds.append(seconds)
        self.reset_rsync()
        result = self.rsync.push(src)
        initial.rsync_bytes.append(result.total)
        initial.rsync_seconds.append(result.seconds)
        self.rows.append(initial)

        edits = Row("engagement: a day of edits (14 re-saves, 48 db pages, 3 appends, "
                    "6 new, 3 deleted, 4 moved)", "below rsync -z")
        engagement.day_of_edits(directory)
        engagement.day_of_edits(src)
        nbytes, seconds = await self.measure_sync(copy)
        edits.ours_bytes.append(nbytes)
        edits.ours_seconds.append(seconds)
        self.rsync_push(src, edits)
        self.rows.append(edits)
        copy.close()

    def table(self) -> str:
        lines = [
            "| scenario | smartsyncd wire bytes | smartsyncd time | rsync bytes (plain / -z) "
            "| rsync time | ratio (ours / rsync -z bytes) | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            ob, os_, rb, rz, rs = (r.med(r.ours_bytes), r.med(r.ours_seconds), r.med(r.rsync_bytes),
                                   r.med(r.rsync_z_bytes), r.med(r.rsync_seconds))
            speed = ""
            if r.payload and os_:
                speed = f" ({r.payload / os_ / 1e6:.0f} MB/s"
                speed += f" vs rsync {r.payload / rs / 1e6:.0f} MB/s)" if rs else ")"
            ratio = f"{ob / rz:.2f}" if rz and ob is not None else (
                f"{ob / rb:.2f} (vs plain)" if rb and ob is not None else "-")
            lines.append(
                f"| {r.scenario} | {fmt_bytes(ob)} | {fmt_s(os_)}{speed} | {fmt_bytes(rb)} / "
                f"{fmt_bytes(rz)} | {fmt_s(rs)} | {ratio} | {r.target} |"
            )
        notes = [f"- {r.scenario}: {r.note}" for r in self.rows if r.note]
        return "\n".join(lines + ([""] + notes if notes else []))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    return (f"{platform.node()}: {os.cpu_count()} vCPU ({cpu}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{rsync.splitlines()[0] if rsync else 'rsync ?'}")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="smartsync-bench-"))
    bench = Bench(reactor, work, args.runs, args.quick, args.small)
    try:
        await bench.setup()
        steps: list[Callable[[], Awaitable[None]]] = [
            bench.big_file, bench.small_files, bench.csv, bench.engagement,
        ]
        if args.only:
            chosen = set(args.only.split(","))
            steps = [s for s in steps if s.__name__ in chosen]
        for step in steps:
            await step()
            print(bench.table(), flush=True)
            print(flush=True)
    finally:
        await bench.api.close()
        if hasattr(bench, "direct"):
            await bench.direct.close()
        bench.teardown()
        shutil.rmtree(work, ignore_errors=True)
    table = bench.table()
    print(table)
    if args.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        text = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
        head, _, tail = text.partition("<!-- transfer:start -->")
        _, _, tail = tail.partition("<!-- transfer:end -->")
        block = (f"<!-- transfer:start -->\nRun {stamp} on {machine()}; "
                 f"`python bench/run.py --runs {args.runs}{' --quick' if args.quick else ''}`; "
                 f"medians of {args.runs} runs where repeated.\n\n{table}\n<!-- transfer:end -->")
        (HERE / "RESULTS.md").write_text(head + block + tail)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data (a smoke run)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--only", help="comma-separated steps: big_file,small_files,csv,engagement")
    parser.add_argument("--small", type=int, help="number of small files (default 10,000)")
    ns = parser.parse_args()
    if ns.write and (ns.only or ns.small):
        parser.error("--write records full runs only (without --only/--small)")
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
