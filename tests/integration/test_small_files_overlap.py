"""A first sync of many small files overlaps scan and upload (issue 7), through the real daemon.

The real ``twistd smartsync`` over TLS, the real ServerAPI and engine on real folders. The
client's file-open hook and a recording ServerAPI subclass only observe (when files are
opened, which chunk hashes each upload request carries); one test injects a failure into the
first upload request to show the push still sends everything.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import pytest_twisted
from daemon import Daemon, daemon_with_users
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from smartsyncd.client.engine import SCAN_STEP, SyncCopy
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.scanner import Scanner
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.client.wire import CommitAnswer, CommitChange
from smartsyncd.core.chunking import chunk_hash

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
FILES = 6 * SCAN_STEP  # several scan steps and several 4 MiB upload windows
_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from daemon_with_users(tmp_path_factory.mktemp("overlap"), "alice", "bob", password=PASSWORD)


class RecordingAPI(ServerAPI):
    """The real client; records each upload request's time and hashes, and can fail the
    first ``fail_first`` upload requests (injected network error)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.uploads: list[tuple[float, list[str]]] = []
        self.fail_first = 0
        self.on_missing: Any = None
        self.on_upload: Any = None
        self.on_commit: Any = None

    async def commit(self, eng: str, batch: str, changes: Any, *more: Any) -> CommitAnswer:
        if self.on_commit is not None:
            self.on_commit(changes)
        return await super().commit(eng, batch, changes, *more)

    async def missing_chunks(self, eng: str, hashes: Any) -> list[str]:
        if self.on_missing is not None:
            self.on_missing()
        return await super().missing_chunks(eng, hashes)

    async def upload_chunks(self, eng: str, chunks: Any) -> int:
        items = list(chunks)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise NetworkError("connection lost (injected)")
        self.uploads.append((time.monotonic(), [item[0] for item in items]))
        if self.on_upload is not None:
            self.on_upload()
        return await super().upload_chunks(eng, items)


@pytest.fixture
def apis() -> Iterator[list[RecordingAPI]]:
    made: list[RecordingAPI] = []
    yield made
    for api in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(api.close()))


async def connect(server: Daemon, apis: list[RecordingAPI], user: str = "alice") -> RecordingAPI:
    api = RecordingAPI(server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint))
    await api.login(user, PASSWORD)
    apis.append(api)
    return api


def write_files(root: Path, count: int, tag: str = "") -> int:
    total = 0
    for i in range(count):
        folder = root / f"folder{i % 10}"
        folder.mkdir(exist_ok=True)
        data = (f"{tag}file {i} ".encode() * 400)[: 4096 - i % 7] + os.urandom(8)
        (folder / f"f{i:04d}.bin").write_bytes(data)
        total += len(data)
    return total


