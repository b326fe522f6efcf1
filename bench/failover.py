"""Failover time and commit throughput for several daemons (issue 4).

    python bench/failover.py [--runs 10] [--commits 400] [--write]

1. Failover: a real PostgreSQL 15 (fsync on), two real ``twistd smartsync`` daemons on it with
   one shared chunk folder, a real HAProxy running the shipped ``conf/haproxy.cfg`` (health
   checks ``inter 500ms fall 2 rise 2``, ``retries 2``, ``option redispatch 1``). The real
   client library (ServerAPI: retries with backoff and full jitter, initial 0.5 s) commits
   through HAProxy; the daemon its sticky cookie points at is SIGKILLed; the time from the
   SIGKILL to the client's next successful commit is one sample. The killed daemon is restarted
   and HAProxy sees it up before the next run. Median (and max) of ``--runs``.
2. Commit throughput, SQLite vs PostgreSQL, through the store API in-process (the same thread
   pools the daemon uses; no HTTP): ``--commits`` one-change commits from 1 and from 4
   concurrent committers to one engagement, and 20 commits of 100 changes. Both durable
   (SQLite WAL + synchronous=FULL; PostgreSQL fsync=on, synchronous_commit=on).

With ``--write`` the figures replace the "Several daemons" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from haproxy import Cluster, start_cluster  # noqa: E402
from pg import PgCluster  # noqa: E402

PASSWORD = "bench password 1"
SECTION = "## Several daemons: failover and commit throughput (bench/failover.py)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} vCPU, Python {platform.python_version()}, {platform.system()}"


def empty_put(path: str) -> Any:
    from smartsyncd.client.wire import CommitChange

    return CommitChange(path, "put", None, manifest=())


async def measure_failover(base: Path, pg: PgCluster, runs: int) -> list[float]:
    from twisted.internet import reactor

    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import CAPolicy

    cluster: Cluster = start_cluster(base, pg.url(pg.create_database("failover")))
    try:
        app1 = cluster.daemons["app1"]
        for args, stdin in (
            (("user", "add", "bench", "--password-stdin"), PASSWORD + "\n"),
            (("engagement", "create", "acme"), None),
            (("grant", "acme", "--user", "bench", "--role", "editor"), None),
        ):
            done = app1.admin(*args, input=stdin)
            assert done.returncode == 0, done.stderr
        api = ServerAPI(cluster.url, reactor=reactor, policy=CAPolicy(cluster.ca_file), max_attempts=20)
        samples: list[float] = []
        try:
            await api.login("bench", PASSWORD)
            n = 0
            for run in range(runs):
                n += 1
                await api.commit("acme", f"warm-{n}", [empty_put(f"warm-{n}.txt")])
                sticky = next(c.value for c in api.cookies if c.name == "SERVERID")
                victim = cluster.daemons[sticky]
                assert victim.process is not None
                started = time.monotonic()
                os.kill(victim.process.pid, signal.SIGKILL)
                await api.commit("acme", f"after-kill-{n}", [empty_put(f"after-kill-{n}.txt")])
                samples.append(time.monotonic() - started)
                victim.process.wait(10)
                print(f"  run {run + 1}: killed {sticky}, next commit after {samples[-1] * 1000:.0f} ms",
                      flush=True)
                victim.restart()
                await wait_until_balanced(cluster, sticky)
        finally:
            await api.close()
        return samples
    finally:
        cluster.stop()


async def wait_until_balanced(cluster: Cluster, name: str, timeout: float = 20.0) -> None:
    """Until HAProxy sends a cookie-less request to ``name`` again (its checks passed)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThreadPool

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, headers = await deferToThreadPool(
            reactor, reactor.getThreadPool(), cluster.request, "GET", "/healthz"
        )
        if f"SERVERID={name};" in headers.get("set-cookie", ""):
            return
        await sleep(0.1)
    raise RuntimeError(f"HAProxy did not bring {name} back\n{cluster.logs()}")


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def throughput(open_store: Callable[[], Awaitable[Any]], commits: int) -> dict[str, float]:
    from twisted.internet.defer import Deferred, gatherResults

    from smartsyncd.core.model import ProposedChange
    from smartsyncd.storage.api import PutManifest

    store = await open_store()
    out: dict[str, float] = {}
    try:
        from datetime import UTC, datetime

        from smartsyncd.core.manifest import content_id

        empty = content_id(())
        now = datetime.now(UTC)
        counter = iter(range(10**9))

        async def commit(paths: list[str]) -> None:
            changes = [ProposedChange(path=p, kind="put", base=None, content=empty, size=0) for p in paths]
            manifests = {p: PutManifest(content=empty, chunks=()) for p in paths}
            await store.commit(eid, "bench", None, f"b{next(counter)}", changes, manifests, now)

        eid = (await store.create_engagement("tp", "")).id
        await commit(["warm"])
        started = time.monotonic()
        for i in range(commits):
            await commit([f"s{i}"])
        out["1 committer, 1 change/commit"] = commits / (time.monotonic() - started)

        async def worker(w: int) -> None:
            for i in range(commits // 4):
                await commit([f"c{w}-{i}"])

        started = time.monotonic()
        await gatherResults([Deferred.fromCoroutine(worker(w)) for w in range(4)])
        out["4 committers, 1 change/commit"] = (commits // 4 * 4) / (time.monotonic() - started)

        started = time.monotonic()
        for i in range(20):
            await commit([f"batch{i}/f{j}" for j in range(100)])
        out["1 committer, 100 changes/commit"] = 2000 / (time.monotonic() - started)
    finally:
        await store.close()
    return out


async def main(args: argparse.Namespace) -> str:
    from twisted.internet import reactor

    from smartsyncd.storage.sqlite import open_server_store

    base = Path(tempfile.mkdtemp(prefix="smartsync-failover-"))
    pg = PgCluster(durable=True).start()
    try:
        print("failover: two daemons behind HAProxy, SIGKILL the sticky one", flush=True)
        samples = await measure_failover(base / "ha", pg, args.runs)
        print("throughput: SQLite", flush=True)
        sqlite = await throughput(
            lambda: open_server_store(str(base / "sqlite"), reactor=reactor), args.commits
        )
        print("throughput: PostgreSQL", flush=True)
        url = pg.url(pg.create_database("tp"))
        postgres = await throughput(
            lambda: open_server_store(str(base / "pgdata"), reactor=reactor, database_url=url),
            args.commits,
        )
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}; loopback; PostgreSQL 15 (fsync on), HAProxy 2.6; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "Failover: time from SIGKILL of the daemon a client is stuck to until that client's next "
        "commit succeeds through HAProxy (the shipped conf/haproxy.cfg: `inter 500ms fall 2 "
        "rise 2`, `retries 2`, `option redispatch 1`; client retries with backoff 0.5 s x2 and "
        "full jitter).",
        "",
        "| runs | median | max | min |",
        "|---|---|---|---|",
        f"| {len(samples)} | {statistics.median(samples) * 1000:.0f} ms | {max(samples) * 1000:.0f} ms "
        f"| {min(samples) * 1000:.0f} ms |",
        "",
        "Commit throughput (changes/s), store API in-process, both durable "
        "(SQLite WAL + synchronous=FULL; PostgreSQL fsync on, 4 connections):",
        "",
        "| workload | SQLite | PostgreSQL |",
        "|---|---|---|",
        *[f"| {k} | {sqlite[k]:.0f} | {postgres[k]:.0f} |" for k in sqlite],
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()

    from twisted.internet import defer, task

    result: list[str] = []

    async def run(reactor: Any) -> None:
        result.append(await main(options))

    def start(reactor: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(run(reactor))

    try:
        task.react(start)
    except SystemExit as e:
        if e.code:
            raise
    print()
    print(result[0] if result else "(no result)")
    if options.write and result:
        write_section(result[0])
