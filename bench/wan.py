"""smartsync beside rsync -az through an emulated WAN link (issue 15): clone, upload, edits, no-op.

    python bench/wan.py [--runs 3] [--slow-runs 1] [--files 1000] [--slow-files 1000] [--profile F]

Starts the real ``twistd smartsync`` and an rsync daemon on loopback, and for each link setting
(50 ms round trip at 20 Mbit/s each way; 300 ms at 2 Mbit/s) a relay in front of each
(smartsyncd.testing.wanrelay: delay and token-bucket pacing each way, the TCP handshake's round
trip charged; one link shared by all of a client's connections, ``LinkSettings(shared=True)``,
so two connections do not get twice the rate). The real ``smartsync`` command (login, clone, sync) and ``rsync -az`` run as
subprocesses through the relays, one after the other in the same go, on the same seeded
engagement: ``--files`` small work papers (1-8 KiB, two-thirds text) and two 4 MiB scans.

Rows: first upload (a fresh engagement, everything new), clone (a second copy of it / rsync pull
into an empty folder), a day of edits (a handful of small edits in several files, two new
files, one deleted), no-op sync. Wall time is the median of the runs; bytes each way are counted
at the relay (TCP payload: TLS records and HTTP for smartsync, rsync's protocol for rsync);
``turns`` counts request-answer turns (client bytes after server bytes on a connection).

``--clone-rounds N [--base-code DIR]``: instead, N rounds of the clone alone at one link
(``--only``), each ours, then (with ``--base-code``) the same command with ``PYTHONPATH=DIR``
(another checkout's client, e.g. ``git archive main``), then rsync; per run the time split at
the relay: before the first byte up, until the last byte reached the client, after it (exit).
``--upload`` with it: first uploads instead (a new engagement each, rsync into an empty module).
``--compile``: byte-compile smartsyncd (and ``--base-code``) first, as an installed client is.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent))

from daemon import running_daemon  # noqa: E402
from rsync_baseline import RsyncDaemon  # noqa: E402
from run import machine  # noqa: E402

from smartsyncd.testing.wanrelay import LinkSettings, listen_relay  # noqa: E402

KiB, MiB = 1024, 1 << 20
PASSWORD = "bench password 1"
FOLDERS = ["A - Planning", "B - Cash and bank", "C - Receivables", "F - Payables", "G - Payroll",
           "H - Tax", "Permanent file", "Correspondence", "Client evidence/Invoices"]
WORDS = ["fees", "rent", "travel", "payroll", "accrual", "tested", "agreed", "variance",
         "see note", "reconciled", "no exceptions", "sample", "invoice", "ledger"]


def smartsync_cmd() -> list[str]:
    script = Path(sys.executable).with_name("smartsync")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from smartsyncd.cli.client import main; main()"]


# -- the engagement --------------------------------------------------------------------------


def _paper(rng: random.Random, size: int) -> bytes:
    if rng.random() < 2 / 3:  # text: notes, lead schedules, CSV exports
        out = []
        n = 0
        while n < size:
            line = (f"{rng.randrange(1000, 9999)},{rng.choice(WORDS)},{rng.choice(WORDS)},"
                    f"{rng.randrange(10**7) / 100:.2f}\n")
            out.append(line)
            n += len(line)
        return "".join(out).encode()[:size]
    return rng.randbytes(size)  # a small .docx / .xlsx / .pdf: compressed containers


def write_engagement(root: Path, files: int, seed: int = 15) -> int:
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        folder = root / FOLDERS[i % len(FOLDERS)]
        folder.mkdir(parents=True, exist_ok=True)
        size = int(1 * KiB * 8 ** rng.random())
        ext = rng.choice([".txt", ".csv", ".docx", ".xlsx"])
        data = _paper(rng, size)
        (folder / f"WP {i:04d}{ext}").write_bytes(data)
        total += len(data)
    scans = root / "Client evidence/Bank statements"
    scans.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        data = rng.randbytes(4 * MiB)
        (scans / f"Scan {i + 1}.pdf").write_bytes(data)
        total += len(data)
    return total


def _touch_later(path: Path) -> None:
    st = os.stat(path)
    later = st.st_mtime_ns + 2_000_000_000  # past rsync's whole-second quick check
    os.utime(path, ns=(later, later))


def day_of_edits(root: Path, seed: int = 16) -> None:
    """A handful of small edits: 6 papers changed in place or appended to, 2 new, 1 deleted."""
    rng = random.Random(seed)
    papers = sorted(p for p in root.rglob("WP *") if p.is_file())
    chosen = rng.sample(papers, 7)
    for path in chosen[:3]:
        data = bytearray(path.read_bytes())
        at = rng.randrange(max(1, len(data) - 60))
        data[at : at + 60] = rng.randbytes(60)
        path.write_bytes(bytes(data))
        _touch_later(path)
    for path in chosen[3:6]:
        with open(path, "ab") as f:
            f.write(f"{rng.randrange(1000, 9999)},reviewed,{rng.choice(WORDS)}\n".encode())
        _touch_later(path)
    chosen[6].unlink()
    for i in range(2):
        (root / FOLDERS[i] / f"New note {i}.txt").write_bytes(_paper(rng, 3 * KiB))


# -- measurement -----------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    up: int
    down: int
    turns: int
    connections: int


@dataclass
class Row:
    link: str
    scenario: str
    ours: list[Sample] = field(default_factory=list)
    rsync: list[Sample] = field(default_factory=list)


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def fmt_b(n: float) -> str:
    if n >= 10 * MiB:
        return f"{n / 1e6:.1f} MB"
    if n >= 10_000:
        return f"{n / 1e3:.1f} KB"
    return f"{int(n)} B"


class WanBench:
    def __init__(self, reactor: Any, work: Path, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.work = work
        self.args = args
        self.rows: dict[tuple[str, str], Row] = {}
        self.count = 0

    def start(self) -> None:
        self.daemon = running_daemon(self.work / "server")
        self.daemon.add_user("bench", PASSWORD)
        self.rsync = RsyncDaemon(self.work / "rsync")
        self.rsync.__enter__()
        self.config = self.work / "config"

    def stop(self) -> None:
        self.rsync.__exit__()
        self.daemon.stop()

    async def run(self, cmd: list[str], *, stdin: str | None = None, cwd: Path | None = None,
                  ok: tuple[int, ...] = (0, 1)) -> subprocess.CompletedProcess[str]:
        from twisted.internet.threads import deferToThread

        done: subprocess.CompletedProcess[str] = await deferToThread(
            subprocess.run, cmd, input=stdin or "", capture_output=True, text=True, cwd=cwd)
        if done.returncode not in ok:
            raise RuntimeError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    async def measured(self, counters: Any, cmd: list[str]) -> Sample:
        counters.reset()
        start = time.perf_counter()
        # a clone that fails (exit 1) must not pass for a fast one
        await self.run(cmd, ok=(0,) if "clone" in cmd else (0, 1))
        seconds = time.perf_counter() - start
        return Sample(seconds, counters.up, counters.down, counters.turns, counters.connections)

    def row(self, link: str, scenario: str) -> Row:
        return self.rows.setdefault((link, scenario), Row(link, scenario))

    async def link_round(self, label: str, settings: LinkSettings, files: int) -> None:
        """One run of the four rows at one link setting, ours then rsync's for each row."""
        ours_relay, ours_f = listen_relay(self.reactor, self.daemon.port, settings)
        rsync_relay, theirs_f = listen_relay(self.reactor, self.rsync.port, settings)
        ours, theirs = ours_f.counters, theirs_f.counters
        url = f"https://127.0.0.1:{ours_relay.getHost().port}"
        rsync_url = f"rsync://127.0.0.1:{rsync_relay.getHost().port}/bench/"
        cli = [*smartsync_cmd(), "--quiet", "--config-dir", str(self.config)]
        try:
            await self.run([*cli, "--trust-fingerprint", self.daemon.fingerprint, "login", url,
                            "--user", "bench", "--password-stdin"], stdin=PASSWORD + "\n")
            self.count += 1
            eng = self.daemon.new_engagement(f"wan-{self.count}", editors=["bench"])
            base = self.work / f"round-{self.count}"
            mine, other, src, pulled = (base / n for n in ("mine", "other", "src", "pulled"))
            await self.run([*cli, "clone", f"{url}/{eng}", str(mine)])
            write_engagement(mine, files)
            write_engagement(src, files)
            shutil.rmtree(self.rsync.module_dir)
            self.rsync.module_dir.mkdir()
            pulled.mkdir(parents=True)
            rsync = ["rsync", "-az", "--delete", "--stats"]
            steps = [
                ("first upload", [*cli, "sync", str(mine)], [*rsync, f"{src}/", rsync_url]),
                ("clone", [*cli, "clone", f"{url}/{eng}", str(other)],
                 [*rsync, rsync_url, f"{pulled}/"]),
                ("a day of edits", [*cli, "sync", str(mine)], [*rsync, f"{src}/", rsync_url]),
                ("no-op sync", [*cli, "sync", str(mine)], [*rsync, f"{src}/", rsync_url]),
            ]
            for scenario, ours_cmd, rsync_cmd in steps:
                if scenario == "a day of edits":
                    day_of_edits(mine)
                    day_of_edits(src)
                os.sync()
                row = self.row(label, scenario)
                row.ours.append(await self.measured(ours, ours_cmd))
                os.sync()
                row.rsync.append(await self.measured(theirs, rsync_cmd))
                print(f"{label} {scenario}: ours {row.ours[-1]}, rsync {row.rsync[-1]}",
                      flush=True)
            shutil.rmtree(base, ignore_errors=True)
        finally:
            await ours_relay.stopListening()
            await rsync_relay.stopListening()
            ours.close_all()
            theirs.close_all()

    async def clone_rounds(self, settings: LinkSettings, files: int, rounds: int,
                           base_code: str | None, upload: bool = False) -> None:
        """Clones only (``upload``: first uploads only), alternating ours / the base
        checkout's client / rsync, with where each one's wall time went: start-up before the
        first byte, the transfer, the tail."""
        from smartsyncd.testing import wanrelay

        delivered: list[float] = []
        original = wanrelay._Inbound._to_client

        events: list[tuple[float, str, int]] = []
        conns: dict[int, int] = {}

        def to_client(inbound: Any, data: bytes) -> None:
            delivered.append(time.perf_counter())
            n = conns.setdefault(id(inbound), len(conns))
            events.append((delivered[-1], f"down{n}", len(data)))
            original(inbound, data)

        wanrelay._Inbound._to_client = to_client  # type: ignore[method-assign]
        relay, factory = listen_relay(self.reactor, self.daemon.port, settings)
        rsync_relay, rsync_f = listen_relay(self.reactor, self.rsync.port, settings)
        url = f"https://127.0.0.1:{relay.getHost().port}"
        rsync_url = f"rsync://127.0.0.1:{rsync_relay.getHost().port}/bench/"
        cli = [*smartsync_cmd(), "--quiet", "--config-dir", str(self.config)]
        ups: list[float] = []
        original_up = wanrelay._Inbound.dataReceived

        def up(inbound: Any, data: bytes) -> None:
            ups.append(time.perf_counter())
            n = conns.setdefault(id(inbound), len(conns))
            events.append((ups[-1], f"up{n}", len(data)))
            original_up(inbound, data)

        wanrelay._Inbound.dataReceived = up  # type: ignore[method-assign]
        kinds = ["ours", *(["base"] if base_code else []), "rsync"]
        times: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in kinds}
        answered: dict[str, list[float]] = {k: [] for k in kinds}
        try:
            await self.run([*cli, "--trust-fingerprint", self.daemon.fingerprint, "login", url,
                            "--user", "bench", "--password-stdin"], stdin=PASSWORD + "\n")
            self.count += 1
            eng = self.daemon.new_engagement(f"wan-{self.count}", editors=["bench"])
            base = self.work / f"clones-{self.count}"
            await self.run([*cli, "clone", f"{url}/{eng}", str(base / "mine")])
            write_engagement(base / "mine", files)
            write_engagement(self.rsync.module_dir, files)
            await self.run([*cli, "sync", str(base / "mine")])
            env = dict(os.environ)
            for r in range(rounds):
                for kind in kinds:
                    target = base / f"{kind}-{r}"
                    if upload and kind == "rsync":  # into an empty module, as a new engagement
                        shutil.rmtree(self.rsync.module_dir)
                        self.rsync.module_dir.mkdir()
                        cmd = ["rsync", "-az", "--delete", f"{base / 'mine'}/", rsync_url]
                    elif upload:
                        self.count += 1
                        new = self.daemon.new_engagement(f"wan-{self.count}", editors=["bench"])
                        await self.run([*cli, "clone", f"{url}/{new}", str(target)])
                        write_engagement(target, files)
                        cmd = [*cli, "sync", str(target)]
                    elif kind == "rsync":
                        target.mkdir()
                        cmd = ["rsync", "-az", "--delete", f"{rsync_url}", f"{target}/"]
                    else:
                        cmd = [*cli, "clone", f"{url}/{eng}", str(target)]
                    if kind == "base" and base_code:
                        env["PYTHONPATH"] = base_code
                    else:
                        env.pop("PYTHONPATH", None)
                    os.sync()
                    counters = rsync_f.counters if kind == "rsync" else factory.counters
                    counters.reset()
                    delivered.clear()
                    ups.clear()
                    events.clear()
                    conns.clear()
                    start = time.perf_counter()
                    await deferred_run(cmd, env)
                    end = time.perf_counter()
                    split = (end - start, ups[0] - start, delivered[-1] - ups[0],
                             end - delivered[-1])
                    times[kind].append(split)
                    answered[kind].append(delivered[0] - start)  # the TCP handshake's wait too
                    if r == 0 and self.args.trace and kind != "rsync":
                        print(timeline(events, start))
                    print(f"{kind}: {split[0]:.2f} s = {split[1]:.2f} before the first byte + "
                          f"{split[2]:.2f} transfer + {split[3]:.2f} after the last; "
                          f"{counters.up:,} B up, {counters.down:,} B down, {counters.turns} "
                          f"turns, {counters.connections} connections; first answer at "
                          f"{answered[kind][-1]:.2f} s", flush=True)
                    shutil.rmtree(target, ignore_errors=True)
            print(f"\n{'first upload' if upload else 'clone'}, {files:,} files, medians of "
                  f"{rounds}:")
            for kind, got in times.items():
                med = [statistics.median(t[i] for t in got) for i in range(4)]
                print(f"  {kind}: {med[0]:.2f} s ({med[1]:.2f} start + {med[2]:.2f} transfer + "
                      f"{med[3]:.2f} tail; first answer at "
                      f"{statistics.median(answered[kind]):.2f}); runs "
                      + ", ".join(f"{t[0]:.2f}" for t in got))
        finally:
            wanrelay._Inbound._to_client = original  # type: ignore[method-assign]
            wanrelay._Inbound.dataReceived = original_up  # type: ignore[method-assign]
            await relay.stopListening()
            await rsync_relay.stopListening()
            factory.counters.close_all()
            rsync_f.counters.close_all()

    async def profile_clone(self, settings: LinkSettings, files: int, out: Path) -> str:
        """One clone through the relay with the client under cProfile and /usr/bin/time:
        where its wall time goes (waiting in the reactor's poll vs Python work)."""
        relay, factory = listen_relay(self.reactor, self.daemon.port, settings)
        url = f"https://127.0.0.1:{relay.getHost().port}"
        cli = [*smartsync_cmd(), "--quiet", "--config-dir", str(self.config)]
        try:
            await self.run([*cli, "--trust-fingerprint", self.daemon.fingerprint, "login", url,
                            "--user", "bench", "--password-stdin"], stdin=PASSWORD + "\n")
            self.count += 1
            eng = self.daemon.new_engagement(f"wan-{self.count}", editors=["bench"])
            base = self.work / f"profile-{self.count}"
            write_engagement(base / "src", files)
            await self.run([*cli, "clone", f"{url}/{eng}", str(base / "mine")])
            for item in (base / "src").iterdir():
                shutil.move(str(item), base / "mine" / item.name)
            await self.run([*cli, "sync", str(base / "mine")])
            factory.counters.reset()
            start = time.perf_counter()
            done = await self.run(["/usr/bin/time", "-v", sys.executable, "-m", "cProfile", "-o",
                                   str(out), *cli, "clone", f"{url}/{eng}",
                                   str(base / "other")])
            wall = time.perf_counter() - start
            fields = dict(re.findall(r"^\s*(User time \(seconds\)|System time \(seconds\)|"
                                     r"Maximum resident set size \(kbytes\)): (\S+)$",
                                     done.stderr, re.M))
            shutil.rmtree(base, ignore_errors=True)
            c = factory.counters
            return (f"profiled clone of {files:,} files: {wall:.1f} s wall, client CPU "
                    f"{float(fields['User time (seconds)']):.1f} s user + "
                    f"{float(fields['System time (seconds)']):.1f} s system, peak RSS "
                    f"{int(fields['Maximum resident set size (kbytes)']) / 1e3:.0f} MB; "
                    f"{c.turns} turns, {c.up:,} B up, {c.down:,} B down; profile in {out}")
        finally:
            await relay.stopListening()
            factory.counters.close_all()

    def table(self) -> str:
        lines = [
            "| link | scenario | runs | smartsync time | rsync -az time | time ratio | smartsync "
            "bytes up / down | rsync bytes up / down | bytes ratio | smartsync turns / "
            "connections | rsync turns |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows.values():
            o, r = row.ours, row.rsync
            ot, rt = _median(o, "seconds"), _median(r, "seconds")
            ob = _median(o, "up") + _median(o, "down")
            rb = _median(r, "up") + _median(r, "down")
            lines.append(
                f"| {row.link} | {row.scenario} | {len(o)} | {ot:.2f} s | {rt:.2f} s | "
                f"{ot / rt:.2f} | {fmt_b(_median(o, 'up'))} / {fmt_b(_median(o, 'down'))} | "
                f"{fmt_b(_median(r, 'up'))} / {fmt_b(_median(r, 'down'))} | "
                f"{ob / rb:.2f} | {_median(o, 'turns'):.0f} / {_median(o, 'connections'):.0f} | "
                f"{_median(r, 'turns'):.0f} |"
            )
        return "\n".join(lines)


async def deferred_run(cmd: list[str], env: dict[str, str]) -> None:
    from twisted.internet.threads import deferToThread

    done = await deferToThread(subprocess.run, cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def timeline(events: list[tuple[float, str, int]], start: float, gap: float = 0.02) -> str:
    """Bursts of bytes reaching each side (one line per run of one direction and connection
    with no pause over ``gap`` s), in seconds from the command's start."""
    lines: list[str] = []
    burst: list[Any] = []
    for t, direction, n in events:
        if burst and (burst[2] != direction or t - burst[1] > gap):
            lines.append(f"    {burst[0] - start:6.3f}-{burst[1] - start:6.3f} {burst[2]:>5} "
                         f"{burst[3]:>9,} B")
            burst = []
        if not burst:
            burst = [t, t, direction, 0]
        burst[1] = t
        burst[3] += n
    if burst:
        lines.append(f"    {burst[0] - start:6.3f}-{burst[1] - start:6.3f} {burst[2]:>5} "
                     f"{burst[3]:>9,} B")
    return "\n".join(lines)


def compile_code(*roots: Path) -> None:
    """Write .pyc files for smartsyncd, as installing a wheel does (pip compiles at install)."""
    for root in roots:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "smartsyncd")],
                       check=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="smartsync-wan-"))
    bench = WanBench(reactor, work, args)
    links = [
        ("50 ms, 20 Mbit/s", LinkSettings(rtt=0.050, rate=20e6 / 8, shared=True), args.runs,
         args.files),
        ("300 ms, 2 Mbit/s", LinkSettings(rtt=0.300, rate=2e6 / 8, shared=True),
         args.slow_runs, args.slow_files),
    ]
    if args.only:
        links = [link for link in links if link[0].startswith(args.only)]
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()
    try:
        if args.compile:
            compile_code(HERE.parent, *([Path(args.base_code)] if args.base_code else []))
        bench.start()
        if args.clone_rounds:
            await bench.clone_rounds(links[0][1], links[0][3], args.clone_rounds, args.base_code,
                                     args.upload)
            return
        if args.profile:
            print(await bench.profile_clone(links[0][1], args.files, Path(args.profile)))
            return
        for i in range(max(n for _, _, n, _ in links)):
            for label, settings, runs, files in links:
                if i < runs:  # the two links alternate, so load changes touch both
                    await bench.link_round(f"{label}, {files:,} files", settings, files)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    cpu = os.times()
    startup = time.perf_counter()
    subprocess.run([*smartsync_cmd(), "--version"], capture_output=True, check=True)
    startup = time.perf_counter() - startup
    print(f"\nrelay (this process) CPU: {cpu.user + cpu.system:.1f} s; `smartsync --version` "
          f"(start-up alone) {startup:.2f} s")
    print(f"\nRun {start}, load {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, on "
          f"{machine()}; `python bench/wan.py {' '.join(sys.argv[1:])}`\n")
    print(bench.table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs at 50 ms / 20 Mbit/s")
    parser.add_argument("--slow-runs", type=int, default=1, help="runs at 300 ms / 2 Mbit/s")
    parser.add_argument("--files", type=int, default=1000, help="work papers at 50 ms")
    parser.add_argument("--slow-files", type=int, default=1000, help="work papers at 300 ms")
    parser.add_argument("--only", help="run one link setting: '50' or '300'")
    parser.add_argument("--profile", metavar="FILE",
                        help="instead: one clone at the first link with the client under "
                             "cProfile (stats to FILE) and /usr/bin/time")
    parser.add_argument("--clone-rounds", type=int, metavar="N",
                        help="instead: N rounds of the clone alone at the first link (with "
                             "--only), ours / --base-code's / rsync, with start-up, transfer "
                             "and tail times")
    parser.add_argument("--base-code", metavar="DIR",
                        help="with --clone-rounds: also clone with PYTHONPATH=DIR")
    parser.add_argument("--upload", action="store_true",
                        help="with --clone-rounds: first uploads instead of clones")
    parser.add_argument("--trace", action="store_true",
                        help="with --clone-rounds: print the first round's bursts of bytes")
    parser.add_argument("--compile", action="store_true",
                        help="byte-compile smartsyncd (and --base-code) first")
    ns = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
