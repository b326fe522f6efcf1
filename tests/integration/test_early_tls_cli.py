"""The installed ``smartsync`` command with its early start in use (issue 15: cli/startup.py
begins the TCP connections, cli/client.py begins TLS on them before the engine imports): a
clone, a sync and a status work; a changed certificate still fails ``engagements`` and
``sync`` with exit 4 and the same message; ``--quiet`` stays quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from test_cli_client import PASSWORD, provisioned

pytestmark = pytest.mark.integration

# only the console script's process begins connections early (cli/startup.py)
SCRIPT = Path(sys.executable).with_name("smartsync")


def _run(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg")})
    return subprocess.run([str(SCRIPT), "--config-dir", str(home / "cfg"), *args],
                          input=stdin, capture_output=True, text=True, timeout=90, env=env,
                          cwd=home)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


def _signed_in(home: Path, server: Daemon) -> None:
    home.mkdir()
    done = _run(home, "login", server.url, "--user", "alice", "--password-stdin",
                "--trust-fingerprint", server.fingerprint, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def test_clone_sync_and_status_through_the_early_start(server: Daemon, tmp_path: Path) -> None:
    assert SCRIPT.exists()  # the test is about the script's start, not ``python -c``
    home = tmp_path / "home"
    _signed_in(home, server)
    copy = home / "acme"
    cloned = _run(home, "--quiet", "clone", f"{server.url}/acme-2026", str(copy))
    assert cloned.returncode == 0, cloned.stderr
    assert (cloned.stdout, cloned.stderr) == ("", "")
    (copy / "memo.txt").write_text("tested, no exceptions\n")
    synced = _run(home, "sync", str(copy))
    assert synced.returncode == 0, synced.stderr
    other = home / "other"
    assert _run(home, "--quiet", "clone", f"{server.url}/acme-2026", str(other)).returncode == 0
    assert (other / "memo.txt").read_text() == "tested, no exceptions\n"
    status = _run(home, "--json", "status", str(other))
    assert status.returncode == 0, status.stderr


def test_a_changed_certificate_still_fails_with_exit_4(server: Daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _signed_in(home, server)
    copy = home / "acme"
    assert _run(home, "clone", f"{server.url}/acme-2026", str(copy)).returncode == 0
    server.stop()
    server.cert_path.unlink()
    server.key_path.unlink()
    server.restart()  # same port, a new self-signed certificate
    for args in (("engagements", server.url), ("sync", str(copy))):
        done = _run(home, *args)
        assert done.returncode == 4, (args, done.stderr)
        assert "certificate changed" in done.stderr and server.fingerprint in done.stderr
