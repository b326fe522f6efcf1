"""``smartsync verify`` through the real daemon, the real ``smartsync`` CLI and the real
``smartsync-admin`` (issue 20, proof that two copies are identical): an identical copy; a file
changed locally (an unsynced edit, named as such); a file only on the server; ignored files;
earlier change numbers; the signing key's fingerprint as the admin prints it; a signature check
failing when the key differs; and no file content downloaded by any of it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from test_cli_client import PASSWORD
from test_workflow import User, admin_ok, engagement

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("verify"))
    try:
        for name in ("alice", "bob"):
            done = d.admin("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
            assert done.returncode == 0, done.stderr
        yield d
    finally:
        d.stop()


def verify(user: User, folder: Path, *args: str) -> tuple[int, dict]:
    done = user.run("--json", "verify", str(folder), *args)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout.splitlines()[-1])


def read_events(server: Daemon, eng: str) -> list[tuple[str, str]]:
    """(event, actor) of the engagement's read audit chain, as the daemon wrote it."""
    with sqlite3.connect(server.data_dir / "metadata.sqlite3") as db:
        rows = db.execute("SELECT event, actor FROM audit WHERE chain = ? ORDER BY seq", (f"read:{eng}",))
        return [(str(r[0]), str(r[1])) for r in rows]


