"""File dates and the read-only attribute through the real daemon and the real ``smartsync``
CLI (issue 16): a report dated 15 March 2025 keeps that date on another copy, an edit there
comes back with its own date, read-only travels, history/restore/export keep dates, and
repeated syncs move nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon import Daemon
from test_cli_client import Client, login, provisioned

from smartsyncd.client import osfs

pytestmark = pytest.mark.integration

MARCH_15 = int(datetime(2025, 3, 15, 14, 5, 9, tzinfo=UTC).timestamp()) * 10**9 + 250_000_000
APRIL_2 = int(datetime(2025, 4, 2, 8, 0, 1, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "server")
    try:
        yield d
    finally:
        d.stop()


def ok(client: Client, *args: str) -> dict:
    done = client.run("--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def moved(report: dict) -> tuple[int, int]:
    return report["uploaded"], report["downloaded"]


def date_of(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_dates_and_read_only_travel_between_copies_and_through_history(
    server: Daemon, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for copy in (a, b):
        assert client.run("clone", f"{server.url}/acme-2026", str(copy)).returncode == 0

    report = a / "Reports" / "Management letter.docx"
    report.parent.mkdir()
    report.write_bytes(b"management letter, signed 15 March 2025\n")
    os.utime(report, ns=(MARCH_15, MARCH_15))
    osfs.set_readonly(report, True)
    assert moved(ok(client, "sync", str(a))) == (1, 0)

    # another copy gets the date and the attribute, not the time of the pull
    assert moved(ok(client, "sync", str(b))) == (0, 1)
    on_b = b / "Reports" / "Management letter.docx"
    assert date_of(on_b) == MARCH_15 and osfs.is_readonly(on_b.stat())
    for copy in (b, a, b):  # no ping-pong: nothing moves, nothing is sent back
        assert moved(ok(client, "sync", str(copy))) == (0, 0)

    # an edit on b (made writable first) comes back to a with its own date, over a's
    # read-only file, and writable as it was sent
    osfs.set_readonly(on_b, False)
    on_b.write_bytes(b"management letter, revised 2 April 2025\n")
    os.utime(on_b, ns=(APRIL_2, APRIL_2))
    assert moved(ok(client, "sync", str(b))) == (1, 0)
    assert moved(ok(client, "sync", str(a))) == (0, 1)
    assert report.read_bytes() == b"management letter, revised 2 April 2025\n"
    assert date_of(report) == APRIL_2 and not osfs.is_readonly(report.stat())
    assert ok(client, "conflicts", str(a))["conflicts"] == []

    versions = ok(client, "history", str(report))["versions"]
    assert [(v["version"], v["mtime"], v["readonly"]) for v in versions] == [
        (1, MARCH_15, True), (2, APRIL_2, False)
    ]
    # an export as of now writes the current version with its date
    exported = tmp_path / "export"
    # whole seconds: "now" rounded down could fall before the commit made earlier in this
    # second (the commands now run well under a second), so a second ahead
    now = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="seconds")
    assert ok(client, "export", f"{server.url}/acme-2026", "--at", now, str(exported))["files"] == 1
    assert date_of(exported / "Reports" / "Management letter.docx") == APRIL_2

    # a restore of version 1 brings back its date and attribute, on both copies
    restored = ok(client, "restore", str(report), "--version", "1")
    assert restored["status"] == "applied"
    assert report.read_bytes() == b"management letter, signed 15 March 2025\n"
    assert date_of(report) == MARCH_15 and osfs.is_readonly(report.stat())
    assert moved(ok(client, "sync", str(b))) == (0, 1)
    assert date_of(on_b) == MARCH_15 and osfs.is_readonly(on_b.stat())
    for copy in (a, b, a):
        assert moved(ok(client, "sync", str(copy))) == (0, 0)


def test_a_touch_sends_no_version(server: Daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a = tmp_path / "a"
    assert client.run("clone", f"{server.url}/acme-2026", str(a)).returncode == 0
    memo = a / "memo.txt"
    memo.write_bytes(b"memo")
    os.utime(memo, ns=(MARCH_15, MARCH_15))
    assert moved(ok(client, "sync", str(a))) == (1, 0)
    os.utime(memo, ns=(APRIL_2, APRIL_2))  # touched: same content, a new date
    assert moved(ok(client, "sync", str(a))) == (0, 0)
    versions = ok(client, "history", str(memo))["versions"]
    assert [(v["version"], v["mtime"]) for v in versions] == [(1, MARCH_15)]


BEFORE_1980 = int(datetime(1975, 6, 1, 12, 0, tzinfo=UTC).timestamp()) * 10**9


def test_an_exfat_copy_keeps_what_it_can_store_and_never_ping_pongs(
    server: Daemon, tmp_path: Path, exfat_dir: Path
) -> None:
    """exFAT (the USB drives some staff sync to; FAT too) rounds dates (to the second on this
    mount), may clamp one before 1980 and ignores chmod: the copy records what the volume
    stored, so nothing looks edited."""
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    a, usb = tmp_path / "a", exfat_dir / "copy"
    for copy in (a, usb):
        assert client.run("clone", f"{server.url}/acme-2026", str(copy)).returncode == 0
    (a / "march.txt").write_bytes(b"odd nanoseconds")
    os.utime(a / "march.txt", ns=(MARCH_15 + 123_456_789, MARCH_15 + 123_456_789))
    (a / "old.txt").write_bytes(b"an archive from 1975")
    os.utime(a / "old.txt", ns=(BEFORE_1980, BEFORE_1980))
    assert moved(ok(client, "sync", str(a))) == (2, 0)

    assert moved(ok(client, "sync", str(usb))) == (0, 2)
    stored = date_of(usb / "march.txt")
    assert abs(stored - (MARCH_15 + 123_456_789)) < 2 * 10**9  # rounded to what exFAT keeps
    assert date_of(usb / "old.txt") < int(datetime(1980, 1, 2, tzinfo=UTC).timestamp()) * 10**9
    for copy in (usb, a, usb):
        assert moved(ok(client, "sync", str(copy))) == (0, 0)
    # a same-size edit on the exFAT copy is still found
    (usb / "march.txt").write_bytes(b"ODD NANOSECONDS")
    assert moved(ok(client, "sync", str(usb))) == (1, 0)
    assert moved(ok(client, "sync", str(a))) == (0, 1)
    assert (a / "march.txt").read_bytes() == b"ODD NANOSECONDS"
