"""End to end: the real ``twistd smartsync`` daemon over TLS, set up with the real
``smartsync-admin``, driven by the real ServerAPI and sync engine on real folders."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from smartsyncd.client.engine import SyncCopy, SyncReport
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.progress import NullProgress
from smartsyncd.client.scanner import Scanner
from smartsyncd.client.state import StateError, marker_path
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("e2e"))
    try:
        for user in ("alice", "bob"):
            d.add_user(user, PASSWORD)
        yield d
    finally:
        d.stop()


@pytest.fixture
def eng(server: Daemon) -> str:
    """A fresh engagement per test, both users editors."""
    return server.new_engagement(f"eng-{next(_names)}", editors=["alice", "bob"])


class FlakyAPI(ServerAPI):
    """The real client whose chunk uploads fail after ``fail_after`` requests (fault
    injection: the engine's resume is under test, not this class)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.fail_after: int | None = None
        self.uploads = 0
        self.fetches = 0

    async def upload_chunks(self, eng: str, chunks: Any) -> int:
        if self.fail_after is not None and self.uploads >= self.fail_after:
            raise NetworkError("connection lost in the middle of the upload (injected)")
        self.uploads += 1
        return await super().upload_chunks(eng, chunks)

    async def fetch_chunks(self, eng: str, hashes: Any, stream: bool = False) -> dict[str, bytes]:
        self.fetches += 1
        return await super().fetch_chunks(eng, hashes, stream)


@pytest.fixture
def apis(server: Daemon) -> Iterator[list[FlakyAPI]]:
    made: list[FlakyAPI] = []
    yield made
    for api in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(api.close()))


async def connect(server: Daemon, apis: list[FlakyAPI], user: str) -> FlakyAPI:
    api = FlakyAPI(server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint))
    await api.login(user, PASSWORD)
    apis.append(api)
    return api


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".smartsync" in dirnames:
            dirnames.remove(".smartsync")
        for name in filenames:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


