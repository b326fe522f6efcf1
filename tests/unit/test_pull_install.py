"""Installing a pull's small files in slices (client/pullinstall.py) on a real folder and a
real client state: every file lands whole and is recorded, one state transaction a slice, and
a failure in the middle of a slice leaves the old files or the whole new ones, no temp files,
and a state that claims only the files that are durably there."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from smartsyncd.client.chunkindex import ChunkIndex
from smartsyncd.client.copycontext import CopyContext
from smartsyncd.client.localfs import TEMP_PREFIX
from smartsyncd.client.osfs import sync_file
from smartsyncd.client.progress import NullProgress
from smartsyncd.client.pullbatch import write_groups
from smartsyncd.client.pullinstall import SLICE_FILES, SmallFile, install_slice
from smartsyncd.client.pullwrite import FileWriter
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import Scanner
from smartsyncd.client.server import Server
from smartsyncd.client.state import ClientState, CopyMeta, FileRecord
from smartsyncd.client.wire import ChunkWanted
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.manifest import make_manifest
from smartsyncd.core.model import Manifest
from smartsyncd.core.planner import PullWrite
from smartsyncd.testing.syncpool import run_sync


class CountingState(ClientState):
    """The real client state, counting its write transactions."""

    updates = 0

    def update(self, put: Iterable[FileRecord] = (), delete: Iterable[str] = (),
               last_seq: int | None = None) -> None:
        type(self).updates += 1
        super().update(put, delete, last_seq)


class Store:
    """The server's side of a pull, in plain calls: manifests and chunks by hash."""

    def __init__(self) -> None:
        self.manifests_by_content: dict[str, Manifest] = {}
        self.chunks: dict[str, bytes] = {}

    def add(self, data: bytes) -> Manifest:
        pieces = chunk_buffer(data)
        manifest = make_manifest([ref for ref, _ in pieces])
        self.manifests_by_content[manifest.content] = manifest
        self.chunks.update((ref.hash, bytes(piece)) for ref, piece in pieces)
        return manifest

    async def manifests(self, eng: str, wanted: Sequence[tuple[str, Manifest | None]]
                        ) -> dict[str, Manifest]:
        return {content: self.manifests_by_content[content] for content, _ in wanted}

    async def fetch_chunks(
        self, eng: str, hashes: Iterable[ChunkWanted], stream: bool = False
    ) -> dict[str, bytes]:
        out = {}
        for item in hashes:
            h = item if isinstance(item, str) else item.hash if hasattr(item, "hash") else item[0]
            out[h] = self.chunks[h]
        return out


def _copy(root: Path) -> CopyContext:
    CountingState.updates = 0
    state = CountingState.create(root, CopyMeta("https://h", "acme", "alice", "c1"))
    return CopyContext(directory=root, state=state, run=maybeDeferred, scanner=Scanner(root),
                       clock=Clock(), user="alice", engagement="acme", copy_id="c1")


def _writer(ctx: CopyContext, store: Store) -> FileWriter:
    return FileWriter(ctx, cast(Server, store), SyncReport(), NullProgress())


def _files(n: int) -> dict[str, bytes]:
    return {f"{'AB'[i % 2]} - Papers/paper {i:03d}.txt": f"work paper {i}\n".encode() * (i + 1)
            for i in range(n)}


def _writes(store: Store, files: dict[str, bytes], seq: int = 1) -> list[PullWrite]:
    out = []
    for path, data in sorted(files.items()):
        m = store.add(data)
        out.append(PullWrite(path, seq, m.content, m.size, None))
        seq += 1
    return out


