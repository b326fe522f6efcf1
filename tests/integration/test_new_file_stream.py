"""New large files are read once and uploaded while the scan reads them (issue 15), through the
real daemon: the real ``twistd smartsync`` over TLS, the real ServerAPI and engine on real
folders. The scanner's file-open hook only observes or delays (a read waits until an upload
request went out, so the test shows the overlap without timing anything), or changes the file
part-way through its read."""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import pytest_twisted
from daemon import Daemon, daemon_with_users
from test_small_files_overlap import RecordingAPI, assert_server_has, connect, write_files
from twisted.internet.defer import Deferred

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.scanner import Scanner
from smartsyncd.client.wire import CommitChange

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
MiB = 1 << 20
_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from daemon_with_users(tmp_path_factory.mktemp("stream"), "alice", password=PASSWORD)


@pytest.fixture
def apis() -> Iterator[list[RecordingAPI]]:
    made: list[RecordingAPI] = []
    yield made
    for api in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(api.close()))


class HeldFile(io.FileIO):
    """A file whose first read past ``hold_at`` bytes waits for ``gate`` (at most 30 s:
    ``opened`` says whether it was open by then), and runs ``at_hold`` then."""

    def __init__(self, path: str, hold_at: int, gate: threading.Event, at_hold: object = None) -> None:
        super().__init__(path, "rb")
        self.hold_at, self.gate, self.at_hold = hold_at, gate, at_hold
        self.done = 0
        self.opened: list[bool] = []

    def readinto(self, buffer: object) -> int | None:  # type: ignore[override]
        if self.done >= self.hold_at and not self.opened:
            if self.at_hold is not None:
                at_hold, self.at_hold = self.at_hold, None
                at_hold()  # type: ignore[operator]
            self.opened.append(self.gate.wait(30))
        n = super().readinto(buffer)  # type: ignore[arg-type]
        self.done += n or 0
        return n


def large_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest_twisted.ensureDeferred
async def test_a_new_large_file_uploads_while_it_is_read_and_is_read_once(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"st-{next(_names)}", editors=["alice"])
    api = await connect(server, apis)
    root = tmp_path / "a"
    copy = await SyncCopy.clone(api, eng, root)
    copy.window_bytes = 512 * 1024
    write_files(root, 40)
    big = root / "scans" / "big.pdf"
    large_file(big, 6 * MiB + 12345)
    uploaded = threading.Event()
    opened: list[str] = []
    held: list[HeldFile] = []

    def open_file(path: str) -> BinaryIO:
        opened.append(path)
        if path.endswith("big.pdf"):
            # past 4 MiB the read waits until an upload request went out
            held.append(HeldFile(path, 4 * MiB, uploaded))
            return held[-1]  # type: ignore[return-value]
        return open(path, "rb")

    copy.scanner = Scanner(root, open_file=open_file)
    api.on_upload = uploaded.set
    asked: list[int] = []
    api.on_missing = lambda: asked.append(1)
    report = await copy.sync(api)
    assert report.uploaded == 41 and report.skipped == []
    assert opened.count(str(big)) == 1
    # its chunks were on their way before the file was read to the end
    assert held[0].opened == [True]
    sent = [h for _, hashes in api.uploads for h in hashes]
    assert len(sent) == len(set(sent))  # each chunk once
    assert report.bytes_sent < (6 * MiB + 40 * 4096) * 1.02
    assert asked == []  # a first upload: nothing asked, nothing left for the push to ask
    await assert_server_has(server, api, eng, root)
    again = await copy.sync(api)
    assert again.uploaded == 0 and again.bytes_sent == 0

    # renamed, and copied: its chunks do not travel again
    api.uploads.clear()
    os.rename(big, root / "scans" / "renamed.pdf")
    (root / "copy.pdf").write_bytes((root / "scans" / "renamed.pdf").read_bytes())
    report = await copy.sync(api)
    assert report.uploaded == 2 and report.bytes_sent == 0 and api.uploads == []
    await assert_server_has(server, api, eng, root)


@pytest_twisted.ensureDeferred
async def test_a_file_changed_while_streamed_is_committed_as_it_ends_never_torn(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"st-{next(_names)}", editors=["alice"])
    api = await connect(server, apis)
    root = tmp_path / "a"
    copy = await SyncCopy.clone(api, eng, root)
    copy.window_bytes = 512 * 1024
    big = root / "big.bin"
    first = large_file(big, 3 * MiB)
    final = first[: MiB] + os.urandom(2 * MiB + 7)
    gate = threading.Event()
    gate.set()
    held: list[HeldFile] = []

    def rewrite() -> None:  # another program saves a new version while the scan reads
        tmp = big.with_name("big.tmp")
        tmp.write_bytes(final)
        os.replace(tmp, big)

    def open_file(path: str) -> BinaryIO:
        if path.endswith("big.bin") and not held:
            held.append(HeldFile(path, 2 * MiB, gate, rewrite))
            return held[0]  # type: ignore[return-value]
        return open(path, "rb")

    copy.scanner = Scanner(root, open_file=open_file)
    commits: list[list[CommitChange]] = []
    api.on_commit = commits.append
    report = await copy.sync(api)
    assert held and held[0].at_hold is None  # the file was replaced part-way through its read
    assert report.skipped == [] and report.uploaded == 1
    # what was committed is the version on disk now, whole
    assert [c.path for batch in commits for c in batch] == ["big.bin"]
    await assert_server_has(server, api, eng, root)
    local = Scanner(root).scan({}).entries["big.bin"]
    _head, files = await api.snapshot(eng)
    assert {f.path: f.content for f in files} == {"big.bin": local.content}
    assert local.size == len(final)


@pytest_twisted.ensureDeferred
async def test_ready_files_commit_while_the_last_windows_are_on_the_wire(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"st-{next(_names)}", editors=["alice"])
    api = await connect(server, apis)
    root = tmp_path / "a"
    copy = await SyncCopy.clone(api, eng, root)
    copy.window_bytes = 256 * 1024
    write_files(root, 100)  # ~400 KiB of small files: confirmed before the large file's end
    large_file(root / "zz" / "big.bin", 3 * MiB + 999)
    running: list[int] = [0]
    commits: list[tuple[int, list[str]]] = []
    upload = api.upload_chunks

    async def counted(eng: str, chunks: object) -> int:
        running[0] += 1
        try:
            return await upload(eng, chunks)
        finally:
            running[0] -= 1

    api.upload_chunks = counted  # type: ignore[method-assign]
    api.on_commit = lambda changes: commits.append((running[0], [c.path for c in changes]))
    report = await copy.sync(api)
    assert report.uploaded == 101 and report.skipped == []
    # a commit went while the last uploads were still running, not after them all
    assert commits[0][0] > 0 and len(commits[0][1]) >= 64, commits
    committed = [p for _, paths in commits for p in paths]
    assert len(committed) == len(set(committed)) == 101
    await assert_server_has(server, api, eng, root)