@pytest_twisted.ensureDeferred
async def test_two_copies_converge(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    a_api, b_api = await connect(server, apis, "alice"), await connect(server, apis, "bob")
    a = await SyncCopy.clone(a_api, eng, tmp_path / "a")
    b = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    (tmp_path / "a" / "Working papers").mkdir()
    (tmp_path / "a" / "Working papers" / "B-1 Cash.xlsx").write_bytes(os.urandom(200_000))
    (tmp_path / "a" / "Résumé.docx").write_bytes(b"caf\xc3\xa9")
    (tmp_path / "b" / "from-bob.txt").write_bytes(b"bob")
    await a.sync(a_api)
    await b.sync(b_api)
    await a.sync(a_api)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert set(tree(tmp_path / "a")) == {
        "Working papers/B-1 Cash.xlsx", "Résumé.docx", "from-bob.txt"
    }
    status = await a.status(a_api)
    assert status.clean


@pytest_twisted.ensureDeferred
async def test_concurrent_edits_give_a_conflict_copy_and_lose_nothing(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    a_api, b_api = await connect(server, apis, "alice"), await connect(server, apis, "bob")
    a = await SyncCopy.clone(a_api, eng, tmp_path / "a")
    (tmp_path / "a" / "TB.xlsx").write_bytes(b"v1")
    await a.sync(a_api)
    b = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    (tmp_path / "a" / "TB.xlsx").write_bytes(b"alice v2")
    (tmp_path / "b" / "TB.xlsx").write_bytes(b"bob v2")
    await a.sync(a_api)
    report = await b.sync(b_api)
    assert len(report.conflicts) == 1 and report.conflicts_left == 1
    await a.sync(a_api)
    expected = {"TB.xlsx": b"alice v2", report.conflicts[0]: b"bob v2"}
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == expected
    assert a.conflicts() == [report.conflicts[0]]


@pytest_twisted.ensureDeferred
async def test_upload_cut_mid_transfer_resumes_with_only_missing_chunks(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    api = await connect(server, apis, "alice")
    copy = await SyncCopy.clone(api, eng, tmp_path / "a", window_bytes=512 * 1024)
    total = 0
    for i in range(4):
        data = os.urandom(1_000_000)  # incompressible: bytes on the wire ~ raw bytes
        total += len(data)
        (tmp_path / "a" / f"scan-{i}.pdf").write_bytes(data)
    api.fail_after = 4
    with pytest.raises(NetworkError):
        await copy.sync(api)
    first = api.bytes_sent
    assert 0 < first < total

    api.fail_after = None
    report = await copy.sync(api)
    assert report.uploaded == 4
    # only what was missing went the second time (plus record headers)
    assert report.bytes_sent <= total - first + 16 * 1024
    assert report.bytes_sent < total * 0.75
    b_api = await connect(server, apis, "bob")
    await SyncCopy.clone(b_api, eng, tmp_path / "b")
    assert tree(tmp_path / "b") == tree(tmp_path / "a")


@pytest_twisted.ensureDeferred
async def test_rename_moves_no_chunks(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    a_api, b_api = await connect(server, apis, "alice"), await connect(server, apis, "bob")
    a = await SyncCopy.clone(a_api, eng, tmp_path / "a")
    (tmp_path / "a" / "draft.docx").write_bytes(os.urandom(700_000))
    await a.sync(a_api)
    b = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    os.rename(tmp_path / "a" / "draft.docx", tmp_path / "a" / "Final report.docx")
    sent_before, uploads_before = a_api.bytes_sent, a_api.uploads
    report = await a.sync(a_api)
    assert (report.uploaded, report.deleted_remote, report.bytes_sent) == (1, 1, 0)
    assert a_api.uploads == uploads_before
    assert a_api.bytes_sent - sent_before < 64 * 1024  # only small JSON requests
    fetches_before = b_api.fetches
    await b.sync(b_api)
    assert b_api.fetches == fetches_before  # the new name is assembled from the local file
    assert tree(tmp_path / "b") == tree(tmp_path / "a")


@pytest_twisted.ensureDeferred
async def test_pulled_change_never_overwrites_an_unpushed_local_edit(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    a_api, b_api = await connect(server, apis, "alice"), await connect(server, apis, "bob")
    a = await SyncCopy.clone(a_api, eng, tmp_path / "a")
    (tmp_path / "a" / "memo.txt").write_bytes(b"v1")
    await a.sync(a_api)
    b = await SyncCopy.clone(b_api, eng, tmp_path / "b")
    (tmp_path / "a" / "memo.txt").write_bytes(b"alice v2")
    await a.sync(a_api)
    # bob's edit lands after his scan would have run: only the pull sees it
    (tmp_path / "b" / "memo.txt").write_bytes(b"bob unpushed")
    report = SyncReport()
    await b._pull(b_api, report, NullProgress())
    assert len(report.conflicts) == 1
    assert (tmp_path / "b" / report.conflicts[0]).read_bytes() == b"bob unpushed"
    assert (tmp_path / "b" / "memo.txt").read_bytes() == b"alice v2"
    await b.sync(b_api)
    await a.sync(a_api)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


@pytest_twisted.ensureDeferred
async def test_emptied_copy_folder_refuses_to_sync_and_server_keeps_every_file(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    api = await connect(server, apis, "alice")
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    for i in range(5):
        (tmp_path / "a" / f"f{i}.txt").write_bytes(b"%d" % i)
    await copy.sync(api)
    for name in os.listdir(tmp_path / "a"):
        if name != ".smartsync":
            os.unlink(tmp_path / "a" / name)
    marker_path(tmp_path / "a").unlink()
    with pytest.raises(StateError):
        await copy.sync(api)
    _head, files = await api.snapshot(eng)
    assert sorted(f.path for f in files) == [f"f{i}.txt" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_noop_sync_of_2000_files_opens_no_file(
    server: Daemon, eng: str, apis: list[FlakyAPI], tmp_path: Path
) -> None:
    api = await connect(server, apis, "alice")
    copy = await SyncCopy.clone(api, eng, tmp_path / "a")
    for i in range(2000):
        folder = tmp_path / "a" / f"d{i % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(b"file %d\n" % i)
        # written "a while ago": a file recorded within a second of its mtime is re-read
        # once (racy-mtime rule), which is not what this test measures
        os.utime(folder / f"f{i}.txt", (1_700_000_000, 1_700_000_000))
    report = await copy.sync(api)
    assert report.uploaded == 2000
    opened: list[str] = []

    def counting_open(path: str) -> Any:
        opened.append(path)
        return open(path, "rb")

    copy.close()  # one open copy at a time (the copy lock)
    again = SyncCopy.open(tmp_path / "a", scanner=Scanner(tmp_path / "a", open_file=counting_open))
    report = await again.sync(api)
    assert opened == []
    assert (report.uploaded, report.downloaded, report.bytes_sent) == (0, 0, 0)
