"""TLS session resumption between runs of the real ``smartsync`` CLI against the real daemon
(issue 15): the second run's handshake is a resumption (the daemon sends no certificate), the
ticket is kept 0600 beside the settings, a resumption carries neither the certificate nor a
post-quantum key share, and ``logout`` removes it. Bytes are counted by a
relay in front of the daemon."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from relay import ByteRelay
from test_cli_client import Client, provisioned

pytestmark = pytest.mark.integration


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[tuple[Daemon, ByteRelay]]:
    daemon = provisioned(tmp_path / "daemon")
    relay = ByteRelay(daemon.port).start()
    try:
        yield daemon, relay
    finally:
        relay.stop()
        daemon.stop()


def _session_files(client: Client) -> list[Path]:
    return sorted(client.config.glob("tls-session-*.json"))


def _engagements(client: Client, relay: ByteRelay, url: str) -> tuple[int, int]:
    """Bytes (to the daemon, from the daemon) for one ``smartsync engagements``."""
    relay.reset()
    done = client.run("engagements", url)
    assert done.returncode == 0, done.stderr
    assert "acme-2026" in done.stdout
    return relay.to_target, relay.to_client


def test_the_next_run_resumes_and_logout_forgets_the_ticket(
    relayed: tuple[Daemon, ByteRelay], tmp_path: Path
) -> None:
    daemon, relay = relayed
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    url = f"https://127.0.0.1:{relay.port}"
    done = client.run(
        "login", url, "--user", "alice", "--password-stdin",
        "--trust-fingerprint", daemon.fingerprint, input="correct horse battery\n",
    )
    assert done.returncode == 0, done.stderr
    kept = _session_files(client)
    assert len(kept) == 1
    assert stat.S_IMODE(os.stat(kept[0]).st_mode) == 0o600

    kept[0].unlink()  # this run shakes hands in full
    full = _engagements(client, relay, url)
    assert len(_session_files(client)) == 1
    resumed = _engagements(client, relay, url)
    again = _engagements(client, relay, url)
    # A resumed handshake carries no certificate chain (the daemon's EC certificate alone is
    # about 0.5 KB of the full handshake's answer) and no post-quantum key share: the full
    # handshake's hybrid X25519MLKEM768 shares are 1,216 B up and 1,120 B down.
    for run in (resumed, again):
        assert run[0] < full[0] - 1100 and run[1] < full[1] - 1300, (full, run)

    done = client.run("logout", url)
    assert done.returncode == 0, done.stderr
    assert _session_files(client) == []

