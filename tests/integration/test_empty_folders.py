"""Empty folders travel (issue 16), through the real daemon and the real ``smartsync`` CLI:
a template of empty folders reaches a fresh clone; an empty folder deleted, renamed or renamed in
case on one copy follows on the other; a folder deleted on one copy while another adds a file
inside keeps the file and its folder. ``fsck`` is clean after each test."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from reliability import add_engagements, add_users, copy_files, fsck
from test_case_insensitive import Copy, stored_names

pytestmark = pytest.mark.integration

_names = itertools.count(1)
TEMPLATE = ["Current/Fieldwork/B Cash", "Current/Planning", "Permanent/Legal", "Permanent/Tax"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("folders"))
    try:
        add_users(d, ["alice", "bob"])
        yield d
    finally:
        d.stop()


def folders(root: Path) -> set[str]:
    """Every folder of a copy (not ``.smartsync``)."""
    out: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root):
        if Path(dirpath) == root and ".smartsync" in dirnames:
            dirnames.remove(".smartsync")
        out.update((Path(dirpath) / d).relative_to(root).as_posix() for d in dirnames)
    return out


def engagement(server: Daemon) -> str:
    name = f"folders-{next(_names)}"
    add_engagements(server, [name], {"alice": "editor", "bob": "editor"})
    return name


@pytest.fixture
def pair(server: Daemon, tmp_path: Path) -> Iterator[tuple[Copy, Copy, str]]:
    """(alice's copy, bob's copy, the engagement's URL), both cloned empty, both on ext4."""
    url = f"{server.url}/{engagement(server)}"
    alice = Copy(server, "alice", tmp_path / "alice", tmp_path / "alice-copy")
    bob = Copy(server, "bob", tmp_path / "bob", tmp_path / "bob-copy")
    alice.clone(url)
    bob.clone(url)
    yield alice, bob, url
    fsck(server)  # fails unless clean


def fresh_clone(side: Copy, url: str, tmp_path: Path) -> Path:
    target = tmp_path / f"fresh-{next(_names)}"
    side.client.run("clone", url, str(target)).check_returncode()
    return target


def test_a_template_of_empty_folders_reaches_every_copy_and_a_fresh_clone(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    alice, bob, url = pair
    for path in TEMPLATE:
        (alice.root / path).mkdir(parents=True)
    pushed = alice.sync()
    assert pushed["uploaded"] == len(TEMPLATE), pushed  # the leaves; their parents are implied
    bob.sync()
    expected = set(TEMPLATE) | {"Current", "Current/Fieldwork", "Permanent"}
    assert folders(bob.root) == expected
    assert folders(fresh_clone(bob, url, tmp_path)) == expected
    for side in (alice, bob):
        assert side.status()["clean"]
    again = alice.sync()  # nothing left to send, nothing comes back
    assert again["uploaded"] == 0 and again["downloaded"] == 0, again


def test_an_empty_folder_deleted_on_one_copy_disappears_on_the_other(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    alice, bob, url = pair
    (alice.root / "Tax/2025").mkdir(parents=True)
    (alice.root / "Legal").mkdir()
    alice.sync()
    bob.sync()
    assert folders(bob.root) == {"Tax", "Tax/2025", "Legal"}
    at = datetime.now(UTC)
    os.rmdir(bob.root / "Legal")
    os.rmdir(bob.root / "Tax/2025")  # Tax is left empty: it stays, now as its own entry
    report = bob.sync()
    assert report["deleted_remote"] == 2 and report["uploaded"] == 1, report
    alice.sync()
    assert folders(alice.root) == {"Tax"}
    assert folders(fresh_clone(alice, url, tmp_path)) == {"Tax"}
    # an export at a moment before the deletes has them, as empty folders
    out = tmp_path / "export"
    done = alice.client.run("--json", "export", url, "--at", at.isoformat(), str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["folders"] == 2
    assert folders(out) == {"Tax", "Tax/2025", "Legal"}


def test_a_folder_deleted_while_another_copy_adds_a_file_inside_keeps_the_file(
    pair: tuple[Copy, Copy, str], tmp_path: Path
) -> None:
    alice, bob, url = pair
    (alice.root / "Tax").mkdir()
    (alice.root / "Legal").mkdir()
    alice.sync()
    bob.sync()
    # bob adds a file in Tax and syncs first; alice, who has not seen it, deletes Tax
    bob.write("Tax/return.pdf", b"the return")
    os.rmdir(alice.root / "Tax")
    bob.sync()
    # and the other order: alice deletes Legal first, bob (not knowing) adds a file in it
    os.rmdir(alice.root / "Legal")
    bob.write("Legal/contract.pdf", b"the contract")
    alice.sync()
    bob.sync()
    alice.sync()
    for side in (alice, bob):
        assert side.files() == {"Tax/return.pdf": b"the return", "Legal/contract.pdf": b"the contract"}
        assert folders(side.root) == {"Tax", "Legal"}
    assert copy_files(fresh_clone(alice, url, tmp_path)) == alice.files()


def test_renaming_an_empty_folder(pair: tuple[Copy, Copy, str], tmp_path: Path) -> None:
    alice, bob, url = pair
    (alice.root / "Drafts/Old").mkdir(parents=True)
    alice.sync()
    bob.sync()
    os.rename(bob.root / "Drafts", bob.root / "Archive")
    bob.sync()
    alice.sync()
    assert folders(alice.root) == {"Archive", "Archive/Old"}
    assert folders(fresh_clone(alice, url, tmp_path)) == {"Archive", "Archive/Old"}


def test_case_only_rename_of_an_empty_folder_reaches_a_case_insensitive_copy(
    server: Daemon, tmp_path: Path, exfat_dir: Path
) -> None:
    url = f"{server.url}/{engagement(server)}"
    linux = Copy(server, "alice", tmp_path / "alice", tmp_path / "linux-copy")
    windows = Copy(server, "bob", tmp_path / "bob", exfat_dir / "windows-copy")
    linux.clone(url)
    windows.clone(url)
    (linux.root / "Lead").mkdir()
    linux.sync()
    windows.sync()
    assert stored_names(windows.root) == ["Lead"]
    os.rename(linux.root / "Lead", linux.root / "LEAD")
    linux.sync()
    pulled = windows.sync()
    assert stored_names(windows.root) == ["LEAD"], pulled
    # and back, renamed on the case-insensitive copy
    os.rename(windows.root / "LEAD", windows.root / "lead")
    windows.sync()
    linux.sync()
    assert folders(linux.root) == {"lead"}
    assert folders(fresh_clone(linux, url, tmp_path)) == {"lead"}
    fsck(server)
