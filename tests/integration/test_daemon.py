"""The real ``twistd smartsync`` process: plugin discovery, defaults, TLS, config, logs, restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from daemon import Daemon, DaemonStartError, running_daemon, twistd_command

import smartsyncd

pytestmark = pytest.mark.integration


def test_twistd_help_lists_the_plugin() -> None:
    result = subprocess.run(
        [*twistd_command(), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["smartsync", "smartsyncd", "sync", "server"] in lines


def test_no_options_uses_data_in_the_working_folder_and_serves_over_tls(tmp_path: Path) -> None:
    with running_daemon(tmp_path, pass_data_dir=False) as d:
        assert d.data_dir == tmp_path / "daemon" / "data"

        status, health = d.request("GET", "/healthz")
        disk = health.pop("disk")
        assert (status, health) == (
            200, {"status": "ok", "database": "ok", "storage": "ok", "warnings": []}
        )
        assert set(disk) == {"data", "chunks"}
        assert all(f["free_bytes"] > 0 and f["low"] is False for f in disk.values())
        status, info = d.request("GET", "/v1/info")
        assert status == 200
        assert info["server"] == "smartsyncd"
        assert info["version"] == smartsyncd.__version__
        assert info["protocol"] == [1]

        assert (d.data_dir / "metadata.sqlite3").exists()
        assert stat.S_IMODE(d.key_path.stat().st_mode) == 0o600

        cert = x509.load_pem_x509_certificate(d.cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(sans.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        assert {"localhost", socket.gethostname().lower()} <= dns
        assert ips == {"127.0.0.1", "::1"}

        log = d.log_text()
        assert f"TLS certificate SHA-256 fingerprint: {d.fingerprint}" in log
        assert f"smartsyncd {smartsyncd.__version__} listening on ssl:0:interface=127.0.0.1" in log
        assert f"127.0.0.1:{d.port}" in log
        assert f"data folder {d.data_dir}" in log
        assert "metadata: SQLite" in log


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the read-only TLS checks (a start costs a second or two)."""
    with running_daemon(tmp_path_factory.mktemp("shared")) as d:
        yield d


def test_certificate_verifies_by_host_name(shared_daemon: Daemon) -> None:
    daemon = shared_daemon
    context = daemon.ssl_context()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="not-this-server.example")


def _tls11_client(cafile: Path) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.create_default_context(cafile=str(cafile))
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1
    return context


@pytest.fixture
def tls11_server(shared_daemon: Daemon) -> Iterator[int]:
    """A stdlib server that accepts TLS 1.1 with the daemon's certificate (the control)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(shared_daemon.cert_path, shared_daemon.key_path)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(10)


def test_tls_1_1_is_refused(shared_daemon: Daemon, tls11_server: int) -> None:
    daemon = shared_daemon
    client = _tls11_client(daemon.cert_path)
    # Control: this client does complete a TLS 1.1 handshake with a server that allows it.
    with socket.create_connection(("127.0.0.1", tls11_server), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.1"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            client.wrap_socket(raw, server_hostname="localhost")


def test_plain_tcp_listen_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *twistd_command(),
            "-n",
            "--pidfile",
            "",
            "--logfile",
            str(tmp_path / "twistd.log"),
            "smartsync",
            "--allow-root",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "tcp:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "TLS only" in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()


CONFIG = """\
[server]
data_dir = cfgdata
request_timeout = 30

[limits]
login_failures_per_user = 2

