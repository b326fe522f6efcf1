"""A ``smartsync watch`` always stops, through the real CLI and daemon: one started with SIGINT
ignored, as a script's background job (``smartsync watch DIR &``, a CI step) is, stops on
SIGINT, and one stops on SIGTERM (a service manager), each with exit code 0 and its copy lock
released.

Started with SIGINT ignored, the watch used to ignore every SIGINT: Twisted only takes SIGINT
over from Python's default handler. That is how three watch tests hung for 60 s in a CI run
whose test runs were started in the background (reproduced: a background pytest run hangs on
the first SIGINT, its watch idle in epoll with the watcher's threads still running)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import Client, login, provisioned, smartsync_command
from test_copylock_cli import lock_holder

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


def _watch(client: Client, copy: Path, *, sigint_ignored: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    watcher = subprocess.Popen(
        [*smartsync_command(), "--config-dir", str(client.config), "--json", "watch", str(copy)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=client.home,
        # what `smartsync watch DIR &` in a script (job control off) does to the watch
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored
        else None,
    )
    wait_for(lambda: watcher.poll() is not None or lock_holder(copy) == watcher.pid, 60,
             "the watch to hold the copy lock")
    assert watcher.poll() is None, watcher.communicate()
    return watcher


@pytest.mark.parametrize("how", ["sigint-while-ignored", "sigterm"])
def test_a_watch_stops_on_the_signal(
    server: Daemon, tmp_path: Path, how: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    copy = tmp_path / "copy"
    done = client.run("clone", f"{server.url}/acme-2026", str(copy))
    assert done.returncode == 0, done.stderr
    (copy / "memo.txt").write_text("typed before the watch\n")

    watcher = _watch(client, copy, sigint_ignored=how == "sigint-while-ignored")
    try:
        wait_for(lambda: json.loads(client.run("--json", "status", str(copy)).stdout)
                 .get("clean"), 60, "the watch's first sync")  # status reads beside the watch
    finally:
        watcher.send_signal(signal.SIGINT if how == "sigint-while-ignored" else signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err and "took longer" not in err
    reports = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r["uploaded"] == 1 for r in reports)
    again = client.run("sync", str(copy))  # the lock went with the watch
    assert again.returncode == 0, again.stderr