def _content(store: Store, w: PullWrite) -> bytes:
    return b"".join(store.chunks[c.hash] for c in store.manifests_by_content[w.content].chunks)


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_every_file_is_installed_and_recorded_one_transaction_a_slice(tmp_path: Path) -> None:
    ctx, store = _copy(tmp_path), Store()
    files = _files(150)  # three slices: 64 + 64 + 22
    writes = _writes(store, files)
    run_sync(write_groups(_writer(ctx, store), [(w, None) for w in writes], ChunkIndex()))
    for path, data in files.items():
        assert (tmp_path / path).read_bytes() == data
    rows = ctx.state.all_files()
    assert sorted(rows) == sorted(files)
    assert all(rows[w.path].content == w.content for w in writes)
    assert CountingState.updates == -(-150 // SLICE_FILES) == 3
    assert _temps(tmp_path) == []


def _fifo_in_the_middle(tmp_path: Path) -> tuple[CopyContext, Store, list[PullWrite], dict[str, FileRecord]]:
    ctx, store = _copy(tmp_path), Store()
    files = _files(SLICE_FILES)
    writes = _writes(store, files)
    # synced old versions of every file: a failed install must leave them as they were
    old = {}
    for w in writes:
        (tmp_path / w.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / w.path).write_bytes(b"old " + w.path.encode())
        st = (tmp_path / w.path).stat()
        m = store.add(b"old " + w.path.encode())
        old[w.path] = FileRecord(path=w.path, seq=0, content=m.content, size=m.size,
                                 mtime_ns=st.st_mtime_ns, inode=st.st_ino, chunks=m.chunks)
    ctx.state.update(old.values(), ())
    return ctx, store, writes, old


@pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs")
def test_a_failure_in_the_middle_of_a_slice_keeps_what_is_durable_and_only_that(
    tmp_path: Path,
) -> None:
    ctx, store, writes, old = _fifo_in_the_middle(tmp_path)
    middle = writes[30].path
    (tmp_path / middle).unlink()
    os.mkfifo(tmp_path / middle)  # not a regular file: the re-check before its rename fails
    CountingState.updates = 0
    with pytest.raises(OSError, match="not a regular file"):
        run_sync(write_groups(_writer(ctx, store), [(w, old[w.path]) for w in writes],
                              ChunkIndex()))
    rows = ctx.state.all_files()
    for i, w in enumerate(writes):
        if i == 30:
            continue
        data = (tmp_path / w.path).read_bytes()
        if i < 30:  # renamed before the failure: the whole new file, recorded
            assert data == _content(store, w)
            assert rows[w.path].content == w.content
        else:  # not reached: the old file, and the state still says so
            assert data == b"old " + w.path.encode()
            assert rows[w.path].content == old[w.path].content
    assert rows[middle].content == old[middle].content
    assert CountingState.updates == 1  # the 30 installed files, in one transaction
    assert _temps(tmp_path) == []


def test_an_fsync_failure_renames_nothing_and_leaves_no_temp_file(tmp_path: Path) -> None:
    ctx, store, writes, old = _fifo_in_the_middle(tmp_path)
    writer = _writer(ctx, store)
    items = [SmallFile(w, old[w.path], store.manifests_by_content[w.content],
                       {c.hash: store.chunks[c.hash]
                        for c in store.manifests_by_content[w.content].chunks})
             for w in writes]
    calls: list[int] = []

    def failing_sync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 20:
            raise OSError(errno.EIO, "input/output error")
        sync_file(fd)

    result = install_slice(writer, items, {}, sync=failing_sync)
    assert isinstance(result.error, OSError) and result.error.errno == errno.EIO
    assert result.done == []
    for w in writes:
        assert (tmp_path / w.path).read_bytes() == b"old " + w.path.encode()
    assert _temps(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need a privilege")
def test_a_file_whose_folder_is_a_link_is_skipped_and_the_rest_installed(
    tmp_path: Path,
) -> None:
    ctx, store = _copy(tmp_path), Store()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (tmp_path / "Linked").symlink_to(elsewhere)
    files = _files(10) | {"Linked/outside.txt": b"must not leave the copy"}
    writes = _writes(store, files)
    writer = _writer(ctx, store)
    run_sync(write_groups(writer, [(w, None) for w in writes], ChunkIndex()))
    assert [path for path, _ in writer.report.skipped] == ["Linked/outside.txt"]
    assert list(elsewhere.iterdir()) == []
    assert sorted(ctx.state.all_files()) == sorted(set(files) - {"Linked/outside.txt"})
    assert _temps(tmp_path) == []



class LoggingStore(Store):
    """Logs each chunk request: which files' chunks, and how many files were on disk then."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.asked: list[tuple[set[str], int]] = []
        self.owner: dict[str, str] = {}

    def add_file(self, path: str, data: bytes) -> Manifest:
        m = self.add(data)
        self.owner.update((c.hash, path) for c in m.chunks)
        return m

    async def fetch_chunks(
        self, eng: str, hashes: Iterable[ChunkWanted], stream: bool = False
    ) -> dict[str, bytes]:
        items = list(hashes)
        on_disk = sum(1 for p in self.root.rglob("*.txt") if p.is_file())
        got = await super().fetch_chunks(eng, items, stream)
        self.asked.append(({self.owner[h] for h in got}, on_disk))
        return got


def test_a_large_files_chunks_are_asked_beside_the_small_files_not_after(
    tmp_path: Path,
) -> None:
    ctx, store = _copy(tmp_path), LoggingStore(tmp_path)
    files = _files(100)
    scan = os.urandom(5 * 1024 * 1024)  # a scan: large (PARTIAL_MIN and up), new here
    writes = []
    for seq, (path, data) in enumerate(sorted(files.items()) + [("Scans/scan.pdf", scan)], 1):
        m = store.add_file(path, data)
        writes.append(PullWrite(path, seq, m.content, m.size, None))
    run_sync(write_groups(_writer(ctx, store), [(w, None) for w in writes], ChunkIndex()))
    assert (tmp_path / "Scans/scan.pdf").read_bytes() == scan
    assert sorted(ctx.state.all_files()) == sorted([*files, "Scans/scan.pdf"])
    # two requests, both asked before any small file was installed; the scan's chunks are
    # not asked again when it is written
    assert [on_disk for _, on_disk in store.asked] == [0, 0]
    assert {"Scans/scan.pdf"} in [owners for owners, _ in store.asked]
