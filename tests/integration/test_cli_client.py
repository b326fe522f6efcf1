"""The real ``smartsync`` CLI (subprocess) against the real daemon: trust on first use, pinned
certificates, CA files, sign-in errors and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def smartsync_command() -> list[str]:
    script = shutil.which("smartsync")
    if script and Path(script).parent == Path(sys.executable).parent:
        return [script]
    return [sys.executable, "-c", "from smartsyncd.cli.client import main; main()"]


class Client:
    """Runs the CLI with its own settings folder (and HOME), like a fresh user account."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.config = home / "cfg"

    def run(
        self, *args: str, input: str = "", env: dict[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            k: v for k, v in os.environ.items() if k not in ("SMARTSYNC_PASSWORD",)
        }
        full_env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "xdg")})
        full_env.update(env or {})
        return subprocess.run(
            [*smartsync_command(), "--config-dir", str(self.config), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=self.home,
        )

    def settings(self) -> dict:
        return json.loads((self.config / "config.json").read_text())


def provisioned(base: Path) -> Daemon:
    d = running_daemon(base)
    for args, stdin in [
        (("user", "add", "alice", "--password-stdin"), PASSWORD + "\n"),
        (("engagement", "create", "acme-2026", "--title", "Acme audit 2026"), None),
        (("grant", "acme-2026", "--user", "alice", "--role", "editor"), None),
    ]:
        done = d.admin(*args, input=stdin)
        assert done.returncode == 0, done.stderr
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that do not change it (each test has its own client)."""
    d = provisioned(tmp_path_factory.mktemp("shared"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(tmp_path: Path) -> Client:
    home = tmp_path / "home"
    home.mkdir()
    return Client(home)


def login(client: Client, server: Daemon, *extra: str, password: str = PASSWORD):
    return client.run(
        "login", server.url, "--user", "alice", "--password-stdin", *extra, input=password + "\n"
    )


def test_first_contact_without_a_terminal_shows_fingerprint_and_refuses(
    server: Daemon, client: Client
) -> None:
    done = login(client, server)
    assert done.returncode == 4, done.stderr
    assert server.fingerprint in done.stderr
    assert "--trust-fingerprint" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (client.config / "config.json").exists()  # nothing pinned
    assert "alice" not in server.log_text()  # no sign-in was attempted


def test_login_with_fingerprint_pins_and_stores_token(server: Daemon, client: Client) -> None:
    fp = server.fingerprint.replace(":", "").lower()  # any accepted spelling
    done = login(client, server, "--trust-fingerprint", fp)
    assert done.returncode == 0, done.stderr
    assert "Signed in" in done.stdout
    settings = client.settings()
    entry = settings["servers"][server.url]
    assert entry["fingerprint"] == server.fingerprint
    assert entry["user"] == "alice" and entry["token"]
    assert stat.S_IMODE((client.config / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(client.config.stat().st_mode) == 0o700
    assert entry["token"] not in server.log_text()  # no token in the server's log either

    listed = client.run("engagements", server.url, "--json")
    assert listed.returncode == 0, listed.stderr
    engagements = json.loads(listed.stdout)["engagements"]
    assert [e["name"] for e in engagements] == ["acme-2026"]

    quiet = client.run("--quiet", "engagements", server.url)
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_wrong_password_exits_3(server: Daemon, client: Client) -> None:
    done = login(client, server, "--trust-fingerprint", server.fingerprint, password="nope")
    assert done.returncode == 3, done.stderr
    assert "sign-in failed" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (client.config / "config.json").exists()


def test_password_from_environment(server: Daemon, client: Client) -> None:
    done = client.run(
        "login", server.url, "--user", "alice", "--trust-fingerprint", server.fingerprint,
        env={"SMARTSYNC_PASSWORD": PASSWORD},
    )
    assert done.returncode == 0, done.stderr


def test_changed_certificate_is_refused(own_server: Daemon, client: Client) -> None:
    server = own_server
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    old = server.fingerprint
    server.stop()
    server.cert_path.unlink()
    server.key_path.unlink()
    server.restart()  # same port, a new self-signed certificate
    assert server.fingerprint != old

    listed = client.run("engagements", server.url)
    assert listed.returncode == 4, listed.stderr
    assert "certificate changed" in listed.stderr
    assert server.fingerprint in listed.stderr
    again = login(client, server)
    assert again.returncode == 4 and "certificate changed" in again.stderr
    assert client.settings()["servers"][server.url]["fingerprint"] == old  # pin unchanged

    # The administrator confirms the new certificate: accepting it explicitly re-pins.
    accepted = login(client, server, "--trust-fingerprint", server.fingerprint)
    assert accepted.returncode == 0, accepted.stderr
    assert client.settings()["servers"][server.url]["fingerprint"] == server.fingerprint


def test_ca_file_login(server: Daemon, client: Client) -> None:
    done = login(client, server, "--ca-file", str(server.cert_path))
    assert done.returncode == 0, done.stderr
    entry = client.settings()["servers"][server.url]
    assert entry["ca_file"] == str(server.cert_path.resolve())
    # Later commands keep using the CA file without repeating the option.
    assert client.run("engagements", server.url).returncode == 0


def test_unknown_server_and_no_session(server: Daemon, client: Client) -> None:
    untrusted = client.run("engagements", server.url)
    assert untrusted.returncode == 4 and "not trusted" in untrusted.stderr
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    out = client.run("logout", server.url)
    assert out.returncode == 0, out.stderr
    assert "token" not in client.settings()["servers"][server.url]
    after = client.run("engagements", server.url)
    assert after.returncode == 3 and "not signed in" in after.stderr


def test_unreachable_server_exits_4(client: Client, tmp_path: Path) -> None:
    fp = ":".join(["AB"] * 32)
    done = client.run(
        "login", "https://127.0.0.1:1", "--user", "alice", "--password-stdin",
        "--trust-fingerprint", fp, "--attempts", "2", input="x\n",
    )
    assert done.returncode == 4, done.stderr
    assert "connection refused" in done.stderr and "after 2 attempts" in done.stderr


def test_usage_errors_exit_2(client: Client) -> None:
    assert client.run("login", "https://x.example").returncode == 2  # --user missing
    bad = client.run("login", "http://x.example", "--user", "a", "--password-stdin", input="p\n")
    assert bad.returncode == 2 and "https://" in bad.stderr
    fp = client.run("login", "https://x.example", "--user", "a", "--trust-fingerprint", "12",
                    "--password-stdin", input="p\n")
    assert fp.returncode == 2 and "fingerprint" in fp.stderr
