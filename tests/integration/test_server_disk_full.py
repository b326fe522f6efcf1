"""A full chunk folder on the server: the upload is answered 507 at once with a clear message,
the client does not retry, nothing is half-written, and the same sync completes once there is
room. The full disk is a real 1 MiB tmpfs mounted by the test (root, like CI); a failed mount
fails the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import running_daemon
from reliability import fsck
from test_cli_client import PASSWORD, Client

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_storage(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "nas"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs (the test needs root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_chunk_folder_is_answered_507_at_once_and_nothing_half_written(
    tmp_path: Path, tiny_storage: Path
) -> None:
    chunks = tiny_storage / "chunks"
    with running_daemon(tmp_path, config_text=f"[storage]\npath = {chunks}\n") as d:
        for args, stdin in [
            (("user", "add", "alice", "--password-stdin"), PASSWORD + "\n"),
            (("engagement", "create", "acme"), None),
            (("grant", "acme", "--user", "alice", "--role", "editor"), None),
        ]:
            assert d.admin(*args, input=stdin).returncode == 0
        home = tmp_path / "home"
        home.mkdir()
        client = Client(home)
        done = client.run(
            "login", d.url, "--user", "alice", "--password-stdin",
            "--trust-fingerprint", d.fingerprint, input=PASSWORD + "\n",
        )
        assert done.returncode == 0, done.stderr
        assert client.run("clone", f"{d.url}/acme", str(home / "acme")).returncode == 0
        (home / "acme" / "scan.pdf").write_bytes(os.urandom(3 << 20))

        copy = str(home / "acme")
        done = client.run("sync", copy)
        assert done.returncode not in (0, 2), done.stderr
        assert "storage is full" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        log = d.log_text()
        assert log.count("chunk storage is full") == 1, "the client retried a full disk"
        assert "chunk storage is unavailable" not in log
        assert not any(p.name.startswith((".", "tmp")) or p.suffix == ".tmp" for p in chunks.rglob("*")), list(chunks.rglob("*"))
        assert "scan.pdf" in os.listdir(copy), "the local file is kept"

        done = subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_storage)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        done = client.run("sync", copy)
        assert done.returncode == 0, done.stderr
        fsck(d)
        clone = client.run("clone", f"{d.url}/acme", str(home / "again"))
        assert clone.returncode == 0, clone.stderr
        assert (home / "again" / "scan.pdf").read_bytes() == (home / "acme" / "scan.pdf").read_bytes()
