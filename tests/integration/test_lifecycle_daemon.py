"""The engagement's life (issue 20) through the real daemon, the real ``smartsync`` CLI and
the real ``smartsync-admin``: report date and assembly deadline (post-report changes audited,
the client warned, the daemon's timer finalizing the engagement, after a restart and with two
daemons on one PostgreSQL database claiming each deadline once)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from pg import PgCluster
from test_cli_client import PASSWORD
from test_workflow import User, admin_ok

from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_RAW, encode_records

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
    assert late.returncode == 6 and "assembly deadline" in late.stderr
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


def refused(done, *words: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    return done.stderr


def test_firm_minimum_retention_refuses_shorter_retention_and_disposal(tmp_path: Path) -> None:
    config = FAST_TIMER + "min_retention_days = 2555\n"
    with running_daemon(tmp_path, config_text=config) as server:
        server.add_user("alice", PASSWORD)
        eng = new_engagement(server, "kept-1")
        refused(server.admin("engagement", "retention", eng, "--days", "30"), "at least 2555 day(s)")
        admin_ok(server, "engagement", "retention", eng, "--days", "3000")
        admin_ok(server, "engagement", "finalize", eng, "--reason", "signed off")
        refused(server.admin("engagement", "dispose", eng), "retained until", "2555 day(s)")
        assert "disposed" not in admin_ok(server, "engagement", "status", eng).stdout


def test_legal_hold_then_disposal_with_a_signed_record(server: Daemon, tmp_path: Path) -> None:
    alice = User(server, tmp_path / "alice", "alice")
    eng = new_engagement(server, "dispose-1")
    a = alice.clone(eng, tmp_path / "a")
    (a / "B-1 Cash.txt").write_text("the cash lead schedule")
    (a / "memo.txt").write_text("a memo")
    alice.ok("sync", str(a))
    packs = list((server.data_dir / "chunks").rglob("*.pack"))
    assert packs

    admin_ok(server, "engagement", "set", eng, "--min-retention-days", "0")
    admin_ok(server, "legal-hold", "set", eng, "--reason", "litigation hold 2026-17")
    assert "LEGAL HOLD" in admin_ok(server, "engagement", "status", eng).stdout
    gc = admin_ok(server, "gc", eng, "--grace-hours", "0").stdout
    assert "legal hold" in gc
    admin_ok(server, "engagement", "finalize", eng, "--reason", "signed off")
    refused(server.admin("engagement", "dispose", eng), "legal hold", "litigation hold 2026-17")
    admin_ok(server, "legal-hold", "release", eng, "--reason", "case closed")

    done = admin_ok(server, "engagement", "dispose", eng).stdout
    record = json.loads(done[done.index("{"):])
    assert record["versions"] == 2 and record["current_files"] == 2 and record["disposed_by"].startswith("admin:")
    assert not any(p.exists() for p in packs)
    events = trail(server, eng)
    dispose = [r for r in events if r["event"] == "dispose"]
    assert len(dispose) == 1 and dispose[0]["record_hash"] == record["record_hash"]
    assert json.loads(dispose[0]["detail"])["versions_digest"] == record["versions_digest"]
    assert [r["event"] for r in events if r["event"].startswith("legal_hold")] == [
        "legal_hold", "legal_hold_release"
    ]
    assert "all chains intact" in admin_ok(server, "audit", "verify", eng).stdout
    refused(server.admin("engagement", "reopen", eng, "--reason", "oops"), "disposed")
    # the content is gone: history says so, nothing can be restored
    history = alice.json("history", str(a / "memo.txt"))["versions"]
    assert [(v["version"], v["available"]) for v in history] == [(1, False)]
    gone = alice.run("restore", str(a / "memo.txt"), "--version", "1")
    assert gone.returncode != 0 and "Traceback" not in gone.stderr


CHUNKS_TYPE = "application/x-smartsync-chunks"


def test_quotas_refuse_with_a_json_507_before_anything_is_written(server: Daemon, tmp_path: Path) -> None:
    alice = User(server, tmp_path / "alice", "alice")
    eng = new_engagement(server, "quota-1")
    a = alice.clone(eng, tmp_path / "a")
    admin_ok(server, "quota", "set", "--engagement", eng, "--bytes", "4000")
    refused(server.admin("quota", "set", "--engagement", "nope", "--bytes", "1"), "nope")

    # raw protocol: the chunk upload is answered 507 in JSON, and no pack reaches the disk
    token = server.login("alice", PASSWORD)
    data = os.urandom(6000)
    status, answer = server.request(
        "POST", f"/v1/engagements/{eng}/chunks", token=token, content_type=CHUNKS_TYPE,
        body=encode_records([(chunk_hash(data), CODEC_RAW, len(data), data)]),
    )
    assert status == 507, answer
    assert answer["error"] == "quota_exceeded" and answer["measure"] == "stored bytes"
    assert (answer["limit"], answer["used"], answer["needed"]) == (4000, 0, 6000)
    assert "storage quota of engagement 'quota-1'" in answer["message"]
    assert not list((server.data_dir / "chunks").rglob("*.pack"))

    # the real client: refused, the file stays, a raised quota lets the same sync through
    (a / "big.bin").write_bytes(data)
    done = alice.run("sync", str(a))
    assert done.returncode != 0 and "storage quota" in done.stderr and "Traceback" not in done.stderr
    assert (a / "big.bin").read_bytes() == data
    admin_ok(server, "quota", "set", "--user", "alice", "--bytes", "100000")
    admin_ok(server, "quota", "set", "--engagement", eng, "--bytes", "100000")
    alice.ok("sync", str(a))
    rows = [line.split("\t") for line in admin_ok(server, "quota", "list").stdout.splitlines()[1:]]
    by = {(r[0], r[1]): r for r in rows}
    assert by[("engagement", eng)][3] == "6000" and int(by[("engagement", eng)][4]) >= 6000
    assert by[("user", "alice")][3] == "6000" and int(by[("user", "alice")][4]) >= 6000
    quota_events = [r for r in trail(server, eng) if r["event"] == "quota"]
    assert [json.loads(r["detail"])["bytes"] for r in quota_events] == [4000, 100000]


def test_downloads_exports_and_history_views_are_in_the_audit_trail(server: Daemon, tmp_path: Path) -> None:
    server.add_user("bob", PASSWORD)
    alice = User(server, tmp_path / "alice", "alice")
    eng = new_engagement(server, "reads-1")
    admin_ok(server, "grant", eng, "--user", "bob", "--role", "reader")
    a = alice.clone(eng, tmp_path / "a")
    (a / "B-1 Cash.txt").write_text("the cash lead schedule")
    alice.ok("sync", str(a))
    bob = User(server, tmp_path / "bob", "bob")
    b = bob.clone(eng, tmp_path / "b")
    assert (b / "B-1 Cash.txt").read_text() == "the cash lead schedule"
    bob.ok("history", str(b / "B-1 Cash.txt"))
    bob.ok("export", f"{server.url}/{eng}", "--at", iso(datetime.now(UTC)), str(tmp_path / "x"))

    def reads() -> list[dict]:
        return [r for r in trail(server, eng) if r["chain"] == f"read:{eng}"]

    wait_for("three read events", lambda: len(reads()) >= 3)
    got = {r["event"]: (r["actor"], json.loads(r["detail"])) for r in reads()}
    actor, download = got["download"]
    assert actor == "bob" and download["path"] == "B-1 Cash.txt" and download["address"] == "127.0.0.1"
    assert download["versions"] == [{"path": "B-1 Cash.txt", "seq": 1}] and download["session"]
    assert got["history"][0] == "bob" and got["history"][1]["path"] == "B-1 Cash.txt"
    assert got["export"][0] == "bob" and got["export"][1]["files"] == 1
    verify = admin_ok(server, "audit", "verify", eng).stdout
    assert f"ok\tread:{eng}" in verify and "all chains intact" in verify
    # sign-ins are exportable too: the global chain
    signins = json.loads(admin_ok(server, "audit", "export", "--global", "--format", "json").stdout)["records"]
    assert {("sign_in", "alice"), ("sign_in", "bob")} <= {(r["event"], r["actor"]) for r in signins}
    both = server.admin("audit", "export", eng, "--global")
    assert both.returncode == 1 and "not both" in both.stderr
