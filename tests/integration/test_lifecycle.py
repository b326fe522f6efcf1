"""The engagement's life (issue 20) through the real daemon, the real ``smartsync`` CLI and
the real ``smartsync-admin``: report date and assembly deadline (post-report changes audited,
the client warned, the daemon's timer finalizing the engagement, after a restart and with two
daemons on one PostgreSQL database claiming each deadline once)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from pg import PgCluster
from test_cli_client import PASSWORD
from test_workflow import User, admin_ok

pytestmark = pytest.mark.integration

FAST_TIMER = "[lifecycle]\ndeadline_check_seconds = 0.3\n"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until true or the deadline; the poll interval is not a synchronization."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def trail(server: Daemon, eng: str) -> list[dict]:
    return json.loads(admin_ok(server, "audit", "export", eng, "--format", "json").stdout)["records"]


def checks(server: Daemon) -> int:
    return server.log_text().count("assembly deadline timer: first check done")


def finalized(server: Daemon, eng: str) -> bool:
    return "\tfinalized " in admin_ok(server, "engagement", "status", eng).stdout


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = running_daemon(tmp_path, config_text=FAST_TIMER)
    try:
        d.add_user("alice", PASSWORD)
        yield d
    finally:
        d.stop()


def new_engagement(server: Daemon, name: str) -> str:
    admin_ok(server, "engagement", "create", name)
    admin_ok(server, "grant", name, "--user", "alice", "--role", "editor")
    return name


def test_post_report_changes_warning_and_finalize_at_the_deadline(
    server: Daemon, tmp_path: Path
) -> None:
    alice = User(server, tmp_path / "alice", "alice")
    eng = new_engagement(server, "assembly-1")
    a = alice.clone(eng, tmp_path / "a")
    (a / "before.txt").write_text("written before the report")
    alice.ok("sync", str(a))

    refused = server.admin("engagement", "set", eng, "--report-date", "31/03/2026", "--assembly-days", "45")
    assert refused.returncode == 2 and "is not a date" in refused.stderr
    # report an hour ago, deadline in 30 days: changes allowed, each audited as post-report
    out = admin_ok(server, "engagement", "set", eng, "--report-date",
                   iso(datetime.now(UTC) - timedelta(hours=1)), "--assembly-days", "30").stdout
    assert "assembly deadline" in out
    (a / "after.txt").write_text("written after the report")
    alice.ok("sync", str(a))
    events = trail(server, eng)
    post = [r for r in events if r["event"] == "post_report_change"]
    assert len(post) == 1 and post[0]["actor"] == "alice"
    assert json.loads(post[0]["detail"])["paths"] == ["after.txt"]
    assert any(r["event"] == "report_date" and r["actor"].startswith("admin:") for r in events)

    # the deadline is near and this copy holds unsynced work: status warns
    admin_ok(server, "engagement", "set", eng, "--report-date",
             iso(datetime.now(UTC) - timedelta(days=30) + timedelta(hours=2)), "--assembly-days", "30")
    (a / "late.txt").write_text("not yet synced")
    status = alice.json("status", str(a))
    assert status["deadline"]["at"] and "assembly deadline" in status["deadline"]["warning"]
    assert "holds 1 unsynced change(s)" in status["deadline"]["warning"]
    assert "warning: the assembly deadline" in alice.ok("status", str(a)).stderr

    # deadline two seconds from now: the daemon's timer finalizes the engagement by itself
    admin_ok(server, "engagement", "set", eng, "--report-date",
             iso(datetime.now(UTC) + timedelta(seconds=2)), "--assembly-days", "0")
    wait_for("the deadline timer to finalize", lambda: finalized(server, eng))
    final = [r for r in trail(server, eng) if r["event"] == "finalize"]
    assert len(final) == 1 and final[0]["actor"] == "smartsyncd:assembly-deadline"
    late = alice.run("sync", str(a))
    assert late.returncode == 5 and "assembly deadline" in late.stderr
    assert (a / "late.txt").read_text() == "not yet synced"  # kept locally
    assert "all chains intact" in admin_ok(server, "audit", "verify", eng).stdout


def test_a_deadline_passed_while_the_daemon_was_down_finalizes_at_start(
    server: Daemon,
) -> None:
    eng = new_engagement(server, "assembly-2")
    later = new_engagement(server, "assembly-3")
    server.stop()
    admin_ok(server, "engagement", "set", eng, "--report-date",
             iso(datetime.now(UTC) - timedelta(days=2)), "--assembly-days", "1")
    admin_ok(server, "engagement", "set", later, "--report-date",
             iso(datetime.now(UTC) + timedelta(days=1)), "--assembly-days", "45")
    assert not finalized(server, eng)
    before = checks(server)
    server.start()
    wait_for("the restarted timer's first check", lambda: checks(server) > before)
    assert finalized(server, eng)
    assert not finalized(server, later)


def test_two_daemons_on_postgresql_finalize_each_deadline_once(tmp_path: Path) -> None:
    with PgCluster() as pg:
        url = pg.url(pg.create_database())
        config = f"[database]\nurl = {url}\n[storage]\npath = {tmp_path / 'chunks'}\n" + FAST_TIMER
        with running_daemon(tmp_path, name="one", config_text=config) as one, running_daemon(
            tmp_path, name="two", config_text=config
        ) as two:
            names = [f"race-{i}" for i in range(6)]
            for name in names:
                admin_ok(one, "engagement", "create", name)
            due = iso(datetime.now(UTC) + timedelta(seconds=2))
            for name in names:
                admin_ok(one, "engagement", "set", name, "--report-date", due, "--assembly-days", "0")
            wait_for("every engagement finalized", lambda: all(finalized(two, n) for n in names))
            # both restart: each start checks at once; nobody finalizes a second time
            for d in (one, two):
                before = checks(d)
                d.restart()
                wait_for("the first check after restart", lambda d=d, n=before: checks(d) > n)
            logs = one.log_text() + two.log_text()
            for name in names:
                final = [r for r in trail(one, name) if r["event"] == "finalize"]
                assert len(final) == 1, (name, final)
                assert logs.count(f"engagement {name} finalized") == 1
            assert "all chains intact" in admin_ok(one, "audit", "verify").stdout
