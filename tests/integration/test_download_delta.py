"""Download deltas through the real daemon (issue 7): a copy pulling an edited CSV gets the
changed chunks as zstd deltas against the version it already has, far below the zstd-only
size, and ends with exactly the writer's bytes; a damaged local base costs bytes, never data."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import zstandard
from daemon import Daemon, daemon_with_users
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import DeltaHint, ServerAPI
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.chunkstream import HEADER_BYTES, compress_chunk

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from daemon_with_users(tmp_path_factory.mktemp("download-delta"), "alice", "bob", password=PASSWORD)


_count = iter(range(1, 1000))


async def connect(server: Daemon, user: str) -> ServerAPI:
    api = ServerAPI(server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint))
    await api.login(user, PASSWORD)
    return api


@pytest.fixture
def apis(server: Daemon) -> Iterator[tuple[str, ServerAPI, ServerAPI]]:
    """A fresh engagement and two connections, alice's (copy A) and bob's (copy B): each
    copy has its own byte counters."""
    name = server.new_engagement(f"dd-{next(_count)}", editors=["alice", "bob"])
    a = pytest_twisted.blockon(Deferred.fromCoroutine(connect(server, "alice")))
    b = pytest_twisted.blockon(Deferred.fromCoroutine(connect(server, "bob")))
    yield name, a, b
    for api in (a, b):
        pytest_twisted.blockon(Deferred.fromCoroutine(api.close()))


def ledger(rows: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"2026-{1 + i % 12:02d}-{1 + i % 28:02d},{rng.randrange(1000, 9999)}-{i % 500:03d},"
        f"Invoice {i:08d},{rng.randrange(10**6) / 100:.2f},{rng.randrange(10**6) / 100:.2f}\n"
        for i in range(rows)
    ]


def edit_rows(lines: list[str], seed: int) -> str:
    rng = random.Random(seed)
    for i in rng.sample(range(len(lines)), len(lines) // 100):
        fields = lines[i].split(",")
        fields[3] = f"{rng.randrange(10**6) / 100:.2f}"
        lines[i] = ",".join(fields)
    return "".join(lines)


def zstd_only(old: bytes, new: bytes) -> int:
    """Bytes a fetch of ``new``'s chunks that ``old`` lacks costs as zstd/raw records."""
    had = {ref.hash for ref, _ in chunk_buffer(old)}
    sent: dict[str, int] = {}
    for ref, piece in chunk_buffer(new):
        if ref.hash not in had:
            sent.setdefault(ref.hash, HEADER_BYTES + len(compress_chunk(piece)[1]))
    return sum(sent.values())


class Refetches:
    """Counts the client's "did not rebuild from the local base" warnings while active."""

    def __init__(self) -> None:
        self.chunks = 0

    def __call__(self, event: dict) -> None:
        if "did not rebuild from the local base" in event.get("log_format", ""):
            self.chunks += event["n"]

    def __enter__(self) -> Refetches:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*") if p.is_file() and ".smartsync" not in p.relative_to(root).parts
    }


async def edited_on_a(
    eng: str, a_api: ServerAPI, b_api: ServerAPI, tmp_path: Path, rows: int, seed: int,
    checkout: bool = False, trusted_stat: bool = False,
) -> tuple[SyncCopy, SyncCopy, bytes, bytes]:
    """A writes a CSV, B gets it, A (having checked it out, if asked) edits 1% of its rows
    and syncs. Returns both copies and the old and new bytes. ``trusted_stat``: B's file gets
    an mtime old enough that B's stat cache trusts it (no re-read on the next scan)."""
    a = await SyncCopy.clone(a_api, eng, tmp_path / "a")
    b = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    lines = ledger(rows, seed)
    old = "".join(lines).encode()
    (tmp_path / "a" / "GL detail.csv").write_bytes(old)
    assert (await a.sync(a_api)).uploaded == 1
    assert (await b.sync(b_api)).downloaded == 1
    if trusted_stat:
        path = tmp_path / "b" / "GL detail.csv"
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
        await b.sync(b_api)  # re-reads it once and records the (now trusted) mtime
        record = b.state.get("GL detail.csv")
        assert record is not None and record.mtime_ns == st.st_mtime_ns - 10_000_000_000
    if checkout:
        await a_api.checkout(eng, "GL detail.csv")
    new = edit_rows(lines, seed + 1).encode()
    (tmp_path / "a" / "GL detail.csv").write_bytes(new)
    assert (await a.sync(a_api)).uploaded == 1
    return a, b, old, new


