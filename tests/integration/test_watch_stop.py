"""A ``smartsync watch`` always stops, through the real CLI and daemon: one started with SIGINT
ignored, as a script's background job (``smartsync watch DIR &``, a CI step) is, stops on
SIGINT, and one stops on SIGTERM (a service manager), each with exit code 0 and its copy lock
released; one whose sync hangs on a frozen server is cancelled 10 s after SIGINT (exit 130).

Started with SIGINT ignored, the watch used to ignore every SIGINT: Twisted only takes SIGINT
over from Python's default handler. That is how three watch tests hung for 60 s in a CI run
whose test runs were started in the background (reproduced: a background pytest run hangs on
the first SIGINT, its watch idle in epoll with the watcher's threads still running)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import Client, login, provisioned, smartsync_command
from test_copylock_cli import lock_holder

from smartsyncd.client.copylock import syncing_path
from smartsyncd.client.localfs import TEMP_PREFIX

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


def test_a_sync_stuck_on_a_frozen_server_is_cancelled_10_s_after_sigint(
    server: Daemon, tmp_path: Path
) -> None:
    """The daemon is frozen (SIGSTOP: connections accepted, never answered) while the watch
    syncs a local edit; SIGINT then finds a sync that cannot end, and the watch cancels it after
    its 10 s grace, says so, and exits 130. Nothing is lost: the next sync sends the edit."""
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    copy = tmp_path / "copy"
    assert client.run("clone", f"{server.url}/acme-2026", str(copy)).returncode == 0
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    with out_path.open("w") as out, err_path.open("w") as err:
        watcher = subprocess.Popen(
            [*smartsync_command(), "--config-dir", str(client.config), "--json", "watch",
             str(copy)], stdout=out, stderr=err, text=True, env=env, cwd=client.home,
        )
    assert server.process is not None
    frozen = False
    try:
        wait_for(lambda: watcher.poll() is not None or out_path.read_text().strip(), 60,
                 "the watch's first sync")
        assert watcher.poll() is None, err_path.read_text()
        server.process.send_signal(signal.SIGSTOP)
        frozen = True
        (copy / "memo.txt").write_text("typed while the server hangs\n")
        wait_for(lambda: watcher.poll() is not None or syncing_path(copy).exists(), 60,
                 "the watch to start syncing the edit")  # the marker: a sync is running
        assert watcher.poll() is None, err_path.read_text()
        watcher.send_signal(signal.SIGINT)
        asked = time.monotonic()
        watcher.wait(timeout=60)
        took = time.monotonic() - asked
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        if frozen:
            server.process.send_signal(signal.SIGCONT)
    err = err_path.read_text()
    assert watcher.returncode == 130, err
    assert 10.0 <= took < 40.0, took
    assert re.search(r"^\S+ \S+ stopping took longer than 10 s: cancelled what was running",
                     err, re.MULTILINE), err
    assert "Traceback" not in err
    assert [p for p in copy.rglob("*") if p.name.startswith(TEMP_PREFIX)] == []
    again = client.run("--json", "sync", str(copy))  # lock released, the edit not lost
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["uploaded"] == 1
