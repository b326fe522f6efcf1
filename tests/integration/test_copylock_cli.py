"""One process per sync copy, through the real ``smartsync`` CLI and the real daemon:

- while ``smartsync watch`` runs on a copy, ``smartsync sync`` on the same copy is refused with
  exit code 2 and the documented message (naming the watcher's pid), ``smartsync status`` still
  works, and once the watch is stopped the sync runs;
- a ``smartsync sync`` SIGKILLed in the middle of a pull leaves ``.~smartsync-*.tmp`` files;
  the next sync removes them and the folder holds exactly the server's files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import Client, login, new_engagement, provisioned, smartsync_command

from smartsyncd.client.copylock import NOTE_OFFSET
from smartsyncd.client.localfs import TEMP_PREFIX

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = provisioned(tmp_path_factory.mktemp("copylock"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(tmp_path: Path, server: Daemon) -> Client:
    home = tmp_path / "home"
    home.mkdir()
    c = Client(home)
    done = login(c, server, "--trust-fingerprint", server.fingerprint)
    assert done.returncode == 0, done.stderr
    return c


def popen(client: Client, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    return subprocess.Popen(
        [*smartsync_command(), "--config-dir", str(client.config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=client.home,
    )


def lock_holder(copy: Path) -> int | None:
    try:
        # the holder note starts after the lock's first byte (client/copylock.py NOTE_OFFSET)
        note = (copy / ".smartsync" / "lock").read_bytes()[NOTE_OFFSET:]
        return int(json.loads(note or b"{}").get("pid"))
    except (OSError, ValueError, TypeError):
        return None


def temp_files(root: Path) -> list[str]:
    """The temp files beside user files under ``root``: not the copy's own ``.smartsync/``
    writes (a kill during one leaves it there; the sweep skips that folder by design)."""
    return sorted(
        os.path.join(d, n) for d, _dirs, names in os.walk(root) for n in names
        if n.startswith(TEMP_PREFIX) and Path(d).relative_to(root).parts[:1] != (".smartsync",)
    )


def user_files(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for d, dirs, names in os.walk(root):
        if Path(d) == root and ".smartsync" in dirs:
            dirs.remove(".smartsync")
        out.update({
            (Path(d) / n).relative_to(root).as_posix(): (Path(d) / n).read_bytes()
            for n in names if not n.startswith(TEMP_PREFIX)
        })
    return out


def test_second_sync_is_refused_while_watch_runs(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    new_engagement(server, "lock-2026")
    copy = tmp_path / "copy"
    done = client.run("clone", f"{server.url}/lock-2026", str(copy))
    assert done.returncode == 0, done.stderr
    watcher = popen(client, "--json", "watch", str(copy))
    try:
        wait_for(lambda: watcher.poll() is not None or lock_holder(copy) == watcher.pid, 60,
                 "the watch to hold the copy lock")
        assert watcher.poll() is None, watcher.communicate()[1]
        (copy / "memo.txt").write_text("typed while watching\n")
        refused = client.run("sync", str(copy))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]  # one line
        assert f"is in use by another smartsync process (pid {watcher.pid} " in refused.stderr
        assert "only one sync or watch at a time per copy" in refused.stderr
        assert "Traceback" not in refused.stderr
        as_json = client.run("--json", "sync", str(copy))
        assert as_json.returncode == 2
        assert json.loads(as_json.stdout) == {
            "error": "CopyInUse", "exit_code": 2, "message": as_json.stderr.strip().split(": ", 2)[2],
        }
        second_watch = client.run("watch", str(copy))
        assert second_watch.returncode == 2 and "in use by" in second_watch.stderr
        # reading beside the watch works
        status = client.run("--json", "status", str(copy))
        assert status.returncode == 0, status.stderr
        assert client.run("conflicts", str(copy)).returncode == 0
    finally:
        watcher.send_signal(signal.SIGINT)
        _out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    # the watch is gone: the lock went with it, a sync runs
    synced = client.run("--json", "sync", str(copy))
    assert synced.returncode == 0, synced.stderr


def test_sigkilled_pull_leaves_temp_files_that_the_next_sync_removes(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    new_engagement(server, "kill-2026")
    writer, reader = tmp_path / "writer", tmp_path / "reader"
    for d in (writer, reader):
        done = client.run("clone", f"{server.url}/kill-2026", str(d))
        assert done.returncode == 0, done.stderr
    rng = random.Random(5)
    names = [f"sub/doc-{i}.bin" if i % 2 else f"doc-{i}.bin" for i in range(8)]
    (writer / "sub").mkdir()
    left_behind = 0
    rounds = 0
    while left_behind == 0 and rounds < 6:
        rounds += 1
        for n in names:  # under PARTIAL_MIN: written through temp files beside the target
            (writer / n).write_bytes(rng.randbytes(rng.randint(2, 3) * 1024 * 1024))
        done = client.run("sync", str(writer))
        assert done.returncode == 0, done.stderr
        puller = popen(client, "sync", str(reader))
        try:
            wait_for(lambda puller=puller: puller.poll() is not None or temp_files(reader), 60,
                     "the pull to start writing", interval=0.002)
        finally:
            if puller.poll() is None:
                puller.send_signal(signal.SIGKILL)
            puller.communicate(timeout=30)
        left_behind = len(temp_files(reader))
    assert left_behind, f"no kill landed while a temp file existed in {rounds} rounds"
    assert (reader / ".smartsync" / "syncing").exists()  # the interrupted sync's marker
    # status (read-only) neither needs nor takes the lock, and removes nothing
    assert client.run("status", str(reader)).returncode == 0
    assert len(temp_files(reader)) == left_behind
    finished = client.run("sync", str(reader))
    assert finished.returncode == 0, finished.stderr
    assert temp_files(reader) == []
    assert not (reader / ".smartsync" / "syncing").exists()
    assert user_files(reader) == user_files(writer)