@pytest_twisted.ensureDeferred
async def test_pulling_an_edited_csv_costs_deltas_not_chunks(
    server: Daemon, apis: tuple[str, ServerAPI, ServerAPI], tmp_path: Path
) -> None:
    eng, a_api, b_api = apis
    a, b, old, new = await edited_on_a(eng, a_api, b_api, tmp_path, 80_000, 11)  # about 4 MB
    before = b_api.bytes_received + b_api.bytes_sent
    report = await b.sync(b_api)
    # every request and response body of B's sync: changes, manifest, the fetch with its bases
    wire = b_api.bytes_received + b_api.bytes_sent - before
    assert report.downloaded == 1
    baseline = zstd_only(old, new)
    assert baseline > 1_000_000, baseline  # 1% of rows touches nearly every chunk
    assert wire * 10 < baseline, (wire, baseline)
    print(f"pull of a 1%-edited {len(new)}-byte CSV: {wire} bytes on the wire, zstd-only {baseline}")
    assert files(tmp_path / "b") == files(tmp_path / "a")
    assert (tmp_path / "b" / "GL detail.csv").read_bytes() == new
    # the next edit pulls against the version just written (kept as B's new base)
    lines = new.decode().splitlines(keepends=True)
    newer = edit_rows(lines, 99).encode()
    (tmp_path / "a" / "GL detail.csv").write_bytes(newer)
    await a.sync(a_api)
    before = b_api.bytes_received + b_api.bytes_sent
    await b.sync(b_api)
    assert b_api.bytes_received + b_api.bytes_sent - before < zstd_only(new, newer) / 10
    assert (tmp_path / "b" / "GL detail.csv").read_bytes() == newer
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_a_damaged_base_copy_is_caught_and_the_chunks_come_whole(
    server: Daemon, apis: tuple[str, ServerAPI, ServerAPI], tmp_path: Path
) -> None:
    eng, a_api, b_api = apis
    a, b, old, new = await edited_on_a(eng, a_api, b_api, tmp_path, 30_000, 21, checkout=True)
    path = tmp_path / "b" / "GL detail.csv"
    # bob edits the file alice has checked out: his edit waits (not pushed), so the pull of
    # alice's version reads the old bytes from B's base copy, which decompresses fine but
    # holds other bytes
    mine = old + b"bob's extra row\n"
    path.write_bytes(mine)
    [copy] = list((tmp_path / "b" / ".smartsync" / "base").iterdir())
    other = "".join(ledger(30_000, 22)).encode()[: len(old)].ljust(len(old), b"x")
    copy.write_bytes(zstandard.ZstdCompressor(level=1).compress(other))
    before = b_api.bytes_received
    with Refetches() as refetched:
        report = await b.sync(b_api)
    assert refetched.chunks > 10  # deltas came, failed the hash check, and were fetched whole
    assert report.downloaded == 1 and report.locked == ["GL detail.csv"]
    assert path.read_bytes() == new  # alice's version, exactly
    [kept] = report.conflicts  # bob's edit kept beside it
    assert (tmp_path / "b" / kept).read_bytes() == mine
    assert b_api.bytes_received - before > zstd_only(old, new) * 0.9  # the chunks came whole
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_a_file_damaged_in_place_is_caught_and_the_chunks_come_whole(
    server: Daemon, apis: tuple[str, ServerAPI, ServerAPI], tmp_path: Path
) -> None:
    eng, a_api, b_api = apis
    a, b, old, new = await edited_on_a(eng, a_api, b_api, tmp_path, 30_000, 31, trusted_stat=True)
    path = tmp_path / "b" / "GL detail.csv"
    # bit rot: other bytes in place, same size, inode and mtime (the stat says "unchanged")
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(bytes(b ^ 0x20 for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = b_api.bytes_received
    with Refetches() as refetched:
        report = await b.sync(b_api)
    assert refetched.chunks > 10
    assert report.downloaded == 1
    assert path.read_bytes() == new
    assert b_api.bytes_received - before > zstd_only(old, new) * 0.9  # the chunks came whole
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_a_base_the_server_refuses_falls_back_to_whole_chunks(
    server: Daemon, apis: tuple[str, ServerAPI, ServerAPI], tmp_path: Path
) -> None:
    eng, a_api, b_api = apis
    a, b, old, new = await edited_on_a(eng, a_api, b_api, tmp_path, 10_000, 41)
    pieces = [(ref, bytes(piece)) for ref, piece in chunk_buffer(new)][:3]
    # a base that is no version of this engagement, and a range past the end of a real one
    unknown = DeltaHint("f" * 64, 0, old[:1000])
    past_end = DeltaHint(b.state.get("GL detail.csv").content, len(old) + 5, old[:10])  # type: ignore[union-attr]
    refused: list[str] = []

    def observe(event: dict) -> None:
        if "fetch with deltas refused" in event.get("log_format", ""):
            refused.append(event["why"])

    globalLogPublisher.addObserver(observe)
    try:
        for hint in (unknown, past_end):
            got = await b_api.fetch_chunks(
                eng, [(pieces[0][0].hash, pieces[0][0].size, hint), pieces[1][0], pieces[2][0]]
            )
            assert got == {ref.hash: data for ref, data in pieces}
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(refused) == 2 and "not a version in this engagement" in refused[0], refused
    assert "outside the base" in refused[1], refused
    a.close()
    b.close()
