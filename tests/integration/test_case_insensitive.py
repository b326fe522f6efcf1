"""Case-only renames between a case-sensitive copy (ext4) and a case-insensitive one (a real
exFAT mount, as NTFS on Windows and APFS on macOS behave), through the real daemon and the real
``smartsync`` CLI: files and folders renamed in case on either side, and edits racing the
renames. Nothing is lost (every content written is in a copy, as itself or a conflict copy),
both copies converge on a fresh clone of the server's head, and ``fsck`` is clean (issue 16).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, running_daemon
from reliability import PASSWORD, add_engagements, add_users, copy_files, fsck
from test_cli_client import Client

pytestmark = pytest.mark.integration

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("case"))
    try:
        add_users(d, ["alice", "bob"])
        yield d
    finally:
        d.stop()


class Copy:
    """One user's sync copy, driven through the CLI."""

    def __init__(self, server: Daemon, user: str, home: Path, root: Path) -> None:
        home.mkdir(parents=True)
        self.client = Client(home)
        self.root = root
        self.user = user
        done = self.client.run(
            "login", server.url, "--user", user, "--password-stdin",
            "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n",
        )
        assert done.returncode == 0, done.stderr

    def clone(self, url: str) -> None:
        done = self.client.run("clone", url, str(self.root))
        assert done.returncode == 0, done.stderr

    def sync(self, conflicts_ok: bool = False) -> dict[str, Any]:
        done = self.client.run("--json", "sync", str(self.root))
        allowed = (0, 1) if conflicts_ok else (0,)
        assert done.returncode in allowed, f"sync of {self.root} exit {done.returncode}: {done.stderr}"
        report = json.loads(done.stdout)
        assert not report["skipped"], f"sync of {self.root} skipped changes: {report}"
        return report

    def status(self) -> dict[str, Any]:
        done = self.client.run("--json", "status", str(self.root))
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)

    def files(self) -> dict[str, bytes]:
        return copy_files(self.root)

    def write(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.fixture
def pair(server: Daemon, tmp_path: Path, exfat_dir: Path) -> Iterator[tuple[Copy, Copy, str]]:
    """(alice's copy on ext4, bob's copy on exFAT, the engagement's URL), both cloned empty."""
    name = f"case-{next(_names)}"
    add_engagements(server, [name], {"alice": "editor", "bob": "editor"})
    url = f"{server.url}/{name}"
    linux = Copy(server, "alice", tmp_path / "alice", tmp_path / "linux-copy")
    windows = Copy(server, "bob", tmp_path / "bob", exfat_dir / "windows-copy")
    linux.clone(url)
    windows.clone(url)
    yield linux, windows, url
    fsck(server)


def stored_names(folder: Path) -> list[str]:
    """The spellings the file system stores (exFAT keeps case; lookups ignore it)."""
    return sorted(n for n in os.listdir(folder) if n != ".smartsync")


def converge(linux: Copy, windows: Copy, url: str, tmp_path: Path) -> dict[str, bytes]:
    """Sync both twice; both must equal a fresh clone of the server's head, and be clean."""
    for _round in range(2):
        linux.sync(conflicts_ok=True)
        windows.sync(conflicts_ok=True)
    fresh = tmp_path / f"fresh-{next(_names)}"
    linux.client.run("clone", url, str(fresh)).check_returncode()
    head = copy_files(fresh)
    assert linux.files() == head, "the case-sensitive copy differs from the server"
    assert windows.files() == head, "the case-insensitive copy differs from the server"
    for side in (linux, windows):
        status = side.status()
        assert status["clean"], f"{side.root} not clean: {status}"
    return head


def shape(files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` with each conflict copy's date and time replaced by ``*``."""
    return {re.sub(r"\(conflict (\w+) [^)]*\)", r"(conflict \1 *)", p): d for p, d in files.items()}


# ---------------------------------------------------------------- renames made on Linux


def test_file_case_renames_pulled_into_a_case_insensitive_copy(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    linux.write("Report.xlsx", b"report v1")
    linux.write("Memo.txt", b"memo v1")
    linux.write("Lead/B-1 Cash.xlsx", b"cash")
    linux.sync()
    windows.sync()
    assert stored_names(windows.root) == ["Lead", "Memo.txt", "Report.xlsx"]

    os.rename(linux.root / "Report.xlsx", linux.root / "REPORT.xlsx")
    os.rename(linux.root / "Memo.txt", linux.root / "memo.txt")
    os.rename(linux.root / "Lead/B-1 Cash.xlsx", linux.root / "Lead/b-1 cash.XLSX")
    pushed = linux.sync()
    assert pushed["uploaded"] == 3 and pushed["deleted_remote"] == 3, pushed
    pulled = windows.sync()
    assert pulled["deleted_local"] == 0, f"a case-only rename deleted a file: {pulled}"
    assert stored_names(windows.root) == ["Lead", "REPORT.xlsx", "memo.txt"]
    assert stored_names(windows.root / "Lead") == ["b-1 cash.XLSX"]

    head = converge(linux, windows, url, tmp_path)
    assert head == {
        "REPORT.xlsx": b"report v1", "memo.txt": b"memo v1", "Lead/b-1 cash.XLSX": b"cash",
    }


def test_folder_case_rename_pulled_into_a_case_insensitive_copy(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    linux.write("Q1/tb.xlsx", b"trial balance")
    linux.write("Q1/Sub/notes.txt", b"notes")
    linux.write("Q1/Sub/Deep/x.bin", bytes(range(256)) * 300)
    linux.sync()
    windows.sync()

    os.rename(linux.root / "Q1", linux.root / "q1")
    pushed = linux.sync()  # every file of the folder, re-spelled, in one commit
    assert pushed["uploaded"] == 3 and pushed["deleted_remote"] == 3, pushed
    pulled = windows.sync()
    assert pulled["deleted_local"] == 0, pulled
    assert stored_names(windows.root) == ["q1"]
    assert stored_names(windows.root / "q1") == ["Sub", "tb.xlsx"]

    head = converge(linux, windows, url, tmp_path)
    assert sorted(head) == ["q1/Sub/Deep/x.bin", "q1/Sub/notes.txt", "q1/tb.xlsx"]
    assert head["q1/Sub/Deep/x.bin"] == bytes(range(256)) * 300


# ---------------------------------------------------------------- renames made on Windows/macOS


def test_case_renames_made_on_the_case_insensitive_copy(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    windows.write("Report.xlsx", b"report")
    windows.write("Q1/a.txt", b"a")
    windows.write("Q1/Sub/b.txt", b"b")
    windows.sync()
    linux.sync()

    os.rename(windows.root / "Report.xlsx", windows.root / "REPORT.xlsx")  # Explorer, Finder
    os.rename(windows.root / "Q1", windows.root / "q1")
    pushed = windows.sync()
    assert pushed["uploaded"] == 3 and pushed["deleted_remote"] == 3, pushed
    linux.sync()
    assert sorted(linux.files()) == ["REPORT.xlsx", "q1/Sub/b.txt", "q1/a.txt"]
    assert not (linux.root / "Q1").exists(), "the old folder spelling was left on Linux"

    head = converge(linux, windows, url, tmp_path)
    assert head == {"REPORT.xlsx": b"report", "q1/a.txt": b"a", "q1/Sub/b.txt": b"b"}


# ---------------------------------------------------------------- edits racing the renames


def test_unuploaded_edit_on_the_case_insensitive_copy_while_linux_renames(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    linux.write("a.txt", b"v1")
    linux.sync()
    windows.sync()

    os.rename(linux.root / "a.txt", linux.root / "A.TXT")
    linux.sync()
    windows.write("a.txt", b"bob's edit, not uploaded")  # opens a.txt: the same file there
    windows.sync(conflicts_ok=True)

    head = converge(linux, windows, url, tmp_path)
    # the rename applies; bob's edit is kept beside it as a conflict copy
    assert shape(head) == {"A.TXT": b"v1", "A (conflict bob *).TXT": b"bob's edit, not uploaded"}


def test_unuploaded_edit_on_linux_while_the_case_insensitive_copy_renames(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    linux.write("Memo.txt", b"v1")
    linux.sync()
    windows.sync()

    os.rename(windows.root / "Memo.txt", windows.root / "memo.txt")
    windows.sync()
    linux.write("Memo.txt", b"alice's edit, not uploaded")
    linux.sync(conflicts_ok=True)

    head = converge(linux, windows, url, tmp_path)
    assert shape(head) == {
        "memo.txt": b"v1", "memo (conflict alice *).txt": b"alice's edit, not uploaded",
    }


def test_edit_inside_a_folder_another_copy_renames_in_case(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    linux, windows, url = pair
    linux.write("Q1/x.txt", b"x v1")
    linux.write("Q1/y.txt", b"y v1")
    linux.sync()
    windows.sync()

    windows.write("Q1/x.txt", b"bob's edit of x")  # not uploaded yet
    os.rename(linux.root / "Q1", linux.root / "q1")
    linux.sync()
    windows.sync(conflicts_ok=True)

    head = converge(linux, windows, url, tmp_path)
    assert shape(head) == {
        "q1/x.txt": b"x v1", "q1/x (conflict bob *).txt": b"bob's edit of x", "q1/y.txt": b"y v1",
    }


def test_folder_renamed_in_case_after_an_edit_reached_the_server(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    # Alice renames Q1 to q1 on Linux after Bob's edit of Q1/x.txt reached the server: her
    # delete of Q1/x.txt is stale, so Q1 keeps a live file and the server refuses the
    # re-spelling (one spelling per folder) rather than splitting the folder in two. Her copy
    # holds the rename back and says so; nothing is lost, nothing is deleted anywhere.
    linux, windows, url = pair
    linux.write("Q1/x.txt", b"x v1")
    linux.write("Q1/y.txt", b"y v1")
    linux.sync()
    windows.sync()
    windows.write("Q1/x.txt", b"bob's edit of x")
    windows.sync()
    os.rename(linux.root / "Q1", linux.root / "q1")

    for _round in range(2):
        done = linux.client.run("--json", "sync", str(linux.root))
        assert done.returncode == 6, done.stderr  # finished, the rename held back (partial)
        report = json.loads(done.stdout)
        assert report["deleted_remote"] == 0 and report["uploaded"] == 0, report
        held = {item["path"] for item in report["skipped"]}
        assert held == {"q1/x.txt", "q1/y.txt"}, report
        windows.sync()
    assert linux.files() == {
        "Q1/x.txt": b"bob's edit of x", "q1/x.txt": b"x v1", "q1/y.txt": b"y v1",
    }
    fresh = tmp_path / "fresh"
    linux.client.run("clone", url, str(fresh)).check_returncode()
    assert copy_files(fresh) == windows.files() == {
        "Q1/x.txt": b"bob's edit of x", "Q1/y.txt": b"y v1",
    }


def test_folder_renamed_in_case_on_the_case_insensitive_copy_after_an_edit(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    # the same race the other way: Bob renames Q1 to q1 in Explorer after Alice's edit of
    # Q1/x.txt reached the server. The server refuses the re-spelling; Bob's pull brings the
    # edit into the folder, which takes the server's spelling again: nothing lost, one folder
    linux, windows, url = pair
    linux.write("Q1/x.txt", b"x v1")
    linux.write("Q1/y.txt", b"y v1")
    linux.sync()
    windows.sync()
    linux.write("Q1/x.txt", b"alice's edit of x")
    linux.sync()
    os.rename(windows.root / "Q1", windows.root / "q1")

    done = windows.client.run("--json", "sync", str(windows.root))
    assert done.returncode == 6, done.stderr  # finished; the refused re-spelling is reported
    assert json.loads(done.stdout)["deleted_remote"] == 0, done.stdout
    head = converge(linux, windows, url, tmp_path)
    assert head == {"Q1/x.txt": b"alice's edit of x", "Q1/y.txt": b"y v1"}
    assert stored_names(windows.root) == ["Q1"]


def test_new_file_in_a_folder_renamed_in_case_elsewhere(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    # Found by the model on exFAT: a file written into the old spelling of a folder another
    # copy had renamed in case was refused as a folder clash on every sync, never sent.
    linux, windows, url = pair
    linux.write("Working papers/A-1 Lead.xlsx", b"lead")
    linux.sync()
    windows.sync()
    os.rename(linux.root / "Working papers", linux.root / "wORKING PAPERS")
    linux.sync()
    windows.write("Working papers/B-1 Cash.xlsx", b"cash")  # the stored spelling, as apps do
    sent = windows.sync()  # under the server's spelling at once, not skipped
    assert sent["uploaded"] == 1 and sent["deleted_remote"] == 0, sent
    assert stored_names(windows.root) == ["wORKING PAPERS"]
    head = converge(linux, windows, url, tmp_path)
    assert head == {
        "wORKING PAPERS/A-1 Lead.xlsx": b"lead", "wORKING PAPERS/B-1 Cash.xlsx": b"cash",
    }
