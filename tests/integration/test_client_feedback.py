"""Feedback while waiting, through the real ``smartsync`` CLI and daemon: each retry says what
failed and when it tries again, ``watch`` prints timestamped lines and says when the server is
unreachable (daemon stopped) and when it is back (restarted on the same port), and the server's
access log names the client's version and system (User-Agent) (issue 16)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import Client, login, provisioned, smartsync_command

from smartsyncd import __version__

pytestmark = pytest.mark.integration

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


def test_watch_says_when_the_server_is_unreachable_and_back(
    server: Daemon, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    copy = tmp_path / "copy"
    done = client.run("clone", f"{server.url}/acme-2026", str(copy))
    assert done.returncode == 0, done.stderr

    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    with out_path.open("w") as out, err_path.open("w") as err:
        watcher = subprocess.Popen(
            [*smartsync_command(), "--config-dir", str(client.config), "--attempts", "2",
             "watch", str(copy)],
            stdout=out, stderr=err, text=True, env=env, cwd=client.home,
        )
    try:
        def seen(pattern: str, where: Path = err_path) -> re.Match[str] | None:
            assert watcher.poll() is None, err_path.read_text()
            return re.search(pattern, where.read_text(), re.MULTILINE)

        wait_for(lambda: seen(rf"^{STAMP} watching "), 60, "the watch to start")
        wait_for(lambda: seen(rf"^{STAMP} sync: ", out_path), 60, "the first sync line")

        server.stop()
        line = wait_for(lambda: seen(rf"^{STAMP} server unreachable \((.*)\); trying again "
                                     r"in 5 s$"), 120, "the unreachable line")
        assert "cannot reach" in line[1]
        # the transport's retry before it gave up: what failed and when it tries again
        retry = wait_for(lambda: seen(rf"^{STAMP} GET /v1/engagements/acme-2026/\S+ failed "
                                      r"\((.*)\); trying again at \d\d:\d\d:\d\d \(in "
                                      r"\d+\.\d s, try 2 of 2\)$"), 60, "a retry line")
        assert "cannot reach" in retry[1]

        server.restart()
        wait_for(lambda: seen(rf"^{STAMP} server reachable again$"), 120, "the back line")
        lines = err_path.read_text().splitlines()
        assert sum("server unreachable" in x for x in lines) == 1  # once per outage
        # a change made after the restart still syncs
        (copy / "after-restart.txt").write_text("written while watching\n")
        wait_for(lambda: seen(rf"^{STAMP} sync: uploaded 1", out_path), 60,
                 "the upload after the restart")
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=60)
    assert watcher.returncode == 0, err_path.read_text()
    assert "Traceback" not in err_path.read_text()
    log = server.log_text()
    agents = re.findall(r'"smartsync/([^ ]+) \((Linux [^;]+); ([^;]+); Python [\d.]+; '
                        r'Twisted [^)]+\)"', log)
    assert agents and all(version == __version__ for version, _, _ in agents), log[-2000:]
