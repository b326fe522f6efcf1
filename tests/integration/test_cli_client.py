"""The real ``smartsync`` CLI (subprocess) against the real daemon: trust on first use, pinned
certificates, CA files, sign-in errors and exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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
        self, *args: str, input: str = "", env: dict[str, str] | None = None, timeout: float = 90,
        wrapper: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Runs the CLI (under ``wrapper``, e.g. ``faketime -f +2d``, if given)."""
        full_env = {
            k: v for k, v in os.environ.items() if k not in ("SMARTSYNC_PASSWORD",)
        }
        full_env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "xdg")})
        full_env.update(env or {})
        return subprocess.run(
            [*wrapper, *smartsync_command(), "--config-dir", str(self.config), *args],
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


def login(
    client: Client, server: Daemon, *extra: str, password: str = PASSWORD,
    env: dict[str, str] | None = None,
):
    return client.run(
        "login", server.url, "--user", "alice", "--password-stdin", *extra, input=password + "\n",
        env=env,
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
    # the retry before it gave up says what failed and when it tries again (issue 16)
    retry, error = done.stderr.strip().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GET /v1/info failed \(cannot reach "
                        r"https://127\.0\.0\.1:1: connection refused\); trying again at "
                        r"\d\d:\d\d:\d\d \(in \d+\.\d s, try 2 of 2\)", retry), retry
    assert error.startswith("smartsync: error: ")


def test_usage_errors_exit_2(client: Client) -> None:
    assert client.run("login", "https://x.example").returncode == 2  # --user missing
    bad = client.run("login", "http://x.example", "--user", "a", "--password-stdin", input="p\n")
    assert bad.returncode == 2 and "https://" in bad.stderr
    fp = client.run("login", "https://x.example", "--user", "a", "--trust-fingerprint", "12",
                    "--password-stdin", input="p\n")
    assert fp.returncode == 2 and "fingerprint" in fp.stderr


def new_engagement(server: Daemon, name: str) -> None:
    for args in [("engagement", "create", name), ("grant", name, "--user", "alice",
                                                    "--role", "editor")]:
        done = server.admin(*args)
        assert done.returncode == 0, done.stderr


def test_clone_sync_status_conflicts_through_the_cli(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    new_engagement(server, "beta-2026")
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a, b = tmp_path / "a", tmp_path / "b"
    cloned = client.run("clone", f"{server.url}/beta-2026", str(a))
    assert cloned.returncode == 0, cloned.stderr
    (a / "Working papers").mkdir()
    (a / "Working papers" / "B-1 Cash.txt").write_text("cash 100\n")

    pushed = client.run("--json", "sync", str(a))
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["uploaded"] == 1

    assert client.run("clone", f"{server.url}/beta-2026", str(b)).returncode == 0
    assert (b / "Working papers" / "B-1 Cash.txt").read_text() == "cash 100\n"
    status = client.run("status", str(b), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["clean"] is True
    none = client.run("conflicts", str(b))
    assert (none.returncode, none.stdout.strip()) == (0, "No conflict copies.")

    # Concurrent edits: the second sync keeps both versions and says a conflict is left.
    (a / "Working papers" / "B-1 Cash.txt").write_text("cash 150\n")
    (b / "Working papers" / "B-1 Cash.txt").write_text("cash 175\n")
    assert client.run("sync", str(a)).returncode == 0
    second = client.run("sync", str(b))
    assert second.returncode == 1, second.stderr
    listed = client.run("--json", "conflicts", str(b))
    assert listed.returncode == 1
    names = json.loads(listed.stdout)["conflicts"]
    assert len(names) == 1 and "(conflict alice" in names[0]
    contents = {p.read_text() for p in (b / "Working papers").iterdir()}
    assert contents == {"cash 150\n", "cash 175\n"}  # nothing lost


def test_server_refusal_and_bad_copy_folder(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    missing = client.run("clone", f"{server.url}/no-such-engagement", str(tmp_path / "x"))
    assert missing.returncode == 5, missing.stderr
    assert "not_found" in missing.stderr and "Traceback" not in missing.stderr
    # --json: the refusal (a typed NotFound in the library) keeps its kind
    as_json = client.run("--json", "clone", f"{server.url}/no-such-engagement", str(tmp_path / "z"))
    assert as_json.returncode == 5, as_json.stderr
    error = json.loads(as_json.stdout)
    assert error["error"] == "ServerRefused" and error["exit_code"] == 5
    assert "not_found" in error["message"]
    not_a_copy = client.run("sync", str(tmp_path))
    assert not_a_copy.returncode == 2, not_a_copy.stderr
    assert len(not_a_copy.stderr.strip().splitlines()) == 1
    bad_source = client.run("clone", server.url, str(tmp_path / "y"))
    assert bad_source.returncode == 2 and "URL/ENGAGEMENT" in bad_source.stderr


def test_watch_pulls_remote_changes_and_stops_cleanly(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    import signal
    import time

    new_engagement(server, "gamma-2026")
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert client.run("clone", f"{server.url}/gamma-2026", str(d)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    watcher = subprocess.Popen(
        [*smartsync_command(), "--config-dir", str(client.config), "--json", "watch", str(a)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        (b / "memo.txt").write_text("from b\n")
        assert client.run("sync", str(b)).returncode == 0
        deadline = time.monotonic() + 60
        while not (a / "memo.txt").exists() and time.monotonic() < deadline:
            assert watcher.poll() is None, watcher.stderr.read() if watcher.stderr else ""
            time.sleep(0.1)  # polling a real file system condition, bounded by the deadline
        assert (a / "memo.txt").read_text() == "from b\n"
    finally:
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
    reports = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r.get("downloaded") for r in reports)


def test_interactive_first_contact_asks_and_pins(server: Daemon, client: Client) -> None:
    """On a terminal the fingerprint is shown and pinned once the person answers yes."""
    import pty
    import select
    import time

    env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
    env.update({"HOME": str(client.home), "XDG_CONFIG_HOME": str(client.home / "xdg")})
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*smartsync_command(), "--config-dir", str(client.config), "login", server.url,
         "--user", "alice", "--password-stdin"],
        stdin=slave, stderr=slave, stdout=subprocess.PIPE, env=env, text=True,
    )
    os.close(slave)
    seen = b""
    try:
        os.write(master, (PASSWORD + "\n").encode())
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 4096)
        assert server.fingerprint.encode() in seen
        os.write(master, b"y\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert "Signed in" in out
    assert client.settings()["servers"][server.url]["fingerprint"] == server.fingerprint


def test_bwlimit_option_and_setting_slow_the_transfer(
    server: Daemon, client: Client, tmp_path: Path
) -> None:
    new_engagement(server, "bw-2026")
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a = tmp_path / "a"
    assert client.run("clone", f"{server.url}/bw-2026", str(a)).returncode == 0
    (a / "scan.pdf").write_bytes(os.urandom(600 * 1024))
    started = time.monotonic()
    limited = client.run("--json", "sync", str(a), "--bwlimit", "200")
    took = time.monotonic() - started
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["uploaded"] == 1
    assert took >= 2.5, took  # 600 KiB at 200 KiB/s is 3 s at least, less the first request

    # the settings file's per-server value applies when the option is absent; 0 lifts it
    settings = client.settings()
    [entry] = settings["servers"].values()
    entry["bwlimit"] = 100
    (client.config / "config.json").write_text(json.dumps(settings))
    (a / "scan2.pdf").write_bytes(os.urandom(300 * 1024))
    started = time.monotonic()
    assert client.run("sync", str(a)).returncode == 0
    by_setting = time.monotonic() - started
    assert by_setting >= 2.5, by_setting
    # with the setting at 1 KiB/s this upload would take five minutes: finishing within the
    # subprocess timeout shows --bwlimit 0 lifted it (no close timing comparison)
    entry["bwlimit"] = 1
    (client.config / "config.json").write_text(json.dumps(settings))
    (a / "scan3.pdf").write_bytes(os.urandom(300 * 1024))
    assert client.run("sync", str(a), "--bwlimit", "0", timeout=120).returncode == 0
