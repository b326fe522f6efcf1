"""The session token in a real OS keychain (issue 16): the real ``smartsync`` CLI and daemon
with GNOME Keyring's Secret Service on a private D-Bus session (tests/integration/keychain.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from keychain import Keychain, private_keychain
from test_cli_client import Client, login, provisioned

pytestmark = pytest.mark.integration


def signed_in_users(server: Daemon) -> str:
    done = server.admin("sessions", "list")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = provisioned(tmp_path_factory.mktemp("keychain-server"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def keychain(tmp_path: Path) -> Iterator[Keychain]:
    with private_keychain(tmp_path) as kc:
        yield kc


@pytest.fixture
def client(tmp_path: Path) -> Client:
    home = tmp_path / "home"
    home.mkdir()
    return Client(home)


def test_token_lives_in_the_keychain_syncs_and_logout_removes_it(
    server: Daemon, keychain: Keychain, client: Client, tmp_path: Path
) -> None:
    done = login(client, server, "--trust-fingerprint", server.fingerprint, "--keychain",
                 env=keychain.env)
    assert done.returncode == 0, done.stderr
    key = f"alice@{server.url}"
    token = keychain.lookup("smartsync", key)
    assert token and len(token) >= 20
    raw = (client.config / "config.json").read_text()
    assert token not in raw and '"token"' not in raw
    entry = client.settings()["servers"][server.url]
    assert entry["keychain"] == "smartsync" and entry["user"] == "alice"
    assert "alice" in signed_in_users(server)

    copy = tmp_path / "copy"
    cloned = client.run("clone", f"{server.url}/acme-2026", str(copy), env=keychain.env)
    assert cloned.returncode == 0, cloned.stderr
    (copy / "Lead schedule.txt").write_text("lead 1\n")
    synced = client.run("--json", "sync", str(copy), env=keychain.env)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["uploaded"] == 1

    # a TLS session ticket is kept only where the token itself is kept on disk (issue 15)
    assert list(client.config.glob("tls-session-*")) == []
    out = client.run("logout", server.url, env=keychain.env)
    assert out.returncode == 0, out.stderr
    assert keychain.lookup("smartsync", key) is None
    assert client.settings()["servers"][server.url]["keychain"] == "smartsync"  # opt-in kept
    again = client.run("engagements", server.url, env=keychain.env)
    assert again.returncode == 3 and "not signed in" in again.stderr


def test_locked_keychain_is_a_clear_error_and_nothing_is_written(
    server: Daemon, keychain: Keychain, client: Client
) -> None:
    keychain.lock()
    done = login(client, server, "--trust-fingerprint", server.fingerprint, "--keychain",
                 env=keychain.env)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "keychain" in done.stderr and "KeyringLocked" in done.stderr
    assert not (client.config / "config.json").exists()  # no token fell back to disk
    assert "alice" not in signed_in_users(server)  # the session it could not keep was ended


def test_no_keychain_at_all_refuses_rather_than_writing_the_token(
    server: Daemon, client: Client
) -> None:
    no_bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    done = login(client, server, "--trust-fingerprint", server.fingerprint, "--keychain",
                 env=no_bus)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "keychain" in done.stderr and "Traceback" not in done.stderr
    assert not (client.config / "config.json").exists()
    assert "alice" not in signed_in_users(server)
