"""CPU of the daemon's metadata work for a 10,000 x 4 KiB initial sync, without the network.

    python bench/commit_cpu.py [--runs N] [--count N] [--batch N]

On a fresh SQLite store in a temp folder (the daemon's own ``connect_sqlite`` + ``migrate``):
records the chunks as the upload path does (``record_pack``, one pack per 2,000 chunks), then
commits the files in batches of 2,000 as the client's early batches do (``storage.commit.commit``,
full one-chunk manifests, datagen's folder layout). Prints the thread CPU seconds of each phase
per run and the medians: the daemon's DB-thread work per new file, steadier than a full sync's
wall time on a shared machine. Run it with PYTHONPATH=<tree> to measure another checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime

import blake3

from smartsyncd.core import manifest
from smartsyncd.core.model import ChunkRef, ProposedChange
from smartsyncd.storage import accounts, commit
from smartsyncd.storage import chunks as chunk_index
from smartsyncd.storage.api import PutManifest
from smartsyncd.storage.schema import migrate
from smartsyncd.storage.sqlite import SQLITE, connect_sqlite
from smartsyncd.storage.sqlstore import MetadataDB


def one_run(count: int, batch: int) -> tuple[float, float]:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect_sqlite(os.path.join(tmp, "meta.db"))
        migrate(conn, SQLITE)
        db = MetadataDB(conn, SQLITE)
        eng = accounts.create_engagement(db, "bench", "bench", now).id
        files = []
        for i in range(count):
            h = blake3.blake3(i.to_bytes(8, "big")).hexdigest()
            chunks = (ChunkRef(h, 4096),)
            files.append((f"folder{i % 100:03d}/file{i:05d}.bin", chunks, manifest.content_id(chunks)))
        t0 = time.thread_time()
        for start in range(0, count, batch):
            part = files[start : start + batch]
            entries = [(c[0].hash, 0, 4096, 4096 * k, 4096) for k, (_, c, _) in enumerate(part)]
            chunk_index.record_pack(db, eng, blake3.blake3(str(start).encode()).hexdigest(), 4096 * len(part), entries, now)
        t1 = time.thread_time()
        for start in range(0, count, batch):
            part = files[start : start + batch]
            changes = [ProposedChange(path=p, kind="put", base=None, content=cid, size=4096) for p, _, cid in part]
            manifests = {p: PutManifest(content=cid, chunks=c) for p, c, cid in part}
            commit.commit(db, eng, "alice", "s1", f"b{start}", changes, manifests, now)
        t2 = time.thread_time()
        conn.close()
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    packs, commits = [], []
    for run in range(args.runs):
        p, c = one_run(args.count, args.batch)
        packs.append(p)
        commits.append(c)
        print(f"run {run}: record_pack {p:.3f} CPU-s, commit {c:.3f} CPU-s")
    print(
        f"median: record_pack {statistics.median(packs):.3f}, commit {statistics.median(commits):.3f}"
        f" CPU-s; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
