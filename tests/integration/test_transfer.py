"""Transfer paths through the real daemon: delta uploads against the previous version, the
fallback when a delta cannot be rebuilt, and pipelined uploads arriving whole."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("transfer"))
    try:
        d.add_user("alice", PASSWORD)
        yield d
    finally:
        d.stop()


_count = iter(range(1, 1000))


@pytest.fixture
def api(server: Daemon) -> Iterator[ServerAPI]:
    name = server.new_engagement(f"t-{next(_count)}", editors=["alice"])
    client = ServerAPI(server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint))
    client.eng = name  # type: ignore[attr-defined]
    pytest_twisted.blockon(Deferred.fromCoroutine(client.login("alice", PASSWORD)))
    yield client
    pytest_twisted.blockon(Deferred.fromCoroutine(client.close()))


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


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*") if p.is_file() and ".smartsync" not in p.relative_to(root).parts
    }


@pytest_twisted.ensureDeferred
async def test_edited_csv_travels_as_a_delta_and_arrives_exact(
    server: Daemon, api: ServerAPI, tmp_path: Path
) -> None:
    eng = api.eng  # type: ignore[attr-defined]
    a = await SyncCopy.clone(api, eng, tmp_path / "a")
    lines = ledger(40_000, 1)  # about 2 MB
    path = tmp_path / "a" / "GL detail.csv"
    path.write_text("".join(lines))
    first = await a.sync(api)
    assert first.uploaded == 1
    path.write_text(edit_rows(lines, 2))  # 1% of the rows: nearly every chunk changes
    second = await a.sync(api)
    assert second.uploaded == 1
    # plain zstd chunks would be about a third of 2 MB; deltas are a few KB
    assert second.bytes_sent < 60_000, second.bytes_sent
    b = await SyncCopy.clone(api, eng, tmp_path / "b")
    assert files(tmp_path / "b") == files(tmp_path / "a")
    b.close()
    done = server.admin("fsck")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_a_damaged_base_copy_costs_bytes_not_data(
    server: Daemon, api: ServerAPI, tmp_path: Path
) -> None:
    eng = api.eng  # type: ignore[attr-defined]
    a = await SyncCopy.clone(api, eng, tmp_path / "a")
    lines = ledger(20_000, 3)
    path = tmp_path / "a" / "TB.csv"
    path.write_text("".join(lines))
    await a.sync(api)
    cache = tmp_path / "a" / ".smartsync" / "base"
    [copy] = list(cache.iterdir())
    # a base copy that decompresses fine but holds other bytes: the server rebuilds wrong
    # chunks from the deltas, refuses them, and the engine resends them whole
    import zstandard

    other = "".join(ledger(20_000, 4)).encode()[: path.stat().st_size].ljust(path.stat().st_size, b"x")
    copy.write_bytes(zstandard.ZstdCompressor(level=1).compress(other))
    path.write_text(edit_rows(lines, 5))
    report = await a.sync(api)
    assert report.uploaded == 1
    assert report.bytes_sent > 100_000  # the chunks went whole after the refused deltas
    b = await SyncCopy.clone(api, eng, tmp_path / "b")
    assert files(tmp_path / "b") == files(tmp_path / "a")
    b.close()


@pytest_twisted.ensureDeferred
async def test_pipelined_upload_of_many_windows_arrives_whole(
    server: Daemon, api: ServerAPI, tmp_path: Path
) -> None:
    eng = api.eng  # type: ignore[attr-defined]
    a = await SyncCopy.clone(api, eng, tmp_path / "a", window_bytes=512 * 1024)
    for i in range(3):
        (tmp_path / "a" / f"scan-{i}.pdf").write_bytes(os.urandom(3_000_000))
    requests_before = api.requests
    report = await a.sync(api)
    assert report.uploaded == 3
    assert api.requests - requests_before >= 18  # 9 MB in windows of 512 KiB
    b = await SyncCopy.clone(api, eng, tmp_path / "b")
    assert files(tmp_path / "b") == files(tmp_path / "a")
    b.close()
