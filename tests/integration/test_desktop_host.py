"""The desktop sync loop (client/copyservice.py) in its example host (docs/examples/
desktop_tray.py), run as a process against the real daemon and driven through stdin: states on
stdout, pause and resume, the daemon stopped (offline) and restarted (a wake syncs at once), and
no edit lost on the way (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import Client, login, provisioned

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "desktop_tray.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


class Host:
    """The example host as a process: ``send`` a command, ``seen`` a line of its output."""

    def __init__(self, client: Client, copy: Path, out: Path) -> None:
        self.out = out
        env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
        env["HOME"] = str(client.home)
        with out.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(EXAMPLE), str(copy), "--config-dir", str(client.config)],
                stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env,
            )

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def seen(self, line: str, after: int = 0) -> bool:
        assert self.process.poll() is None, self.out.read_text()
        return line in self.lines()[after:]

    def quit(self) -> int:
        if self.process.poll() is None:
            self.send("q")
        return self.process.wait(timeout=60)


def _setup(server: Daemon, tmp_path: Path) -> tuple[Client, Path, Path]:
    client = Client(tmp_path / "home")
    client.home.mkdir()
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    copy, other = tmp_path / "copy", tmp_path / "other"
    for folder in (copy, other):
        done = client.run("clone", f"{server.url}/acme-2026", str(folder))
        assert done.returncode == 0, done.stderr
    return client, copy, other


def _server_has(client: Client, other: Path, name: str, text: str) -> bool:
    done = client.run("sync", str(other))
    assert done.returncode == 0, done.stderr
    path = other / name
    return path.exists() and path.read_text() == text


def test_host_pause_resume_and_quit_through_stdin(server: Daemon, tmp_path: Path) -> None:
    client, copy, other = _setup(server, tmp_path)
    host = Host(client, copy, tmp_path / "host.out")
    try:
        wait_for(lambda: host.seen("state: idle"), 60, "the first sync")
        host.send("p")
        wait_for(lambda: host.seen("state: paused"), 30, "paused")
        mark = len(host.lines())
        (copy / "paused-edit.txt").write_text("made while paused\n")
        # the loop looks for local edits every second; a status and a sync of the other copy
        # take a few seconds, during which a paused loop must not sync
        client.run("status", str(copy))
        assert not host.seen("state: syncing", mark)
        assert not _server_has(client, other, "paused-edit.txt", "made while paused\n")
        host.send("r")
        wait_for(lambda: host.seen("report: uploaded 1, downloaded 0, conflicts 0, skipped 0",
                                   mark), 60, "the edit synced after resume")
        assert _server_has(client, other, "paused-edit.txt", "made while paused\n")
    finally:
        code = host.quit()
    assert code == 0, host.out.read_text()
    assert "bye" in host.lines() and "Traceback" not in host.out.read_text()


def test_host_offline_then_back_loses_nothing(server: Daemon, tmp_path: Path) -> None:
    client, copy, other = _setup(server, tmp_path)
    host = Host(client, copy, tmp_path / "host.out")
    try:
        wait_for(lambda: host.seen("state: idle"), 60, "the first sync")
        server.stop()
        (copy / "offline-edit.txt").write_text("made while the server was down\n")
        wait_for(lambda: host.seen("state: waiting-to-retry") or host.seen("state: offline"),
                 180, "the loop to notice the server is down")
        assert (copy / "offline-edit.txt").exists()  # an error never reads as a deletion
        server.restart()
        mark = len(host.lines())
        host.send("w")  # what the host does on the system's "network changed" notice
        wait_for(lambda: host.seen("woke: host", mark), 30, "the wake")
        wait_for(lambda: host.seen("state: idle", mark), 60, "the sync after the wake")
        assert _server_has(client, other, "offline-edit.txt", "made while the server was down\n")
    finally:
        code = host.quit()
    assert code == 0, host.out.read_text()
