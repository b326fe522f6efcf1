"""Run the real ``twistd smartsync`` daemon as a subprocess for integration tests.

``running_daemon(tmp_path)`` starts ``twistd -n --pidfile ... --logfile ... smartsync
--data-dir ... --listen ssl:0:interface=127.0.0.1 --port-file ...`` and waits (a bounded poll
loop with a deadline, never a fixed sleep) until the port file exists and a TLS handshake that
verifies the daemon's certificate succeeds. On a failed start it raises with the twistd log.

The returned ``Daemon`` is also a context manager (stops on exit). ``admin(...)`` runs the real
``smartsync-admin`` console script against the same data folder.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

START_TIMEOUT = 30.0
# Above the daemon's default [server] drain_seconds (30): SIGTERM waits for requests in flight.
STOP_TIMEOUT = 45.0
POLL_INTERVAL = 0.05


def _script(name: str) -> list[str]:
    """The console script installed beside this interpreter, else its module form."""
    path = Path(sys.executable).with_name(name)
    if path.exists():
        return [str(path)]
    if name == "twistd":
        return [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
        ]
    return [sys.executable, "-c", "from smartsyncd.cli.admin import main; main()"]


def twistd_command() -> list[str]:
    return _script("twistd")


def admin_command() -> list[str]:
    return _script("smartsync-admin")


class DaemonStartError(RuntimeError):
    pass


def tls_client_context(cafile: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context that trusts only the daemon's certificate and checks the host name."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Daemon:
    """One twistd process with its own folder (data, pid file, log, port file)."""

    def __init__(
        self,
        base: Path,
        *,
        config_path: Path | None = None,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        pass_data_dir: bool = True,
        listen: str = "ssl:0:interface=127.0.0.1",
    ) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path = config_path
        self.extra_args = tuple(extra_args)
        self.pass_data_dir = pass_data_dir
        self.data_dir = data_dir if data_dir is not None else base / "data"
        self.pidfile = base / "twistd.pid"
        self.logfile = base / "twistd.log"
        self.port_file = base / "port"
        self.listen = listen
        self.port: int = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- addresses and TLS material ------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "tls" / "key.pem"

    @property
    def fingerprint(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex(":").upper()

    def ssl_context(self) -> ssl.SSLContext:
        return tls_client_context(self.cert_path)

    # -- process control -----------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            *twistd_command(),
            "-n",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
            "smartsync",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if self.pass_data_dir:
            args += ["--data-dir", str(self.data_dir)]
        args += ["--listen", self.listen, "--port-file", str(self.port_file), *self.extra_args]
        return args

    def start(self) -> Daemon:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("daemon already running")
        try:
            self.port_file.unlink()
        except FileNotFoundError:
            pass
        self._log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                output = (
                    self.process.stdout.read().decode(errors="replace")
                    if self.process.stdout
                    else ""
                )
                raise DaemonStartError(
                    f"twistd exited with status {self.process.returncode} during start\n"
                    f"--- output ---\n{output}\n--- log ---\n{self.log_text()}"
                )
            if self._port_ready() and self._tls_ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonStartError(
                    f"twistd did not start listening within {START_TIMEOUT} s\n"
                    f"--- log ---\n{self.log_text()}"
                )
            time.sleep(POLL_INTERVAL)

    def _port_ready(self) -> bool:
        try:
            text = self.port_file.read_text()
        except FileNotFoundError:
            return False
        if not text.strip().isdigit():
            return False
        self.port = int(text)
        return True

    def _tls_ready(self) -> bool:
        if not self.cert_path.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                with self.ssl_context().wrap_socket(raw, server_hostname="localhost"):
                    return True
        except (OSError, ssl.SSLError):
            return False

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None when it was not running)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
                raise RuntimeError(f"twistd ignored SIGTERM\n{self.log_text()}") from None
        self._close_pipe()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL (a crash: no cleanup runs)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def restart(self) -> Daemon:
        """Stop and start again with the same data folder and the same port."""
        port = self.port
        self.stop()
        if port:
            self.listen = f"ssl:{port}:interface=127.0.0.1"
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- helpers -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def admin(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``smartsync-admin [--config FILE] --data-dir DATA ARGS...``: the same
        configuration as the daemon (so ``grant --group`` asks the same directory)."""
        config = ["--config", str(self.config_path)] if self.config_path else []
        return subprocess.run(
            [*admin_command(), *config, "--data-dir", str(self.data_dir), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, Any]:
        """One HTTPS request (stdlib client, the daemon's certificate as the only CA).

        Returns ``(status, parsed JSON body)`` (raw bytes when the answer is not JSON).
        """
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode()
        if body is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context or self.ssl_context(), timeout=30
        )
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.getheader("Content-Type", "").startswith("application/json"):
                return response.status, json.loads(data)
            return response.status, data
        finally:
            conn.close()

    def add_user(self, name: str, password: str) -> None:
        """Create a local account with the real admin CLI (asserts it worked)."""
        done = self.admin("user", "add", name, "--password-stdin", input=password + "\n")
        assert done.returncode == 0, done.stderr

    def new_engagement(self, name: str, *, editors: Sequence[str] = ()) -> str:
        """Create an engagement and grant ``editors`` the editor role (real admin CLI)."""
        steps = [("engagement", "create", name)]
        steps += [("grant", name, "--user", user, "--role", "editor") for user in editors]
        for args in steps:
            done = self.admin(*args)
            assert done.returncode == 0, done.stderr
        return name

    def login(self, user: str, password: str) -> str:
        status, answer = self.request(
            "POST", "/v1/login", json_body={"user": user, "password": password}
        )
        if status != 200:
            raise AssertionError(f"login as {user} failed: {status} {answer}")
        token: str = answer["token"]
        return token

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def running_daemon(
    tmp_path: Path,
    *,
    config_text: str | None = None,
    extra_args: Sequence[str] = (),
    name: str = "daemon",
    pass_data_dir: bool = True,
) -> Daemon:
    """Start a daemon in ``tmp_path/name`` and return it once it answers TLS handshakes.

    ``config_text`` is written to ``tmp_path/name/smartsync.ini`` and passed with ``--config``.
    With ``pass_data_dir=False`` no ``--data-dir`` is given: the data folder is the config's
    ``data_dir`` (or ``./data`` in the daemon's working folder, ``tmp_path/name``).
    """
    base = tmp_path / name
    base.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config_text is not None:
        config_path = base / "smartsync.ini"
        config_path.write_text(config_text)
    data_dir = None
    if not pass_data_dir:
        from smartsyncd.service.config import load_config

        data_dir = Path(
            load_config(str(config_path) if config_path else None, cwd=str(base)).data_dir
        )
    daemon = Daemon(
        base,
        config_path=config_path,
        extra_args=extra_args,
        data_dir=data_dir,
        pass_data_dir=pass_data_dir,
    )
    return daemon.start()


def daemon_with_users(tmp_path: Path, *users: str, password: str) -> Iterator[Daemon]:
    """A module fixture's body: a daemon with these users (same password), stopped after."""
    d = running_daemon(tmp_path)
    try:
        for user in users:
            d.add_user(user, password)
        yield d
    finally:
        d.stop()