async def assert_server_has(server: Daemon, api: RecordingAPI, eng: str, root: Path) -> None:
    """The server's head names every local file with its content id (hashed here from the
    bytes on disk), every manifest's chunks are stored and hash right, the log verifies."""
    _head, files = await api.snapshot(eng)
    local = Scanner(root).scan({})
    assert {f.path: f.content for f in files} == {p: e.content for p, e in local.entries.items()}
    done = server.admin("fsck")
    assert done.returncode == 0 and "no problems" in done.stdout, done.stdout + done.stderr
    done = server.admin("audit", "verify", eng)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_uploads_start_while_the_scan_goes_on_and_each_chunk_travels_once(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    opened: list[float] = []

    def noting_open(path: str) -> BinaryIO:
        opened.append(time.monotonic())
        return open(path, "rb")

    copy.scanner = Scanner(tmp_path / "a", open_file=noting_open)
    payload = write_files(tmp_path / "a", FILES)
    read_when_sent: list[int] = []
    asked: list[int] = []
    api.on_upload = lambda: read_when_sent.append(len(opened))
    api.on_missing = lambda: asked.append(len(opened))
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == []
    assert len(opened) == FILES
    # the first window of chunks went out while files were still being read, without asking
    # which the server lacks (nothing of this engagement was ever synced here)
    assert read_when_sent[0] < FILES, read_when_sent
    assert asked == []
    sent = [h for _, hashes in api.uploads for h in hashes]
    assert len(sent) == len(set(sent)) == FILES  # each chunk once
    assert report.bytes_sent < payload * 1.05

    await assert_server_has(server, api, eng, tmp_path / "a")

    # copied or renamed content, and chunks the server already has (bob sent the same bytes
    # first), do not travel again
    api.uploads.clear()
    data = (tmp_path / "a" / "folder0" / "f0000.bin").read_bytes()
    (tmp_path / "a" / "copy-of-f0000.bin").write_bytes(data)
    os.rename(tmp_path / "a" / "folder1" / "f0001.bin", tmp_path / "a" / "moved.bin")
    # (over the 32 KiB of new files a push would send with its commit without asking)
    fresh = [os.urandom(7000) for _ in range(5)]
    b_api = await connect(server, apis, "bob")
    await b_api.upload_chunks(eng, [(chunk_hash(f), f) for f in fresh])
    for i, f in enumerate(fresh):
        (tmp_path / "a" / f"same-as-bob-{i}.bin").write_bytes(f)
    report = await copy.sync(api)
    assert report.uploaded == 7 and report.skipped == []
    assert api.uploads == []
    assert report.bytes_sent == 0
    await assert_server_has(server, api, eng, tmp_path / "a")


@pytest_twisted.ensureDeferred
async def test_a_failed_early_upload_leaves_the_push_to_send_everything(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    write_files(tmp_path / "a", FILES, tag="x")
    api.fail_first = 1  # the first early upload request is cut
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == []
    assert api.fail_first == 0  # the failure did happen
    await assert_server_has(server, api, eng, tmp_path / "a")
    again = await copy.sync(api)
    assert again.uploaded == 0 and again.bytes_sent == 0


def noting_scanner(root: Path, opened: list[str]) -> Scanner:
    def noting_open(path: str) -> BinaryIO:
        opened.append(path)
        return open(path, "rb")

    return Scanner(root, open_file=noting_open)


@pytest_twisted.ensureDeferred
async def test_new_files_commit_in_batches_while_the_scan_goes_on(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    copy.early_commit_files = 300
    copy.window_bytes = 256 * 1024
    opened: list[str] = []
    first_commit = threading.Event()

    def open_last_after_a_commit(path: str) -> BinaryIO:
        # the scan reads its last file only once a batch was committed (or 60 s passed): a
        # condition, so the test shows commits go out while files are still being read
        if len(opened) == FILES - 1:
            first_commit.wait(60)
        opened.append(path)
        return open(path, "rb")

    copy.scanner = Scanner(tmp_path / "a", open_file=open_last_after_a_commit)
    write_files(tmp_path / "a", FILES, tag="c")
    commits: list[tuple[int, list[str]]] = []  # (files read so far, paths committed)

    def on_commit(changes: list[CommitChange]) -> None:
        commits.append((len(opened), [c.path for c in changes]))
        first_commit.set()

    api.on_commit = on_commit
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == [] and report.conflicts == []
    committed = [p for _, paths in commits for p in paths]
    assert len(committed) == len(set(committed)) == FILES  # each file in exactly one batch
    assert commits[0][0] < FILES and len(commits[0][1]) == 300  # a batch went during the scan
    await assert_server_has(server, api, eng, tmp_path / "a")
    head, _files = await api.snapshot(eng)
    assert copy.state.last_seq == head == FILES  # our own batches were not pulled back
    commits.clear()
    again = await copy.sync(api)
    assert again.uploaded == 0 and commits == []


@pytest_twisted.ensureDeferred
async def test_an_early_batch_meeting_a_conflict_or_a_lock_leaves_the_rest_to_the_push(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    b_api = await connect(server, apis, "bob")
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    bob = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    # bob creates a file alice also creates (other bytes), and checks out a folder
    (tmp_path / "b" / "folder0").mkdir()
    (tmp_path / "b" / "folder0" / "f0000.bin").write_bytes(b"bob's version")
    await bob.sync(b_api)
    await b_api.checkout(eng, "folder5")
    copy.early_commit_files = 200
    copy.window_bytes = 256 * 1024
    write_files(tmp_path / "a", FILES, tag="d")
    mine = (tmp_path / "a" / "folder0" / "f0000.bin").read_bytes()
    sizes: list[int] = []
    api.on_commit = lambda changes: sizes.append(len(changes))
    report = await copy.sync(api)
    # an early batch went first (it met the conflict or the lock): a full one, or the files
    # ready once the scan ended while the last windows were on the wire
    assert 64 <= sizes[0] <= 200 and len(sizes) >= 2, sizes
    locked = sorted(p for p in tree_paths(tmp_path / "a") if p.startswith("folder5/"))
    assert sorted(report.locked) == locked and locked
    assert len(report.conflicts) == 1 and report.conflicts[0].startswith("folder0/f0000 (conflict")
    # both versions are on the server and here; the locked folder's files wait locally
    assert (tmp_path / "a" / "folder0" / "f0000.bin").read_bytes() == b"bob's version"
    assert (tmp_path / "a" / report.conflicts[0]).read_bytes() == mine
    _head, files = await api.snapshot(eng)
    on_server = {f.path for f in files}
    assert on_server == set(tree_paths(tmp_path / "a")) - set(locked)
    done = server.admin("audit", "verify", eng)
    assert done.returncode == 0, done.stdout + done.stderr
    await b_api.checkin(eng, "folder5")
    after = await copy.sync(api)
    assert after.uploaded == len(locked)
    _head, files = await api.snapshot(eng)
    assert {f.path for f in files} == set(tree_paths(tmp_path / "a"))


def tree_paths(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".smartsync"]
        out += [str((Path(dirpath) / name).relative_to(root)) for name in filenames]
    return out


@pytest_twisted.ensureDeferred
async def test_after_an_all_missing_window_the_next_windows_upload_without_asking(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    """A first sync of new files: once a window came back all-missing, /missing is not asked
    for the next windows; every file still arrives once, each chunk travels once."""
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    copy.window_bytes = 512 * 1024  # about 12 windows of ~127 chunks
    payload = write_files(tmp_path / "a", FILES, tag="u")
    asked: list[int] = []
    api.on_missing = lambda: asked.append(len(api.uploads))
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == []
    sent = [h for _, hashes in api.uploads for h in hashes]
    assert len(sent) == len(set(sent)) == FILES
    windows = len(api.uploads)
    assert windows >= 10
    assert len(asked) <= 3 < windows, (asked, windows)  # only the first windows asked
    assert report.bytes_sent < payload * 1.05
    await assert_server_has(server, api, eng, tmp_path / "a")
    again = await copy.sync(api)
    assert again.uploaded == 0 and again.bytes_sent == 0


@pytest_twisted.ensureDeferred
async def test_chunks_found_on_the_server_make_the_next_windows_ask_again(
    server: Daemon, apis: list[RecordingAPI], tmp_path: Path
) -> None:
    """An interrupted sync left the chunks of the later files on the server (uploaded, not
    committed). The first windows go up unasked; the first one that meets chunks the server
    has (its answer's "present" count) turns asking back on: the rest do not travel again,
    and every file is committed once."""
    eng = server.new_engagement(f"ov-{next(_names)}", editors=["alice", "bob"])
    api = await connect(server, apis)
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    copy.window_bytes = 512 * 1024
    copy.early_commit_files = 10**9  # one commit by the push: the test counts uploads only
    payload = write_files(tmp_path / "a", FILES, tag="r")
    order = [path for path, _ in Scanner(tmp_path / "a").begin({}).todo]  # the scan's order
    later = order[FILES // 2:]
    left = {chunk_hash((tmp_path / "a" / p).read_bytes()): (tmp_path / "a" / p).read_bytes()
            for p in later}
    await api.upload_chunks(eng, list(left.items()))
    api.uploads.clear()
    present_before = api.chunks_present
    asked: list[int] = []
    api.on_missing = lambda: asked.append(len(api.uploads))
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == []
    sent = [h for _, hashes in api.uploads for h in hashes]
    assert len(sent) == len(set(sent))  # no chunk twice
    resent = [h for h in sent if h in left]
    assert api.chunks_present - present_before == len(resent) > 0  # a blind window met them
    # at most the windows in flight when the first "present" came back travel again
    assert len(resent) <= 3 * 130, len(resent)
    assert len(sent) - len(resent) == FILES - len(left)  # every chunk the server lacked
    assert len(asked) >= 2 and asked[-1] > 1  # asking resumed after blind windows
    assert report.bytes_sent < payload * 1.05
    await assert_server_has(server, api, eng, tmp_path / "a")
