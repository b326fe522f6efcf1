"""Issue 14 items that had unit tests only, now through the real daemon and its config file:

- a session has an absolute lifetime: a token in constant use (which slides the sliding
  expiry forward) still ends ``session_max_days`` after its sign-in;
- the window of failed sign-ins per account is configurable
  (``[limits] login_failure_window_minutes``): refused while the failures are in it, signed in
  once they have left it;
- an LDAP bind password file that other accounts can read is named in a start-up warning;
- unauthenticated body bytes are capped per client address across its connections
  (``[limits] unauthenticated_bytes_per_address``): the request that goes over gets a JSON 429.

Time-based checks poll the real condition with a deadline; none asserts a duration.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from pathlib import Path

import pytest
from daemon import running_daemon
from reliability import PASSWORD, add_users, wait_for

from smartsyncd.testing.ldapserver import make_test_pki

pytestmark = pytest.mark.integration


def test_a_session_in_constant_use_ends_at_its_absolute_lifetime(tmp_path: Path) -> None:
    # 0.00003 days = 2.6 s absolute; the sliding lifetime stays 30 days
    d = running_daemon(tmp_path, config_text="[server]\nsession_max_days = 0.00003\n")
    try:
        add_users(d, ["alice"])
        token = d.login("alice", PASSWORD)
        assert d.request("GET", "/v1/session", token=token)[0] == 200

        def ended() -> bool:
            status, answer = d.request("GET", "/v1/session", token=token)
            return status == 401 and answer["error"] == "session_expired"

        wait_for(ended, 20, "the absolute lifetime to end the session", interval=0.1)
        assert d.request("GET", "/v1/session", token=d.login("alice", PASSWORD))[0] == 200
    finally:
        d.stop()


def test_the_failure_window_is_configurable(tmp_path: Path) -> None:
    config = "[limits]\nlogin_failures_per_user = 2\nlogin_failure_window_minutes = 0.05\n"
    d = running_daemon(tmp_path, config_text=config)
    try:
        add_users(d, ["bob"])
        for _ in range(2):
            assert d.request("POST", "/v1/login",
                             json_body={"user": "bob", "password": "wrong"})[0] == 401
        status, _ = d.request("POST", "/v1/login", json_body={"user": "bob", "password": PASSWORD})
        assert status == 429

        def let_in() -> bool:  # once both failures left the 3 s window
            return d.request("POST", "/v1/login",
                             json_body={"user": "bob", "password": PASSWORD})[0] == 200

        wait_for(let_in, 30, "the failures to leave the window", interval=0.2)
    finally:
        d.stop()


def test_a_bind_password_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    pki = make_test_pki(str(tmp_path / "pki"))
    secret = tmp_path / "bind.secret"
    secret.write_text("not-a-real-password\n")
    secret.chmod(0o644)
    config = f"""
[auth]
backends = local, ldap
[ldap]
urls = ldaps://127.0.0.1:1
ca_file = {pki.ca_file}
base_dn = DC=firm,DC=example
bind_dn = CN=svc,CN=Users,DC=firm,DC=example
bind_password_file = {secret}
"""
    d = running_daemon(tmp_path, config_text=config)
    try:
        log = wait_for(lambda: "readable by other accounts" in d.log_text() and d.log_text(),
                       10, "the start-up warning")
        assert f"LDAP bind password file {secret} is readable by other accounts" in log
        assert "not-a-real-password" not in log
    finally:
        d.stop()


def test_unauthenticated_bytes_are_capped_per_address_across_connections(tmp_path: Path) -> None:
    d = running_daemon(tmp_path, config_text="[limits]\nunauthenticated_bytes_per_address = 150000\n")
    head = (b"POST /v1/engagements/acme/chunks/missing HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 90000\r\n\r\n")
    conns = []
    try:
        for _ in range(2):  # 80,000 of 90,000 body bytes each, no token: 160,000 > 150,000
            raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            conn = d.ssl_context().wrap_socket(raw, server_hostname="localhost")
            conn.sendall(head + b" " * 80_000)
            conns.append(conn)
        # whichever the daemon read second is refused; the other is still being read
        for c in conns:
            c.setblocking(False)
        replies = {id(c): b"" for c in conns}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            r.rstrip().endswith(b"}") for r in replies.values()
        ):
            select.select(conns, [], [], 0.2)
            for c in conns:
                replies[id(c)] += _app_data(c)
        refused = [r for r in replies.values() if r]
        assert len(refused) == 1, replies
        assert refused[0].startswith(b"HTTP/1.1 429 "), refused[0][:200]
        assert json.loads(refused[0].split(b"\r\n\r\n", 1)[1])["error"] == "rate_limited"
        for c in conns:
            c.close()
        conns.clear()
        add_users(d, ["carol"])  # the address is not blocked for good
        assert d.request("GET", "/v1/session", token=d.login("carol", PASSWORD))[0] == 200
    finally:
        for c in conns:
            c.close()
        d.stop()


def _app_data(conn: ssl.SSLSocket) -> bytes:
    """What the daemon has sent on a non-blocking TLS socket so far (b"" when nothing)."""
    data = b""
    while True:
        try:
            part = conn.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return data
        if not part:
            return data
        data += part
