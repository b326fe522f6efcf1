"""The PROXY protocol (issue 14): behind HAProxy in TCP mode with ``send-proxy-v2``, the daemon
sees each client's own address, so one client's failed sign-ins rate-limit that client and
not everyone behind the proxy, and the access log names the client. A connection that does
not start with a PROXY header is closed (nobody can reach the daemon around the proxy and
claim to be the proxy's clients).

Real parts: the real twistd with ``[server] proxy_protocol = yes``, a real HAProxy 2.6, TLS end
to end (HAProxy passes the TLS stream through).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from daemon import Daemon
from haproxy import HAPROXY, HAProxy
from pg import free_port
from reliability import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "proxy protocol pw"
CONFIG = """\
[server]
proxy_protocol = yes

[limits]
login_failures_per_address = 3
login_failures_per_user = 50
"""


class ProxiedDaemon(Daemon):
    """Ready checks speak PROXY v1 first, as the daemon now requires of every connection."""

    def _tls_ready(self) -> bool:
        if not self.cert_path.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                raw.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 443\r\n")
                with self.ssl_context().wrap_socket(raw, server_hostname="localhost"):
                    return True
        except (OSError, ssl.SSLError):
            return False


def haproxy_tcp_config(port: int, backend_port: int) -> str:
    return f"""\
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smartsync
    bind 127.0.0.1:{port}
    default_backend daemons
backend daemons
    server app1 127.0.0.1:{backend_port} send-proxy-v2
"""


def login_through(port: int, context: ssl.SSLContext, source: str, user: str, password: str) -> int:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("POST", "/v1/login", body=json.dumps({"user": user, "password": password}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_behind_haproxy_send_proxy_each_client_is_itself(tmp_path: Path) -> None:
    base = tmp_path / "daemon"
    base.mkdir()
    (base / "smartsync.ini").write_text(CONFIG)
    with ProxiedDaemon(base, config_path=base / "smartsync.ini").start() as d:
        done = d.admin("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
        context = d.ssl_context()
        port = free_port()
        proxy = HAProxy(tmp_path / "haproxy", haproxy_tcp_config(port, d.port), port)
        assert subprocess.run([HAPROXY, "-v"], capture_output=True).returncode == 0

        def ready() -> bool:
            try:
                return login_through(port, context, "127.0.0.1", "nobody-ready", "x") == 401
            except OSError:
                return False

        proxy.start(ready)
        try:
            # 127.0.0.2 mistypes three times (three different names: the per-user limit is not
            # what stops it) and is then throttled by address...
            for n in range(3):
                assert login_through(port, context, "127.0.0.2", f"typo{n}", "wrong") == 401
            assert login_through(port, context, "127.0.0.2", "alice", PASSWORD) == 429
            # ...while 127.0.0.3, behind the same proxy, signs in. (Before: every client had
            # HAProxy's address, and one storm locked out the firm.)
            assert login_through(port, context, "127.0.0.3", "alice", PASSWORD) == 200
        finally:
            proxy.stop()
        def logged() -> bool:
            log = d.log_text()
            return '"127.0.0.2" - - ' in log and '"127.0.0.3" - - ' in log

        wait_for(logged, 20, "access lines naming both clients")

        # Around the proxy: a TLS client that sends no PROXY header gets no session.
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert tls.recv(100) == b"", "answered without a PROXY header"
                    raise OSError("closed without an answer")
