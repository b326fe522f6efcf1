"""Remote wipe of a lost laptop's copy through the real daemon, the real ``smartsync`` and the
real ``smartsync-admin`` (docs/workflow.md, "Remote wipe"):

- ``copies abandon ENG COPY --wipe``; the laptop's next ``smartsync sync`` deletes the copy
  (its unsynced edit is never uploaded, a link out of the copy is not followed), forgets the
  server's token, and the report (who, copy, host, how many files) lands in the audit export;
  a second copy on the same laptop keeps its files and state and syncs again after a sign-in;
- a running ``smartsync watch`` is told on its long-poll and wipes the copy it watches;
- at the HTTP level: a sign-in naming the copy gets the order too, and a report with a wrong key
  is refused like an unknown copy (a repeated report: tests/unit/test_wipe_store.py).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from reliability import wait_for
from test_cli_client import PASSWORD, Client, login, new_engagement, provisioned
from test_copylock_cli import lock_holder, popen

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = provisioned(tmp_path_factory.mktemp("wipe"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def laptop(tmp_path: Path, server: Daemon) -> Client:
    home = tmp_path / "home"
    home.mkdir()
    c = Client(home)
    done = login(c, server, "--trust-fingerprint", server.fingerprint)
    assert done.returncode == 0, done.stderr
    return c


def ok(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    done = client.run(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def admin_ok(server: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    done = server.admin(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def copy_id_of(copy: Path) -> str:
    return str(json.loads((copy / ".smartsync" / "copy.json").read_text())["copy_id"])


def trail(server: Daemon, eng: str) -> list[dict[str, Any]]:
    """The engagement's audit export, each record's detail decoded."""
    records = json.loads(admin_ok(server, "audit", "export", eng, "--format", "json").stdout)["records"]
    for r in records:
        if isinstance(r.get("detail"), str):
            r["detail"] = json.loads(r["detail"])
    return list(records)


def copies_row(server: Daemon, eng: str, copy_id: str) -> str:
    lines = admin_ok(server, "copies", "list", eng).stdout.splitlines()
    return next(line for line in lines if line.startswith(copy_id))


def raw(server: Daemon, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(), timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_abandon_wipe_then_sync_deletes_the_copy_uploads_nothing_and_reports(
    server: Daemon, laptop: Client, tmp_path: Path
) -> None:
    eng = "wipe-sync-2026"
    new_engagement(server, eng)
    lost, kept = tmp_path / "lost", tmp_path / "kept"
    ok(laptop, "clone", f"{server.url}/{eng}", str(lost))
    ok(laptop, "clone", f"{server.url}/{eng}", str(kept))
    (lost / "synced.txt").write_text("on the server")
    (lost / "sub").mkdir()
    (lost / "sub" / "memo.docx").write_text("also on the server")
    ok(laptop, "sync", str(lost))
    (lost / "pending.xlsx").write_text("an edit never synced")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the copy's")
    os.symlink(outside, lost / "link out")
    copy = copy_id_of(lost)

    ordered = admin_ok(server, "copies", "abandon", eng, copy, "--wipe")
    assert f"abandoned copy {copy} (alice) and ordered it wiped" in ordered.stdout
    assert "wipe ordered" in copies_row(server, eng, copy) and "not reported yet" in copies_row(server, eng, copy)

    done = laptop.run("--json", "sync", str(lost))
    assert done.returncode == 7, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert result["wiped"] is True and result["reported"] is True and result["copy_id"] == copy
    assert result["files_removed"] == 4  # synced.txt, sub/memo.docx, pending.xlsx, the link
    assert list(lost.iterdir()) == []
    assert (outside / "keep.txt").read_text() == "not the copy's"
    assert "token" not in laptop.settings()["servers"][server.url]  # the session token is gone

    records = trail(server, eng)
    order = next(r for r in records if r["event"] == "copy_wipe_order")
    assert order["actor"].startswith("admin:") and order["detail"]["copy"] == copy
    report = next(r for r in records if r["event"] == "copy_wipe_report")
    assert report["actor"] == "alice"
    assert report["detail"] == {"copy": copy, "host": socket.gethostname(), "address": "127.0.0.1",
                                "files_removed": 4}
    assert "wiped" in copies_row(server, eng, copy) and "(4 files removed)" in copies_row(server, eng, copy)
    # nothing of the unsynced edit reached the server
    assert not any("pending.xlsx" in json.dumps(r) for r in records)
    assert sorted(server_paths(server, eng)) == ["sub/memo.docx", "synced.txt"]

    # the other copy on the same laptop: untouched, and it syncs after signing in again
    assert (kept / ".smartsync" / "state.sqlite3").exists()
    again = laptop.run("login", server.url, "--user", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert again.returncode == 0, again.stderr
    ok(laptop, "sync", str(kept))
    assert (kept / "synced.txt").read_text() == "on the server"
    assert not (kept / "pending.xlsx").exists()


def test_a_watch_is_told_on_its_long_poll_and_wipes_its_copy(
    server: Daemon, laptop: Client, tmp_path: Path
) -> None:
    eng = "wipe-watch-2026"
    new_engagement(server, eng)
    watched = tmp_path / "watched"
    ok(laptop, "clone", f"{server.url}/{eng}", str(watched))
    (watched / "notes.txt").write_text("synced by the watch")
    # short long-polls: the order is answered on the next one, not after a parked 30 s
    watcher = popen(laptop, "--json", "watch", str(watched), "--long-poll", "2")
    try:
        wait_for(lambda: watcher.poll() is not None or lock_holder(watched) == watcher.pid, 60,
                 "the watch to hold the copy lock")
        wait_for(lambda: watcher.poll() is not None or "notes.txt" in json.dumps(server_paths(server, eng)),
                 60, "the watch's first sync")
        admin_ok(server, "copies", "abandon", eng, copy_id_of(watched), "--wipe")
        # the parked long-poll ends within its 2 s; the next one is answered with the order
        wait_for(lambda: watcher.poll() is not None, 120, "the watch to obey the wipe order")
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 7, (out, err)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["wiped"] and result["reported"] and result["files_removed"] == 1
    assert list(watched.iterdir()) == []
    assert any(r["event"] == "copy_wipe_report" for r in trail(server, eng))


def server_paths(server: Daemon, eng: str) -> list[str]:
    status, files = server.request("GET", f"/v1/engagements/{eng}/snapshot",
                                   token=server.login("alice", PASSWORD))
    return [f["path"] for f in files.get("files", [])] if status == 200 else []


def test_sign_in_naming_a_wiped_copy_gets_the_order_and_reports_are_keyed(
    server: Daemon, laptop: Client, tmp_path: Path
) -> None:
    eng = "wipe-http-2026"
    new_engagement(server, eng)
    folder = tmp_path / "copy"
    ok(laptop, "clone", f"{server.url}/{eng}", str(folder))
    copy = copy_id_of(folder)
    admin_ok(server, "copies", "abandon", eng, copy, "--wipe")

    status, answer = raw(server, "POST", "/v1/login", {"user": "alice", "password": PASSWORD},
                         {"Smartsync-Copy": copy})
    assert status == 410 and answer["error"] == "wipe_ordered"
    assert answer["copy"] == copy and answer["engagement"] == eng
    # another copy id signs in as usual
    status, answer = raw(server, "POST", "/v1/login", {"user": "alice", "password": PASSWORD},
                         {"Smartsync-Copy": "some-other-copy"})
    assert status == 200 and answer["token"]

    path = f"/v1/engagements/{eng}/copies/{copy}/wiped"
    status, answer = raw(server, "POST", path, {"key": "0" * 64, "host": "h", "files": 1}, {})
    assert status == 404 and answer["error"] == "not_found"  # wrong key: as if no order
    status, answer = raw(server, "POST", path, {"key": "nope", "host": "h", "files": 1}, {})
    assert status == 400 and "key" in answer["message"]
    before = len(trail(server, eng))

    done = laptop.run("--json", "sync", str(folder))
    assert done.returncode == 7, done.stderr
    assert json.loads(done.stdout)["reported"] is True
    assert len(trail(server, eng)) == before + 1  # one report event


def test_an_engagement_admin_orders_a_wipe_from_their_own_machine(
    server: Daemon, laptop: Client, tmp_path: Path
) -> None:
    eng = "wipe-by-admin-2026"
    new_engagement(server, eng)
    added = server.admin("user", "add", "hana", "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    admin_ok(server, "grant", eng, "--user", "hana", "--role", "admin")
    lost = tmp_path / "lost"
    ok(laptop, "clone", f"{server.url}/{eng}", str(lost))
    (lost / "a.txt").write_text("synced")
    ok(laptop, "sync", str(lost))
    copy = copy_id_of(lost)

    home = tmp_path / "hana"
    home.mkdir()
    hana = Client(home)
    signed = hana.run("login", server.url, "--user", "hana", "--password-stdin",
                      "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n")
    assert signed.returncode == 0, signed.stderr
    # alice is only an editor: she may not order it
    refused = laptop.run("copies", "abandon", copy, f"{server.url}/{eng}", "--wipe")
    assert refused.returncode == 5, (refused.stdout, refused.stderr)
    assert "wipe ordered" not in copies_row(server, eng, copy)

    token = hana.settings()["servers"][server.url]["token"]
    status, answer = raw(server, "POST", f"/v1/engagements/{eng}/copies/{copy}/abandon",
                         {"wipe": "yes"}, {"Authorization": f"Bearer {token}"})
    assert (status, answer["error"], answer["field"]) == (400, "bad_request", "wipe")
    assert "abandoned" not in copies_row(server, eng, copy)

    ordered = json.loads(ok(hana, "--json", "copies", "abandon", copy, f"{server.url}/{eng}", "--wipe").stdout)
    assert ordered["wipe"] is True and ordered["copy"]["abandoned_by"] == "hana"
    order = next(r for r in trail(server, eng) if r["event"] == "copy_wipe_order")
    assert order["actor"] == "hana" and order["detail"]["copy"] == copy

    done = laptop.run("--json", "sync", str(lost))
    assert done.returncode == 7, (done.stdout, done.stderr)
    assert json.loads(done.stdout)["files_removed"] == 1
    assert list(lost.iterdir()) == []
