"""The engagement workflow through the real daemon, the real ``smartsync`` CLI and the real
``smartsync-admin``: check-out locks, history/restore/export, sign-off freeze, known copies and
abandon, the tamper-evident audit trail, and gc (docs/workflow.md).

One daemon serves the module; each test has its own engagement and its own users' settings
folders, so tests do not see each other's state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from test_cli_client import PASSWORD, Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("workflow"))
    try:
        for name in ("alice", "bob"):
            done = d.admin("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
            assert done.returncode == 0, done.stderr
        yield d
    finally:
        d.stop()


class User:
    """One person with their own CLI settings, signed in to the daemon."""

    def __init__(self, server: Daemon, home: Path, name: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.client = Client(home)
        self.server = server
        self.name = name
        done = self.client.run(
            "login", server.url, "--user", name, "--password-stdin",
            "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n",
        )
        assert done.returncode == 0, done.stderr

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.client.run(*args)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    def json(self, *args: str) -> dict:
        return json.loads(self.ok("--json", *args).stdout)

    def clone(self, eng: str, folder: Path) -> Path:
        self.ok("clone", f"{self.server.url}/{eng}", str(folder))
        return folder


def admin_ok(server: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    done = server.admin(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def engagement(server: Daemon, name: str) -> str:
    admin_ok(server, "engagement", "create", name)
    for user in ("alice", "bob"):
        admin_ok(server, "grant", name, "--user", user, "--role", "editor")
    return name


@pytest.fixture
def people(server: Daemon, tmp_path: Path) -> tuple[User, User]:
    return User(server, tmp_path / "alice", "alice"), User(server, tmp_path / "bob", "bob")


def test_checked_out_folder_refuses_others_and_the_edit_syncs_after_checkin(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, bob = people
    eng = engagement(server, "locks-1")
    a = alice.clone(eng, tmp_path / "a")
    (a / "WP").mkdir()
    (a / "WP" / "cash.txt").write_text("alice v1")
    alice.ok("sync", str(a))
    b = bob.clone(eng, tmp_path / "b")

    lock = alice.json("checkout", str(a / "WP"), "--for", "8h")
    assert lock["path"] == "WP" and lock["holder"] == "alice" and lock["expires_at"]

    (b / "WP" / "cash.txt").write_text("bob's edit")
    status = bob.json("status", str(b))
    assert status["locked"] and status["locked"][0]["path"] == "WP/cash.txt"
    assert "checked out by alice" in status["locked"][0]["lock"]
    waiting = bob.run("--json", "sync", str(b))
    assert waiting.returncode == 6, waiting.stderr  # finished; one edit waits (partial)
    synced = json.loads(waiting.stdout)
    assert synced["locked"] == ["WP/cash.txt"] and synced["unsynced"] == 1
    assert any("checked out by alice" in s["reason"] for s in synced["skipped"])
    assert (b / "WP" / "cash.txt").read_text() == "bob's edit"  # the edit waits, not lost
    alice.ok("sync", str(a))
    assert (a / "WP" / "cash.txt").read_text() == "alice v1"

    # bob cannot take over alice's lock; alice's own edits still go through
    taken = bob.run("checkout", str(b / "WP" / "cash.txt"))
    assert taken.returncode == 5 and "checked out by alice" in taken.stderr
    (a / "WP" / "notes.txt").write_text("alice adds a note")
    assert alice.json("sync", str(a))["uploaded"] == 1

    alice.ok("checkin", str(a / "WP"))
    assert bob.json("sync", str(b))["uploaded"] == 1
    alice.ok("sync", str(a))
    assert (a / "WP" / "cash.txt").read_text() == "bob's edit"

    # an admin breaks a forgotten lock; the break is in the audit trail
    bob.ok("checkout", str(b / "WP"))
    assert "WP\tbob" in admin_ok(server, "lock", "list", eng).stdout
    admin_ok(server, "lock", "break", eng, "WP", "--reason", "bob is on leave")
    assert alice.json("locks", str(a))["locks"] == []
    trail = json.loads(admin_ok(server, "audit", "export", eng, "--format", "json").stdout)["records"]
    events = [(r["event"], r["actor"]) for r in trail if r["chain"] == f"eng:{eng}"]
    assert ("checkout", "alice") in events and ("checkin", "alice") in events
    assert any(e == "lock_break" and actor.startswith("admin:") for e, actor in events)


def test_history_restore_and_export_at_a_time(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, _ = people
    eng = engagement(server, "history-1")
    a = alice.clone(eng, tmp_path / "a")
    (a / "B-1 Cash.txt").write_text("version one")
    (a / "old.txt").write_text("will be deleted")
    alice.ok("sync", str(a))
    at = datetime.now(UTC)
    (a / "B-1 Cash.txt").write_text("version two, longer")
    (a / "old.txt").unlink()
    (a / "new.txt").write_text("added later")
    alice.ok("sync", str(a))

    versions = alice.json("history", str(a / "B-1 Cash.txt"))["versions"]
    assert [(v["version"], v["user"], v["size"]) for v in versions] == [(1, "alice", 11), (2, "alice", 19)]
    text = alice.ok("history", str(a / "B-1 Cash.txt")).stdout
    assert text.splitlines()[0].startswith("1\talice\t")

    restored = alice.json("restore", str(a / "B-1 Cash.txt"), "--version", "1")
    assert restored["status"] == "applied"
    assert (a / "B-1 Cash.txt").read_text() == "version one"
    versions = alice.json("history", str(a / "B-1 Cash.txt"))["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert versions[2]["content"] == versions[0]["content"]  # the same content, a new change

    out = tmp_path / "export"
    done = alice.json("export", f"{server.url}/{eng}", "--at", at.isoformat(), str(out))
    assert done["files"] == 2 and done["missing"] == []
    assert sorted(p.name for p in out.iterdir()) == ["B-1 Cash.txt", "old.txt"]
    assert (out / "B-1 Cash.txt").read_text() == "version one"
    assert (out / "old.txt").read_text() == "will be deleted"


def test_finalize_freezes_the_engagement_for_every_client_until_reopened(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, bob = people
    eng = engagement(server, "final-1")
    a = alice.clone(eng, tmp_path / "a")
    (a / "report.txt").write_text("draft")
    (a / "scratch.txt").write_text("scratch")
    alice.ok("sync", str(a))
    b = bob.clone(eng, tmp_path / "b")

    # a copy holding unsynced work blocks sign-off unless forced
    (b / "report.txt").write_text("bob's last fix")
    bob.ok("status", str(b))
    refused = server.admin("engagement", "finalize", eng, "--reason", "signed off")
    assert refused.returncode == 1 and "unsynced" in refused.stderr and "bob" in refused.stderr
    bob.ok("sync", str(b))
    admin_ok(server, "engagement", "finalize", eng, "--reason", "report signed 2026-03-31")

    alice.ok("sync", str(a))
    (a / "report.txt").write_text("alice edits after sign-off")
    (b / "scratch.txt").unlink()
    for user, folder in ((alice, a), (bob, b)):
        done = user.run("sync", str(folder))
        assert done.returncode == 6, done.stderr  # finished, some changes could not sync
        assert "report signed 2026-03-31" in done.stderr and "finalized" in done.stderr
    assert (a / "report.txt").read_text() == "alice edits after sign-off"  # kept locally
    assert bob.run("checkout", str(b / "report.txt")).returncode == 5
    fresh = alice.clone(eng, tmp_path / "fresh")
    assert (fresh / "report.txt").read_text() == "bob's last fix"
    assert (fresh / "scratch.txt").exists()  # nothing was deleted

    admin_ok(server, "engagement", "reopen", eng, "--reason", "typo in the report")
    assert alice.json("sync", str(a))["uploaded"] == 1
    trail = json.loads(admin_ok(server, "audit", "export", eng, "--format", "json").stdout)["records"]
    finals = [r for r in trail if r["event"] in ("finalize", "reopen")]
    assert [r["event"] for r in finals] == ["finalize", "reopen"]
    assert "report signed 2026-03-31" in finals[0]["detail"]
    assert "typo in the report" in finals[1]["detail"]


def test_copies_report_unsynced_work_and_an_abandoned_copy_never_commits(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, _ = people
    eng = engagement(server, "copies-1")
    a = alice.clone(eng, tmp_path / "a")
    copy_id = json.loads((a / ".smartsync" / "copy.json").read_text())["copy_id"]

    def listed() -> list[str]:
        lines = admin_ok(server, "copies", "list", eng).stdout.splitlines()
        return next(line.split("\t") for line in lines if line.startswith(copy_id))

    row = listed()
    assert row[1] == "alice" and row[2] == os.uname().nodename and row[4] == "0"
    (a / "one.txt").write_text("1")
    (a / "two.txt").write_text("2")
    alice.ok("status", str(a))  # a contact while holding two unsynced edits
    row = listed()
    assert row[4] == "2" and row[5] != "-"
    alice.ok("sync", str(a))
    row = listed()
    assert row[4] == "0" and row[5] == "-"

    (a / "three.txt").write_text("3")
    admin_ok(server, "copies", "abandon", eng, copy_id)
    assert "abandoned" in listed()[6]
    ended = alice.run("sync", str(a))
    assert ended.returncode == 3, ended.stderr  # its session ended
    again = alice.client.run("login", server.url, "--user", "alice", "--password-stdin",
                             input=PASSWORD + "\n")
    assert again.returncode == 0, again.stderr
    refused = alice.run("sync", str(a))
    assert refused.returncode == 5 and "abandoned" in refused.stderr, refused.stderr
    assert (a / "three.txt").read_text() == "3"
    names = [line.split("\t")[-1] for line in admin_ok(server, "audit", "export", eng).stdout.splitlines()]
    assert names  # the csv export has rows


def test_audit_verify_names_the_first_tampered_record(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, _ = people
    eng = engagement(server, "audit-1")
    a = alice.clone(eng, tmp_path / "a")
    for i in range(3):
        (a / f"f{i}.txt").write_text(f"content {i}")
        alice.ok("sync", str(a))
    good = admin_ok(server, "audit", "verify", eng)
    assert "all chains intact" in good.stdout and f"changes:{eng}\t3 records" in good.stdout

    db = sqlite3.connect(server.data_dir / "metadata.sqlite3")
    try:
        eid = db.execute("SELECT id FROM engagements WHERE name = ?", (eng,)).fetchone()[0]
        db.execute("UPDATE changes SET user_name = 'mallory' WHERE engagement_id = ? AND seq = 2", (eid,))
        db.commit()
        bad = server.admin("audit", "verify", eng)
        assert bad.returncode == 1
        assert "record 2: contents do not match its hash (edited)" in bad.stdout
        db.execute("UPDATE changes SET user_name = 'alice' WHERE engagement_id = ? AND seq = 2", (eid,))
        # remove an audit event (the grant of bob) from the engagement's chain
        db.execute("DELETE FROM audit WHERE chain = ? AND seq = 2", (f"eng:{eng}",))
        db.commit()
    finally:
        db.close()
    bad = server.admin("audit", "verify", eng)
    assert bad.returncode == 1 and f"audit eng:{eng} record 2: missing" in bad.stdout
    assert f"ok\tchanges:{eng}" in bad.stdout


def test_gc_keeps_every_chunk_a_retained_version_or_conflict_copy_needs(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    alice, bob = people
    eng = engagement(server, "gc-1")
    a = alice.clone(eng, tmp_path / "a")
    b = bob.clone(eng, tmp_path / "b")
    old, new = os.urandom(300_000), os.urandom(300_000)
    (a / "big.bin").write_bytes(old)
    alice.ok("sync", str(a))
    (a / "big.bin").write_bytes(new)
    (a / "shared.bin").write_bytes(os.urandom(100_000))
    alice.ok("sync", str(a))
    bob.ok("sync", str(b))
    # a conflict: both edit shared.bin; bob's version becomes a conflict copy, then bob deletes it
    alice_edit, bob_edit = os.urandom(120_000), os.urandom(120_000)
    (a / "shared.bin").write_bytes(alice_edit)
    alice.ok("sync", str(a))
    (b / "shared.bin").write_bytes(bob_edit)
    made = bob.run("--json", "sync", str(b))
    assert made.returncode == 1, made.stderr  # 1: a conflict copy is left to resolve
    conflict = json.loads(made.stdout)["conflicts"][0]
    (b / conflict).unlink()
    bob.ok("sync", str(b))

    packs_dir = server.data_dir / "chunks"
    before = sum(1 for _ in packs_dir.rglob("*.pack"))
    admin_ok(server, "engagement", "retention", eng, "--days", "0")
    done = admin_ok(server, "gc", eng, "--grace-hours", "0")
    assert "removed" in done.stdout and " 0 chunk(s)" not in done.stdout, done.stdout
    assert sum(1 for _ in packs_dir.rglob("*.pack")) < before  # the old version's pack went
    assert admin_ok(server, "fsck").returncode == 0

    fresh = alice.clone(eng, tmp_path / "fresh")
    assert (fresh / "big.bin").read_bytes() == new and (fresh / "shared.bin").read_bytes() == alice_edit
    versions = alice.json("history", str(fresh / "big.bin"))["versions"]
    assert [v["available"] for v in versions] == [False, True]
    gone = alice.run("restore", str(fresh / "big.bin"), "--version", "1")
    assert gone.returncode == 5 and "retention" in gone.stderr
    # the deleted conflict copy is still retained: restore brings bob's bytes back
    alice.ok("restore", str(fresh / conflict), "--version", "1")
    assert (fresh / conflict).read_bytes() == bob_edit
    assert admin_ok(server, "audit", "verify", eng).returncode == 0


def test_a_reader_with_a_stray_file_still_receives_changes(
    server: Daemon, people: tuple[User, User], tmp_path: Path
) -> None:
    """A reader's local file cannot be sent; it stays in the copy, is reported with the
    partial exit code (6), and the pull still happens on every sync (the copy never goes stale)."""
    alice, bob = people
    eng = "reader-1"
    admin_ok(server, "engagement", "create", eng)
    admin_ok(server, "grant", eng, "--user", "alice", "--role", "editor")
    admin_ok(server, "grant", eng, "--user", "bob", "--role", "reader")
    a = alice.clone(eng, tmp_path / "a")
    (a / "plan.txt").write_text("audit plan v1")
    alice.ok("sync", str(a))
    b = bob.clone(eng, tmp_path / "b")
    assert (b / "plan.txt").read_text() == "audit plan v1"

    (b / "my notes.txt").write_text("bob's own notes")  # a stray local file
    (a / "plan.txt").write_text("audit plan v2")
    alice.ok("sync", str(a))
    for round_ in ("v2", "v3"):
        done = bob.run("--json", "sync", str(b))
        assert done.returncode == 6, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        report = json.loads(done.stdout)
        assert report["partial"] is True and report["refused"]
        assert (b / "plan.txt").read_text() == f"audit plan {round_}"  # pulled all the same
        assert (b / "my notes.txt").read_text() == "bob's own notes"  # kept locally
        (a / "plan.txt").write_text("audit plan v3")
        alice.ok("sync", str(a))
    fresh = alice.clone(eng, tmp_path / "fresh")
    assert not (fresh / "my notes.txt").exists()  # never reached the server
