"""A first sync of many small files overlaps scan and upload (issue 7), through the real daemon.

The real ``twistd smartsync`` over TLS, the real ServerAPI and engine on real folders. The
client's file-open hook and a recording ServerAPI subclass only observe (when files are
opened, which chunk hashes each upload request carries); one test injects a failure into the
first upload request to show the push still sends everything.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from smartsyncd.client.engine import SCAN_STEP, SyncCopy
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.scanner import Scanner
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.core.chunking import chunk_hash

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
FILES = 6 * SCAN_STEP  # several scan steps and several 4 MiB upload windows
_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("overlap"))
    try:
        d.add_user("alice", PASSWORD)
        d.add_user("bob", PASSWORD)
        yield d
    finally:
        d.stop()


class RecordingAPI(ServerAPI):
    """The real client; records each upload request's time and hashes, and can fail the
    first ``fail_first`` upload requests (injected network error)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.uploads: list[tuple[float, list[str]]] = []
        self.fail_first = 0
        self.on_missing: Any = None

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
    read_when_asked: list[int] = []
    api.on_missing = lambda: read_when_asked.append(len(opened))
    report = await copy.sync(api)
    assert report.uploaded == FILES and report.skipped == []
    assert len(opened) == FILES
    # the first window of chunks went out (asking which the server lacks) while files were
    # still being read
    assert read_when_asked[0] < FILES, read_when_asked
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
    fresh = os.urandom(3000)
    b_api = await connect(server, apis, "bob")
    await b_api.upload_chunks(eng, [(chunk_hash(fresh), fresh)])
    (tmp_path / "a" / "same-as-bob.bin").write_bytes(fresh)
    report = await copy.sync(api)
    assert report.uploaded == 3 and report.skipped == []
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
