"""Issue 17: ``--json`` on every ``smartsync-admin`` listing, run as the real console script
against a running daemon's data folder; each output is parsed with ``json.loads`` and checked
against what was set up through the daemon (a sign-in, a check-out, a registered copy)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from smartsyncd.cli.admin_json import LISTINGS
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("admin-json"))
    try:
        d.add_user("alice", PASSWORD)
        d.add_user("bob", PASSWORD)
        d.new_engagement("audit-2026", editors=["alice"])
        token = d.login("alice", PASSWORD)
        eng = "/v1/engagements/audit-2026"
        status, _ = d.request("POST", f"{eng}/locks", token=token, json_body={"path": "tb.xlsx"})
        assert status == 200
        status, _ = d.request("POST", f"{eng}/copies", token=token,
                              json_body={"copy": "c0ffee", "host": "laptop-7"})
        assert status == 200
        yield d
    finally:
        d.stop()


def as_json(d: Daemon, *args: str, code: int = 0) -> Any:
    done: subprocess.CompletedProcess[str] = d.admin(*args, "--json")
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)  # the whole output is one JSON document


def test_user_list(server: Daemon) -> None:
    users = as_json(server, "user", "list")
    assert [u["name"] for u in users] == ["alice", "bob"]
    assert all(u["has_password"] and not u["disabled"] for u in users)
    assert "password_hash" not in users[0]
    assert users[0]["created_at"].endswith("+00:00")


def test_sessions_list_has_no_token(server: Daemon) -> None:
    sessions = as_json(server, "sessions", "list", "--user", "alice")
    assert len(sessions) == 1 and sessions[0]["user"] == "alice"
    assert sessions[0]["backend"] == "local"
    assert "token_hash" not in sessions[0]


def test_engagement_list_and_status(server: Daemon) -> None:
    [eng] = as_json(server, "engagement", "list")
    assert eng["name"] == "audit-2026" and eng["head"] == 0
    status = as_json(server, "engagement", "status", "audit-2026")
    assert status["finalized"] is False and status["retention_days"] is None


def test_grants_locks_and_copies(server: Daemon) -> None:
    grants = as_json(server, "grants", "audit-2026")
    assert [(g["kind"], g["principal"], g["role"]) for g in grants] == [("user", "local:alice", "editor")]
    [lock] = as_json(server, "lock", "list", "audit-2026")
    assert (lock["path"], lock["holder"]) == ("tb.xlsx", "alice")
    [copy] = as_json(server, "copies", "list", "audit-2026")
    assert (copy["copy_id"], copy["user"], copy["host"]) == ("c0ffee", "alice", "laptop-7")
    assert copy["abandoned_at"] is None


def test_checks_and_maintenance(server: Daemon) -> None:
    assert as_json(server, "fsck") == {"ok": True, "problems": []}
    audit = as_json(server, "audit", "verify")
    assert audit["ok"] is True and audit["chains"]
    assert all(c["problem"] is None for c in audit["chains"])
    [gc] = as_json(server, "gc", "--grace-hours", "0")
    assert gc["engagement"] == "audit-2026" and gc["skipped"] is None
    db = as_json(server, "db", "upgrade")
    assert db["schema_version"] == db["latest_version"]


def test_every_listing_takes_json(server: Daemon) -> None:
    for command, action in sorted(LISTINGS, key=str):
        args = [command] + ([action] if action else [])
        if (command, action) in {("engagement", "status"), ("lock", "list"), ("copies", "list")}:
            args.append("audit-2026")
        as_json(server, *args)


def test_unknown_engagement_is_a_plain_error_not_json(server: Daemon) -> None:
    done = server.admin("lock", "list", "nope", "--json")
    assert done.returncode != 0 and done.stdout == ""
    assert "nope" in done.stderr
