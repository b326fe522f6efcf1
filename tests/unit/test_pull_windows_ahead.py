"""A large file's download keeps several windows' fetches on the wire while one is written
(client/pullwrite.py ``WINDOWS_AHEAD``), and still writes them in order: a download cut in
the middle leaves a clean prefix in ``.smartsync/partial`` that the next sync resumes from.
Each window written asks the kernel (Linux) to start writing it out, so the fsync before the
rename has little left to wait for. Each fetch here takes 50 ms of Clock time before the
in-memory server answers."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from clientkit import MemoryServer, driven, files_of
from twisted.internet.task import deferLater

from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.pullwrite import partial_dir
from smartsyncd.runtime import writeback

RTT = 0.05
MiB = 1 << 20
WINDOW = 1 * MiB


class SlowFetchAPI(ServerAPI):
    """The real client, each chunk fetch 50 ms late; counts fetches in flight and bytes, and
    fails the fetch number ``fail_at`` (from 1) as a cut connection would."""

    clock: Any
    fail_at: int | None = None

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.in_flight = self.most_in_flight = self.calls = 0
        self.received = 0

    async def fetch_chunks(self, eng: str, hashes: Any, stream: bool = False) -> dict[str, bytes]:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await deferLater(self.clock, RTT, lambda: None)
            if number == self.fail_at:
                raise NetworkError("connection lost (injected)")
            got = await super().fetch_chunks(eng, hashes, stream=stream)
        finally:
            self.in_flight -= 1
        self.received += sum(len(v) for v in got.values())
        return got


async def _one_large_file(server: MemoryServer, tmp_path: Path) -> bytes:
    data = random.Random(7).randbytes(6 * MiB)
    writer = await server.api("alice")
    first = await server.clone(writer, tmp_path / "first")
    (tmp_path / "first" / "ledger.bin").write_bytes(data)
    await first.sync(writer)
    first.close()
    return data


async def _slow_api(server: MemoryServer) -> SlowFetchAPI:
    api: SlowFetchAPI = await server.api("alice", SlowFetchAPI)
    api.clock = server.clock
    return api


@driven
async def test_a_large_file_keeps_several_windows_on_the_wire(
    server: MemoryServer, tmp_path: Path
) -> None:
    data = await _one_large_file(server, tmp_path)
    api = await _slow_api(server)
    start = server.clock.seconds()
    copy = await server.clone(api, tmp_path / "copy", window_bytes=WINDOW)
    copy.close()
    elapsed = server.clock.seconds() - start
    assert files_of(tmp_path / "copy") == {"ledger.bin": data}
    assert api.calls >= 6  # one fetch per 1 MiB window (or more)
    assert api.most_in_flight >= 2
    # one window at a time would take a turn per fetch
    assert elapsed < api.calls * RTT * 0.6


@driven
async def test_a_cut_download_leaves_an_ordered_prefix_that_resumes(
    server: MemoryServer, tmp_path: Path
) -> None:
    data = await _one_large_file(server, tmp_path)
    api = await _slow_api(server)
    api.fail_at = 4  # three windows fetched (and written) before, others on the wire
    try:
        await server.clone(api, tmp_path / "copy", window_bytes=WINDOW)
    except NetworkError:
        pass
    else:
        raise AssertionError("the clone should have failed")
    parts = list(partial_dir(tmp_path / "copy").iterdir())
    assert len(parts) == 1
    kept = parts[0].read_bytes()
    # the windows before the cut, in order, and nothing after a gap
    assert 2 * WINDOW <= len(kept) < 5 * WINDOW
    assert data.startswith(kept)

    api.fail_at = None
    api.received = 0
    copy = server.open(tmp_path / "copy")
    await copy.sync(api)
    copy.close()
    assert files_of(tmp_path / "copy") == {"ledger.bin": data}
    assert api.received <= len(data) - len(kept)  # only what the part did not hold
    assert not list(partial_dir(tmp_path / "copy").iterdir())


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
@driven
async def test_each_written_window_starts_the_files_writeback(
    server: MemoryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint names the partial file being written and fails harmlessly (its result is
    ignored); the file is still fsynced and renamed whole."""
    hinted: list[tuple[str, int]] = []

    def hint(fd: int, offset: int, size: int, flags: int) -> int:
        hinted.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        return -1  # as a file system that does not support it

    monkeypatch.setattr(writeback, "_loaded", [hint])
    data = await _one_large_file(server, tmp_path)
    api = await _slow_api(server)
    copy = await server.clone(api, tmp_path / "copy", window_bytes=WINDOW)
    copy.close()
    assert files_of(tmp_path / "copy") == {"ledger.bin": data}
    # the in-memory daemon's pack writes take the same hint: the client's are its .part file's
    parts = [(name, size) for name, size in hinted if name.endswith(".part")]
    assert len(parts) >= 5
    sizes = [size for _, size in parts]
    assert sizes == sorted(sizes) and sizes[-1] == len(data)  # after each window, in order