[log]
json_file = logs/events.json
"""


def test_config_file_values_are_used(tmp_path: Path) -> None:
    with running_daemon(tmp_path, config_text=CONFIG, pass_data_dir=False) as d:
        base = tmp_path / "daemon"
        # data_dir and json_file are relative to the config file's folder.
        assert d.data_dir == base / "cfgdata"
        assert (base / "cfgdata" / "metadata.sqlite3").exists()
        assert (base / "cfgdata" / "tls" / "cert.pem").exists()

        # [limits] login_failures_per_user = 2: the third failure in a row is rate limited.
        for _ in range(2):
            status, _answer = d.request(
                "POST", "/v1/login", json_body={"user": "ghost", "password": "wrong"}
            )
            assert status == 401
        status, answer = d.request(
            "POST", "/v1/login", json_body={"user": "ghost", "password": "wrong"}
        )
        assert status == 429, answer
        assert answer["error"] == "rate_limited"

        events = read_json_log(base / "logs" / "events.json")
        listening = next(e for e in events if "listening on" in e["event"])
        assert listening["port"] == d.port
        assert "listening on" in listening["message"] and "{" not in listening["message"]
        assert not any("wrong" in json.dumps(e) for e in events), "a password reached the log"

        # logrotate moves the file away and sends SIGUSR1: the daemon writes a new one.
        (base / "logs" / "events.json").rename(base / "logs" / "events.json.1")
        assert d.process is not None
        d.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while not (base / "logs" / "events.json").exists():
            assert time.monotonic() < deadline, "SIGUSR1 did not reopen the JSON log"
            d.request("GET", "/healthz")
            time.sleep(0.05)
        d.request("POST", "/v1/login", json_body={"user": "ghost2", "password": "wrong"})
        deadline = time.monotonic() + 20
        while not any(e.get("user") == "ghost2" for e in read_json_log(base / "logs" / "events.json")):
            assert time.monotonic() < deadline, "no event in the reopened JSON log"
            time.sleep(0.05)
        assert d.running


def read_json_log(path: Path) -> list[dict]:
    """Every line of the ops JSON log, each one whole JSON object with the ops fields."""
    raw = path.read_bytes()
    assert b"\x1e" not in raw, "record separators in the JSON log"
    events = [json.loads(line) for line in raw.decode().splitlines()]
    for e in events:
        assert {"time", "level", "message", "event", "namespace"} <= e.keys(), e
        assert e["time"].endswith("Z") and e["level"] in {"debug", "info", "warn", "error", "critical"}
    return events


def test_command_line_overrides_the_config_file(tmp_path: Path) -> None:
    with running_daemon(tmp_path, config_text=CONFIG) as d:
        base = tmp_path / "daemon"
        assert d.data_dir == base / "data"
        assert (base / "data" / "metadata.sqlite3").exists()
        assert not (base / "cfgdata").exists()
        # --listen on the command line won over the (default) config listen.
        assert "listening on ssl:0:interface=127.0.0.1" in d.log_text()


def test_a_bad_config_value_is_a_usage_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.ini"
    config.write_text("[limits]\nlogin_failures_per_user = lots\n")
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile", "", "smartsync", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "[limits] login_failures_per_user" in result.stdout + result.stderr


def test_a_busy_port_makes_twistd_exit_non_zero_with_a_clear_log_line(tmp_path: Path) -> None:
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        port = blocker.getsockname()[1]
        d = Daemon(tmp_path / "busy", listen=f"ssl:{port}:interface=127.0.0.1")
        with pytest.raises(DaemonStartError) as raised:
            d.start()
        assert d.process is not None and d.process.returncode == 1
        assert "smartsyncd could not start: CannotListenError" in str(raised.value)
        assert "Address already in use" in d.log_text()
        assert not d.pidfile.exists()
    finally:
        blocker.close()


def test_an_unopenable_store_makes_twistd_exit_non_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.sqlite3").write_bytes(b"this is not a database" * 100)
    d = Daemon(tmp_path / "d", data_dir=data)
    with pytest.raises(DaemonStartError):
        d.start()
    assert d.process is not None and d.process.returncode == 1
    assert "smartsyncd could not start" in d.log_text()


def test_restart_keeps_port_certificate_and_data(daemon: Daemon) -> None:
    port, fingerprint = daemon.port, daemon.fingerprint
    assert daemon.admin("engagement", "create", "kept").returncode == 0
    daemon.restart()
    assert daemon.port == port
    assert daemon.fingerprint == fingerprint
    assert daemon.log_text().count(f"TLS certificate SHA-256 fingerprint: {fingerprint}") == 2
    assert daemon.log_text().count("created a self-signed TLS certificate") == 1
    assert "kept" in daemon.admin("engagement", "list").stdout
    assert daemon.request("GET", "/healthz")[0] == 200


def test_sigterm_stops_cleanly(daemon: Daemon) -> None:
    assert daemon.pidfile.exists()
    assert int(daemon.pidfile.read_text()) == daemon.process.pid  # type: ignore[union-attr]
    status = daemon.stop()
    assert status in (0, -15)  # twistd re-raises the signal after a clean shutdown
    assert not daemon.pidfile.exists()
    assert not daemon.port_file.exists()
    assert "smartsyncd stopped" in daemon.log_text()


def test_two_daemons_side_by_side_do_not_interfere(tmp_path: Path) -> None:
    with running_daemon(tmp_path, name="a") as a, running_daemon(tmp_path, name="b") as b:
        assert a.port != b.port
        assert a.data_dir != b.data_dir
        assert a.fingerprint != b.fingerprint
        assert a.process is not None and b.process is not None
        assert int(a.pidfile.read_text()) == a.process.pid
        assert int(b.pidfile.read_text()) == b.process.pid

        assert a.admin("user", "add", "alice", "--password-stdin", input="pw-a\n").returncode == 0
        assert a.login("alice", "pw-a")
        status, _ = b.request("POST", "/v1/login", json_body={"user": "alice", "password": "pw-a"})
        assert status == 401

        # A client that trusts only a's certificate refuses b.
        with pytest.raises(ssl.SSLError):
            b.request("GET", "/healthz", context=a.ssl_context())

        a.stop()
        assert b.request("GET", "/healthz")[0] == 200
        assert f":{b.port})" not in a.log_text()
        assert f":{a.port})" not in b.log_text()
        assert os.path.exists(b.pidfile)


def test_sighup_reloads_and_says_so_instead_of_ending_the_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, config_text="[log]\njson_file = logs/ops.json\n") as d:
        assert d.process is not None
        d.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload json log: reopened" not in d.log_text():
            assert d.process.poll() is None, "SIGHUP ended the daemon:\n" + d.log_text()
            assert time.monotonic() < deadline, "no reload line after SIGHUP:\n" + d.log_text()
            time.sleep(0.05)
        assert "SIGHUP: reloading" in d.log_text()
        assert d.request("GET", "/healthz")[0] == 200
        assert any(e["event"] == "reload {step}: {result}" for e in read_json_log(tmp_path / "daemon" / "logs" / "ops.json"))


def test_the_daemon_refuses_to_run_as_root_unless_told(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test checks the refusal as root (CI runs as root)"
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile", "", "smartsync", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "refusing to run as root" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists(), "a refused start wrote to the data folder"


class _DaemonOnATwistedWithoutSend100Continue(Daemon):
    """twistd in an interpreter whose Twisted lacks ``HTTPChannel._send100Continue`` (as a
    future Twisted might): removed before twistd runs, nothing else changed."""

    def command(self) -> list[str]:
        args = super().command()
        start = (
            "import sys; import twisted.web.http as h; del h.HTTPChannel._send100Continue; "
            "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"
        )
        return [sys.executable, "-c", start, *args[args.index("-n"):]]


def test_a_twisted_without_a_private_name_we_use_stops_the_start_with_a_clear_line(
    tmp_path: Path,
) -> None:
    d = _DaemonOnATwistedWithoutSend100Continue(tmp_path / "d")
    with pytest.raises(DaemonStartError):
        d.start()
    assert d.process is not None and d.process.returncode == 1
    log = d.log_text()
    assert (
        "smartsyncd could not start: TwistedInternalsMissing: Twisted "
        in log
    )
    assert "twisted.web.http.HTTPChannel._send100Continue (used by web/upload.py)" in log
    assert "Traceback" not in log
    assert not d.port_file.exists()
