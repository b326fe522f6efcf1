"""Issue 17: a full chunk folder shows in the metrics and /healthz of the real daemon.

The chunk folder is a real 1 MiB tmpfs (root, like CI; a failed mount fails the test). An upload
larger than it is answered 507; the scrape then shows the store error (``full``), the 507 in the
request counts, and the folder's free space below the warning threshold, which /healthz reports
as a warning.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from tests.integration.admin_endpoint import ADMIN_CONFIG, admin_port, scrape, total, value
from tests.integration.daemon import running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


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


def records(n: int, size: int) -> bytes:
    body = b""
    for _ in range(n):
        data = os.urandom(size)
        body += bytes.fromhex(blake3(data).hexdigest()) + bytes([0])
        body += struct.pack(">II", size, size) + data
    return body


def test_a_full_chunk_folder_shows_in_metrics_and_healthz(tmp_path: Path, tiny_storage: Path) -> None:
    config = ADMIN_CONFIG + f"[storage]\npath = {tiny_storage / 'chunks'}\n"
    with running_daemon(tmp_path, config_text=config) as d:
        d.add_user("alice", PASSWORD)
        d.new_engagement("full", editors=["alice"])
        token = d.login("alice", PASSWORD)
        status, answer = d.request(
            "POST", "/v1/engagements/full/chunks", body=records(8, 200_000), token=token,
            content_type="application/x-smartsync-chunks",
        )
        assert status == 507, answer
        samples = scrape(admin_port(d))
        assert total(samples, "smartsync_store_errors_total", error="full") >= 1
        assert value(samples, "smartsync_requests_total", route="/v1/engagements/<eng>/chunks",
                     method="POST", status="507") == 1
        # what the cut upload wrote was removed: the whole (tiny) folder is free again
        assert value(samples, "smartsync_store_free_bytes", folder="chunks") <= 1 << 20
        status, health = d.request("GET", "/healthz")
        assert status == 200 and health["status"] == "warning"
        assert health["disk"]["chunks"]["low"] is True
        assert health["disk"]["data"]["low"] is False
