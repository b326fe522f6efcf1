"""A real HTTP CONNECT proxy for tests: Debian's tinyproxy, started in a temp folder on loopback.

``ConnectProxy.tunnels()`` reads tinyproxy's own log: the CONNECT requests it served (the proof
that a client's traffic went through it)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pg import free_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class ConnectProxy:
    def __init__(self, folder: Path, *, basic_auth: tuple[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.log = folder / "tinyproxy.log"
        self.basic_auth = basic_auth
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 50",
            f'LogFile "{self.log}"', "LogLevel Connect", f'PidFile "{folder / "pid"}"',
            "Allow 127.0.0.1", "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]
        if basic_auth is not None:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        self.conf = folder / "tinyproxy.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        if not Path(TINYPROXY).exists():
            raise RuntimeError("tinyproxy is not installed (.ci/install-system-deps installs it)")
        self.process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)  # polling the port the proxy is starting, bounded by the deadline
        raise RuntimeError("tinyproxy did not start listening")

    def tunnels(self) -> list[str]:
        """``host:port`` of every CONNECT the proxy logged, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return re.findall(r'CONNECT (\S+) HTTP/1\.[01]', text)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
