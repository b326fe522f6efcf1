"""Ending sessions with the real ``smartsync-admin`` against a running daemon: a disabled,
removed or re-passworded user's next request gets 401, and one session can be revoked by id.
Before, sessions of local users lived on until their sliding expiry (30 days)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemon import Daemon, daemon_with_users

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from daemon_with_users(
        tmp_path_factory.mktemp("revoke"), "alice", "bob", "carol", "dan", password=PASSWORD
    )


def status(server: Daemon, token: str) -> int:
    return server.request("GET", "/v1/session", token=token)[0]


def admin_ok(server: Daemon, *args: str, stdin: str | None = None) -> str:
    done = server.admin(*args, input=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_disable_ends_sessions_and_refuses_sign_in_until_enabled(server: Daemon) -> None:
    token = server.login("alice", PASSWORD)
    assert status(server, token) == 200
    admin_ok(server, "user", "disable", "alice")
    assert status(server, token) == 401
    assert server.request("POST", "/v1/login",
                          json_body={"user": "alice", "password": PASSWORD})[0] == 401
    admin_ok(server, "user", "enable", "alice")
    assert status(server, server.login("alice", PASSWORD)) == 200


def test_remove_ends_sessions(server: Daemon) -> None:
    token = server.login("bob", PASSWORD)
    admin_ok(server, "user", "remove", "bob")
    assert status(server, token) == 401
    assert "bob" not in admin_ok(server, "user", "list")


def test_password_change_ends_sessions(server: Daemon) -> None:
    token = server.login("carol", PASSWORD)
    admin_ok(server, "user", "passwd", "carol", "--password-stdin", stdin="new pass 1\n")
    assert status(server, token) == 401
    assert status(server, server.login("carol", "new pass 1")) == 200


def test_sessions_list_and_revoke_one_or_all(server: Daemon) -> None:
    first, second, third = (server.login("dan", PASSWORD) for _ in range(3))
    listed = admin_ok(server, "sessions", "list", "--user", "dan").splitlines()
    assert len(listed) == 3 and all("\tdan\tlocal\t" in line for line in listed)
    ids = [line.split("\t")[0] for line in listed]
    admin_ok(server, "sessions", "revoke", ids[0])
    alive = [status(server, t) for t in (first, second, third)]
    assert sorted(alive) == [200, 200, 401]
    admin_ok(server, "sessions", "revoke", "--user", "dan")
    assert [status(server, t) for t in (first, second, third)] == [401, 401, 401]
    assert server.admin("sessions", "revoke", "nope").returncode != 0


def test_an_old_cost_password_hash_is_upgraded_at_sign_in(server: Daemon) -> None:
    """A hash stored at the old scrypt cost (N=2^14) still signs in and is replaced by one at
    today's cost (N=2^17); the session stays valid (an upgrade is not a password change)."""
    import base64
    import hashlib
    import sqlite3

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"old pass 1", salt=salt, n=2**14, r=8, p=1, dklen=32)
    legacy = "$".join(("scrypt", str(2**14), "8", "1", base64.b64encode(salt).decode(),
                       base64.b64encode(digest).decode()))
    admin_ok(server, "user", "add", "erin", "--password-stdin", stdin="x\n")
    database = server.data_dir / "metadata.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE name = 'erin'", (legacy,))
    token = server.login("erin", "old pass 1")
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT password_hash FROM users WHERE name = 'erin'").fetchone()[0]
    assert stored.startswith(f"scrypt${2**17}$8$1$") and stored != legacy
    assert status(server, token) == 200
    assert status(server, server.login("erin", "old pass 1")) == 200