def wait_for_verifies(server: Daemon, eng: str, since: int, count: int) -> list[tuple[str, str]]:
    """The read events after the first ``since``, once ``count`` ``verify`` events are among
    them (the daemon writes read events about a second after they happen)."""
    deadline = time.monotonic() + 20
    while True:
        events = read_events(server, eng)[since:]
        if sum(e[0] == "verify" for e in events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait


def test_identical_changed_and_server_only(server: Daemon, tmp_path: Path) -> None:
    eng = engagement(server, "verify-a")
    alice, bob = User(server, tmp_path / "alice", "alice"), User(server, tmp_path / "bob", "bob")
    mine = alice.clone(eng, tmp_path / "a-copy")
    (mine / "Working papers").mkdir()
    (mine / "Working papers" / "B-1 Cash.xlsx").write_bytes(os.urandom(300_000))
    (mine / "Prüfung.docx").write_bytes(b"notes " * 1000)
    (mine / ".smartsyncignore").write_text("scratch/\n")
    alice.ok("sync", str(mine))
    theirs = bob.clone(eng, tmp_path / "b-copy")
    before = len(read_events(server, eng))

    code, report = verify(alice, mine)
    assert code == 0 and report["identical"] is True, report
    assert report["files"] == report["local_files"] == 3 and report["differences"] == []
    assert report["root"] == report["local_root"] and report["key_pinned_now"] is True
    text = alice.ok("verify", str(mine)).stdout
    assert f"identical to the server's at seq {report['seq']}" in text
    # the fingerprint the copy accepted is the one the server's administrator prints
    printed = admin_ok(server, "root-key").stdout
    assert f"SHA-256 fingerprint: {report['fingerprint']}" in printed
    # bob's copy, cloned from the same server, proves the same root: the two copies are identical
    code, bobs = verify(bob, theirs)
    assert code == 0 and bobs["root"] == report["root"] and bobs["seq"] == report["seq"]

    # ignored files are left out on both sides: still identical
    (mine / "scratch").mkdir()
    (mine / "scratch" / "draft.txt").write_text("not for the file")
    (mine / "~$B-1 Cash.xlsx").write_bytes(b"office owner file")
    code, report = verify(alice, mine)
    assert code == 0 and report["identical"] and report["ignored"] == ["scratch/", "~$B-1 Cash.xlsx"]

    # a file edited here and not synced: a difference, named as an unsynced edit (exit 1);
    # the state database still says the old content, so the bytes on disk were read
    cash = mine / "Working papers" / "B-1 Cash.xlsx"
    stat = cash.stat()
    with cash.open("r+b") as f:
        f.write(b"X")
    os.utime(cash, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and time: only bytes differ
    code, report = verify(alice, mine)
    assert code == 1 and report["identical"] is False
    assert [(d["path"], d["kind"], d["reason"]) for d in report["differences"]] == [
        ("Working papers/B-1 Cash.xlsx", "different_content", "unsynced_edit")
    ]
    assert report["unsynced"] == 1
    done = alice.run("verify", str(mine))
    assert done.returncode == 1
    assert "Working papers/B-1 Cash.xlsx: edited here, not synced yet" in done.stdout

    # a file only on the server (bob's new file, alice has not synced) and a local deletion
    (theirs / "Letters").mkdir()
    (theirs / "Letters" / "Rep letter.pdf").write_bytes(b"%PDF signed " * 500)
    bob.ok("sync", str(theirs))
    (mine / "Prüfung.docx").unlink()
    code, report = verify(alice, mine)
    assert code == 1
    reasons = {d["path"]: d["reason"] for d in report["differences"]}
    assert reasons == {
        "Letters/Rep letter.pdf": "server_only",
        "Prüfung.docx": "unsynced_delete",
        "Working papers/B-1 Cash.xlsx": "unsynced_edit",
    }
    # at the change number alice last synced, the server's letter was not there yet
    code, earlier = verify(alice, mine, "--seq", str(report["last_seq"]))
    assert code == 1 and earlier["seq"] == report["last_seq"] < report["seq"]
    assert {d["path"] for d in earlier["differences"]} == {"Prüfung.docx", "Working papers/B-1 Cash.xlsx"}

    # eight verifications so far, each a read in the audit trail; none downloaded any content
    events = wait_for_verifies(server, eng, before, 8)
    events = events[events.index(("verify", "alice")):]  # bob's clone downloaded before this
    assert events.count(("verify", "alice")) == 7 and events.count(("verify", "bob")) == 1
    assert ("verify-list", "alice") in events
    assert not [e for e in events if e[0] == "download"], events

    # after a sync both ways, both copies are identical again, at the new head (the edit's
    # time moves on so that sync's stat cache, which verify does not trust, sees it too)
    os.utime(cash)
    alice.ok("sync", str(mine))
    bob.ok("sync", str(theirs))
    code, a = verify(alice, mine)
    code_b, b = verify(bob, theirs)
    assert (code, code_b) == (0, 0) and a["root"] == b["root"] and a["seq"] == b["seq"]


def test_signature_check_fails_when_the_key_differs(tmp_path: Path) -> None:
    server = running_daemon(tmp_path)  # its own: this test replaces the store's key
    try:
        _key_differs(server, tmp_path)
    finally:
        server.stop()


def _key_differs(server: Daemon, tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        done = server.admin("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
    eng = engagement(server, "verify-b")
    alice = User(server, tmp_path / "alice", "alice")
    mine = alice.clone(eng, tmp_path / "copy")
    (mine / "a.txt").write_text("a")
    alice.ok("sync", str(mine))
    code, report = verify(alice, mine)
    assert code == 0, report
    key = server.data_dir / "chunks" / "keys" / "root-signing-ed25519.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700

    # a fingerprint given that is not the server's: nothing is proven (exit 4)
    wrong = ":".join(["AB"] * 32)
    done = alice.run("verify", str(mine), "--key-fingerprint", wrong)
    assert done.returncode == 4 and f"not the {wrong} given" in done.stderr, done.stderr

    # the server's key replaced (a swapped file, another store's key): the copy's pin refuses it
    server.stop()
    key.unlink()
    server.listen = f"ssl:{server.port}:interface=127.0.0.1"  # the copy knows this address
    server.start()
    fresh = admin_ok(server, "root-key").stdout
    new_fingerprint = fresh.split("SHA-256 fingerprint: ")[1].split()[0]
    assert new_fingerprint != report["fingerprint"]
    done = alice.run("--json", "verify", str(mine))
    assert done.returncode == 4, (done.stdout, done.stderr)
    error = json.loads(done.stdout.splitlines()[-1])
    assert error["error"] == "SignatureRefused" and error["exit_code"] == 4
    assert report["fingerprint"] in error["message"] and new_fingerprint in error["message"]
    # accepted on purpose, after checking the new fingerprint with the administrator
    code, again = verify(alice, mine, "--key-fingerprint", new_fingerprint)
    assert code == 0 and again["key_pinned_now"] is True
    code, again = verify(alice, mine)
    assert code == 0 and again["key_pinned_now"] is False


def test_verify_of_something_that_is_not_a_copy_is_a_usage_error(server: Daemon, tmp_path: Path) -> None:
    alice = User(server, tmp_path / "alice", "alice")
    done = alice.run("verify", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = alice.run("verify", str(tmp_path), "--seq", "-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
