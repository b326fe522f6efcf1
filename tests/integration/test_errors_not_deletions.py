"""Errors are never deletions: a 503 in the middle of a pull, a copy folder replaced by an empty
one (or gone, as when a disk is unmounted), and a full disk during a pull. In each case nothing
is deleted on either side, no file is torn, and the copy converges once the cause is gone.

The 503 comes from the real daemon: its chunk storage folder is moved away (an unmounted storage
volume) after the pull's first chunk fetch. The full disk is a real 4 MiB tmpfs mounted by the
test (it runs as root, like CI); if the mount fails, the test fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from reliability import (
    PASSWORD,
    add_engagements,
    add_users,
    copy_files,
    record_figures,
    temp_files,
)
from twisted.internet import reactor

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.state import StateError
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration

CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("errors"))
    try:
        add_users(d, ["alice", "bob"])
        add_engagements(d, ["e503", "empty", "full"], {"alice": "editor", "bob": "editor"})
        yield d
        record_figures("errors_not_deletions", error_cases=sum(CASES.values()), **CASES)
    finally:
        d.stop()


class HookedAPI(ServerAPI):
    """The real client; ``after_fetch`` runs once after the first chunk fetch (the test's cue
    to take the server's storage away in the middle of the pull)."""

    after_fetch: Any = None

    async def fetch_chunks(self, eng: str, hashes: Any, stream: bool = False) -> dict[str, bytes]:
        got = await super().fetch_chunks(eng, hashes, stream)
        hook, self.after_fetch = self.after_fetch, None
        if hook is not None:
            hook()
        return got


async def api_for(d: Daemon, user: str, attempts: int = 4) -> HookedAPI:
    api = HookedAPI(
        d.url, reactor=reactor, policy=PinnedPolicy(d.fingerprint),
        backoff=Backoff(initial=0.05, maximum=0.2), max_attempts=attempts, timeout=20,
    )
    await api.login(user, PASSWORD)
    return api


def server_files(d: Daemon, eng: str) -> dict[str, str]:
    token = d.login("alice", PASSWORD)
    status, answer = d.request("GET", f"/v1/engagements/{eng}/snapshot", token=token)
    assert status == 200, answer
    return {f["path"]: f["content"] for f in answer["files"]}


def server_log(d: Daemon, eng: str) -> list[dict[str, Any]]:
    token = d.login("alice", PASSWORD)
    status, answer = d.request("GET", f"/v1/engagements/{eng}/changes?since=0", token=token)
    assert status == 200, answer
    changes: list[dict[str, Any]] = answer["changes"]
    return changes


def check_nothing_lost(before: dict[str, bytes], now: dict[str, bytes],
                       news: dict[str, bytes], remote_deletes: set[str]) -> None:
    """Every file is still there with its old or its new content (unless the server deleted
    it), and no file holds anything else."""
    for path, data in before.items():
        if path in remote_deletes and path not in now:
            continue
        assert path in now, f"{path} was deleted locally after an error"
        assert now[path] in (data, news.get(path)), f"{path} is torn"
    for path, data in now.items():
        assert path in before or data == news.get(path), f"{path} holds unexpected content"


@pytest_twisted.ensureDeferred
async def test_503_in_the_middle_of_a_pull_deletes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    writer_api, reader_api = await api_for(daemon, "alice"), await api_for(daemon, "bob")
    writer = await SyncCopy.clone(writer_api, "e503", tmp_path / "w")
    for i in range(8):
        (tmp_path / "w" / f"f{i}.bin").write_bytes(os.urandom(120_000))
    await writer.sync(writer_api)
    reader = await SyncCopy.clone(reader_api, "e503", tmp_path / "r", window_bytes=64 * 1024)
    news = {}
    for i in range(8):  # new versions (other chunks), one remote delete, one new file
        news[f"f{i}.bin"] = os.urandom(120_000)
        (tmp_path / "w" / f"f{i}.bin").write_bytes(news[f"f{i}.bin"])
    os.unlink(tmp_path / "w" / "f7.bin")
    news["added.bin"] = os.urandom(50_000)
    (tmp_path / "w" / "added.bin").write_bytes(news["added.bin"])
    await writer.sync(writer_api)
    head_files, head_log = server_files(daemon, "e503"), server_log(daemon, "e503")

    chunks = daemon.data_dir / "chunks"
    away = daemon.data_dir / "chunks.unmounted"
    before = copy_files(tmp_path / "r")
    last_seq = reader.state.last_seq
    reader_api.after_fetch = lambda: os.rename(chunks, away)
    try:
        with pytest.raises(NetworkError) as raised:
            await reader.sync(reader_api)
        assert "503" in str(raised.value) or "unavailable" in str(raised.value), raised.value
        now = copy_files(tmp_path / "r")
        check_nothing_lost(before, now, news, {"f7.bin"})
        assert len(now) >= len(before) - 1
        assert not temp_files(tmp_path / "r")
        assert reader.state.last_seq == last_seq, "the pull recorded changes it did not apply"
        # the reader pushed nothing: the server is exactly as the writer left it
        assert server_files(daemon, "e503") == head_files
        assert server_log(daemon, "e503") == head_log
        # a second attempt while the storage is still away: still nothing deleted
        with pytest.raises(NetworkError):
            await reader.sync(reader_api)
        check_nothing_lost(before, copy_files(tmp_path / "r"), news, {"f7.bin"})
    finally:
        if away.exists():
            os.rename(away, chunks)
    await reader.sync(reader_api)
    assert copy_files(tmp_path / "r") == copy_files(tmp_path / "w")
    assert server_log(daemon, "e503") == head_log
    CASES["server_503_mid_pull"] = 2
    for api in (writer_api, reader_api):
        await api.close()


@pytest_twisted.ensureDeferred
async def test_copy_folder_replaced_by_empty_or_gone_deletes_nothing(
    daemon: Daemon, tmp_path: Path
) -> None:
    from test_cli_client import Client

    home = tmp_path / "home"
    home.mkdir()
    cli = Client(home)
    done = cli.run("login", daemon.url, "--user", "alice", "--password-stdin",
                   "--trust-fingerprint", daemon.fingerprint, input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "copy"
    assert cli.run("clone", f"{daemon.url}/empty", str(copy)).returncode == 0
    for i in range(5):
        (copy / f"wp-{i}.xlsx").write_bytes(b"working paper %d" % i)
    assert cli.run("sync", str(copy)).returncode == 0
    files = server_files(daemon, "empty")
    log = server_log(daemon, "empty")
    assert len(files) == 5

    # the folder is replaced by an empty one (a restore gone wrong, a new mount point)
    os.rename(copy, tmp_path / "copy.real")
    copy.mkdir()
    for args in (("sync", str(copy)), ("status", str(copy)), ("watch", str(copy))):
        refused = cli.run(*args, timeout=30)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert "marker" in refused.stderr or "not a sync copy" in refused.stderr, refused.stderr
    # the folder is gone altogether (an unmounted disk)
    copy.rmdir()
    refused = cli.run("sync", str(copy))
    assert refused.returncode == 2, refused.stderr
    # the library says the same
    api = await api_for(daemon, "alice")
    os.rename(tmp_path / "copy.real", copy)
    opened = SyncCopy.open(copy)
    (copy / ".smartsync" / "copy.json").rename(tmp_path / "marker.json")
    for name in os.listdir(copy):
        if name != ".smartsync":
            os.unlink(copy / name)
    with pytest.raises(StateError):
        await opened.sync(api)
    assert server_files(daemon, "empty") == files and server_log(daemon, "empty") == log
    # back in place: the files come back from the server, nothing was deleted anywhere
    (tmp_path / "marker.json").rename(copy / ".smartsync" / "copy.json")
    opened.close()
    done = cli.run("sync", str(copy))
    assert done.returncode == 0, done.stderr
    # the marker's copy was intact, the files were deleted locally by hand: that IS a user's
    # delete, which is the one case that propagates; the check above is that the emptied
    # folder without its marker changed nothing
    assert len(server_log(daemon, "empty")) >= len(log)
    CASES["emptied_or_missing_folder"] = 5
    await api.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (the test needs root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest_twisted.ensureDeferred
async def test_full_disk_during_a_pull_deletes_nothing(
    daemon: Daemon, tmp_path: Path, tiny_disk: Path
) -> None:
    writer_api, reader_api = await api_for(daemon, "alice"), await api_for(daemon, "bob")
    writer = await SyncCopy.clone(writer_api, "full", tmp_path / "w")
    small = {f"doc-{i}.txt": os.urandom(200_000) for i in range(5)}
    for name, data in small.items():
        (tmp_path / "w" / name).write_bytes(data)
    await writer.sync(writer_api)
    root = tiny_disk / "copy"
    reader = await SyncCopy.clone(reader_api, "full", root)
    assert copy_files(root) == small
    # new versions of every file plus a 6 MiB file: more than the 4 MiB disk can hold
    news = {name: os.urandom(300_000) for name in small}
    news["scan.pdf"] = os.urandom(6 * 1024 * 1024)
    for name, data in news.items():
        (tmp_path / "w" / name).write_bytes(data)
    os.unlink(tmp_path / "w" / "doc-4.txt")
    await writer.sync(writer_api)
    head_log = server_log(daemon, "full")

    for attempt in range(2):
        before = copy_files(root)
        # what fits is pulled; the rest is reported with the space it needs (issue 16)
        report = await reader.sync(reader_api)
        assert report.partial
        assert "scan.pdf" in {path for path, _ in report.skipped}
        assert all("not enough space on the disk" in why for _, why in report.skipped)
        check_nothing_lost(before, copy_files(root), news, {"doc-4.txt"})
        assert not temp_files(root), "a half-written temp file was left on the full disk"
        assert server_log(daemon, "full") == head_log, f"attempt {attempt}: the reader pushed"
    # more room: the pull completes
    done = subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_disk)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    await reader.sync(reader_api)
    assert copy_files(root) == copy_files(tmp_path / "w")
    assert server_log(daemon, "full") == head_log
    reader.close()
    CASES["disk_full_mid_pull"] = 2
    for api in (writer_api, reader_api):
        await api.close()
    shutil.rmtree(root)
