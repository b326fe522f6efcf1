"""Several instances on one host, each from its own config file (data folder, port, pid file,
log): the documented ``twistd --pidfile ... --logfile ... smartsync --config ...`` form, and
``smartsync-admin --config`` reaching the right instance's data without ``--data-dir``.

(test_daemon.py's side-by-side test covers the ``--data-dir`` form.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from daemon import Daemon, DaemonStartError, admin_command, running_daemon

pytestmark = pytest.mark.integration


def admin(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*admin_command(), "--config", str(config), *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd="/",
    )


def test_two_instances_from_their_own_config_files_do_not_interfere(tmp_path: Path) -> None:
    config = "[server]\ndata_dir = {name}-data\n"
    with running_daemon(
        tmp_path, name="a", config_text=config.format(name="a"), pass_data_dir=False
    ) as a, running_daemon(
        tmp_path, name="b", config_text=config.format(name="b"), pass_data_dir=False
    ) as b:
        assert a.config_path is not None and b.config_path is not None
        assert a.data_dir == tmp_path / "a" / "a-data" and b.data_dir == tmp_path / "b" / "b-data"
        assert a.port != b.port and a.fingerprint != b.fingerprint
        assert a.process is not None and b.process is not None
        assert int(a.pidfile.read_text()) == a.process.pid
        assert int(b.pidfile.read_text()) == b.process.pid

        # the admin tool, given only a config file, works on that instance's data
        done = admin(a.config_path, "user", "add", "alice", "--password-stdin", stdin="pw-a\n")
        assert done.returncode == 0, done.stderr
        assert "alice" in admin(a.config_path, "user", "list").stdout
        assert "(no users)" in admin(b.config_path, "user", "list").stdout
        assert a.login("alice", "pw-a")
        assert b.request("POST", "/v1/login", json_body={"user": "alice", "password": "pw-a"})[0] == 401

        a.stop()
        assert b.request("GET", "/healthz")[0] == 200
        assert "smartsyncd stopped" in a.log_text() and "smartsyncd stopped" not in b.log_text()
        assert not a.pidfile.exists() and b.pidfile.exists()


def test_a_second_daemon_on_a_folder_in_use_refuses_to_start_naming_the_first(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-data"
    with Daemon(tmp_path / "first", data_dir=shared).start() as first:
        assert first.process is not None
        second = Daemon(tmp_path / "second", data_dir=shared)
        with pytest.raises(DaemonStartError) as refused:
            second.start()
        assert second.process is not None and second.process.returncode == 1
        assert f"in use by another smartsyncd (process {first.process.pid})" in str(refused.value)
        # The refusal touched nothing of the first daemon's: it still serves, lock intact.
        assert first.request("GET", "/healthz")[0] == 200
        assert os.readlink(shared / "daemon.lock") == str(first.process.pid)
        first.kill()
    # A holder that died (SIGKILL: no clean-up) leaves a stale lock that the next start takes.
    with Daemon(tmp_path / "third", data_dir=shared).start() as third:
        assert third.process is not None
        assert os.readlink(shared / "daemon.lock") == str(third.process.pid)
    assert not (shared / "daemon.lock").exists(), "a clean stop releases the folder"
