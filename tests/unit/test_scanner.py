"""The folder scanner: stat cache (a no-op scan opens no file), chunking, skipped names,
incomplete scans."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from smartsyncd.client.scanner import FileChanging, Scanner
from smartsyncd.client.state import FileRecord
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.manifest import make_manifest


class CountingOpen:
    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, path: str) -> BinaryIO:
        self.opened.append(path)
        return open(path, "rb")


def records_from(scan_entries: dict) -> dict[str, FileRecord]:
    return {
        p: FileRecord(path=p, seq=1, content=e.content, size=e.size, mtime_ns=e.mtime_ns,
                      inode=e.inode, chunks=e.chunks)
        for p, e in scan_entries.items()
    }


def test_noop_scan_of_2000_files_opens_no_file(tmp_path: Path) -> None:
    for i in range(2000):
        folder = tmp_path / f"d{i % 20}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(f"file {i}\n".encode())
    first_opens = CountingOpen()
    first = Scanner(tmp_path, open_file=first_opens).scan({})
    assert len(first.entries) == 2000 and first.complete
    assert len(first_opens.opened) == 2000  # every new file is read once

    base = records_from(first.entries)
    opens = CountingOpen()
    again = Scanner(tmp_path, open_file=opens).scan(base)
    assert opens.opened == []
    assert again.changed == []
    assert {p: e.content for p, e in again.entries.items()} == {p: r.content for p, r in base.items()}


def test_changed_file_is_rehashed_and_matches_core_chunking(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "big.bin").write_bytes(data)
    first = Scanner(tmp_path).scan({})
    expected = make_manifest([ref for ref, _ in chunk_buffer(data)])
    entry = first.entries["big.bin"]
    assert (entry.content, entry.size, entry.chunks) == (expected.content, 300_000, expected.chunks)

    base = records_from(first.entries)
    (tmp_path / "big.bin").write_bytes(data[:-1] + b"X")
    # same size and inode: only the mtime tells (set it apart explicitly; a coarse clock could
    # give the same value, which the engine's racy-mtime rule covers)
    st = (tmp_path / "big.bin").stat()
    os.utime(tmp_path / "big.bin", ns=(st.st_atime_ns, entry.mtime_ns + 1_000_000))
    opens = CountingOpen()
    second = Scanner(tmp_path, open_file=opens).scan(base)
    assert second.changed == ["big.bin"]
    assert second.entries["big.bin"].content != entry.content
    assert len(opens.opened) == 1


def test_empty_file_has_zero_chunks(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    entry = Scanner(tmp_path).scan({}).entries["empty"]
    assert entry.size == 0 and entry.chunks == () and entry.content == make_manifest([]).content


def test_state_dir_temp_files_bad_names_and_symlinks_are_not_synced(tmp_path: Path) -> None:
    (tmp_path / ".smartsync").mkdir()
    (tmp_path / ".smartsync" / "state.sqlite3").write_bytes(b"x")
    (tmp_path / ".~smartsync-123.tmp").write_bytes(b"partial")
    (tmp_path / "ok.txt").write_bytes(b"ok")
    (tmp_path / "bad:name.txt").write_bytes(b"x")
    (tmp_path / "trailing.").write_bytes(b"x")
    (tmp_path / "CON.txt").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "ok.txt")
    result = Scanner(tmp_path).scan({})
    assert set(result.entries) == {"ok.txt"}
    skipped = dict(result.skipped)
    assert set(skipped) == {"bad:name.txt", "trailing.", "CON.txt", "link"}
    assert all(reason for reason in skipped.values())
    assert result.complete


def test_case_twins_keep_the_synced_name(tmp_path: Path) -> None:
    (tmp_path / "Report.txt").write_bytes(b"a")
    (tmp_path / "report.txt").write_bytes(b"b")
    first = Scanner(tmp_path).scan({})
    assert len(first.entries) == 1 and len(first.skipped) == 1
    base = records_from({"report.txt": Scanner(tmp_path).check("report.txt", None)})
    second = Scanner(tmp_path).scan(base)
    assert set(second.entries) == {"report.txt"}
    assert [p for p, _ in second.skipped] == ["Report.txt"]


def test_unreadable_folder_makes_the_scan_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests run as root, where chmod 000 does not stop reading: inject the error instead
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "inside.txt").write_bytes(b"x")
    (tmp_path / "a.txt").write_bytes(b"a")
    real_scandir = os.scandir

    def failing_scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    result = Scanner(tmp_path).scan({})
    assert not result.complete
    assert set(result.entries) == {"a.txt"}
    assert result.errors and result.errors[0][0] == "locked/"


class AppendingFile(io.FileIO):
    """A file that someone appends to while we read it (the first read triggers a write)."""

    def readinto(self, buffer):  # type: ignore[no-untyped-def, override]
        if not getattr(self, "_appended", False):
            self._appended = True
            with open(self.name, "ab") as w:
                w.write(b"more")
        return super().readinto(buffer)


def test_file_changing_while_read_is_rescanned_then_skipped(tmp_path: Path) -> None:
    target = tmp_path / "growing.log"
    target.write_bytes(b"x" * 10_000)
    opened: list[str] = []

    def always_appending(path: str) -> BinaryIO:
        opened.append(path)
        return AppendingFile(path, "rb")  # type: ignore[return-value]

    result = Scanner(tmp_path, open_file=always_appending).scan({})
    assert len(opened) == 2  # read, noticed the change, read again
    assert "growing.log" not in result.entries
    assert [p for p, _ in result.skipped] == ["growing.log"]


def test_file_changed_once_while_read_gets_its_final_content(tmp_path: Path) -> None:
    target = tmp_path / "saved.doc"
    target.write_bytes(b"x" * 10_000)
    opened: list[str] = []

    def append_once(path: str) -> BinaryIO:
        opened.append(path)
        return AppendingFile(path, "rb") if len(opened) == 1 else open(path, "rb")  # type: ignore[return-value]

    result = Scanner(tmp_path, open_file=append_once).scan({})
    expected = make_manifest([ref for ref, _ in chunk_buffer(b"x" * 10_000 + b"more")])
    assert result.entries["saved.doc"].content == expected.content
    assert len(opened) == 2


def test_signature_changes_only_on_change(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    scanner = Scanner(tmp_path)
    first = scanner.signature()
    assert scanner.signature() == first
    (tmp_path / "b").write_bytes(b"2")
    assert scanner.signature() != first


def test_ignored_files_and_folders_are_listed_not_read(tmp_path: Path) -> None:
    (tmp_path / ".smartsyncignore").write_text("drafts/\n*.bak\n[z-a]\n")
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "big.xlsx").write_bytes(b"x" * 10)
    (tmp_path / "~$Ledger.xlsx").write_bytes(b"owner")
    (tmp_path / "Ledger.xlsx").write_bytes(b"ledger")
    (tmp_path / "old.bak").write_bytes(b"old")
    opened: list[str] = []

    def counting(path: str):
        opened.append(path)
        return open(path, "rb")

    result = Scanner(tmp_path, open_file=counting).scan({})
    assert sorted(result.entries) == [".smartsyncignore", "Ledger.xlsx"]
    assert sorted(result.ignored) == ["drafts/", "old.bak", "~$Ledger.xlsx"]
    assert result.complete  # ignoring is not "could not see": deletes elsewhere still plan
    assert (".smartsyncignore", "line 3: not a valid pattern: bad character range z-a at "
            "position 10") in [(p, w) for p, w in result.errors]
    assert not [p for p in opened if "drafts" in p or p.endswith((".bak", "~$Ledger.xlsx"))]
    assert result.rules.ignores("drafts/big.xlsx")


def test_an_oversized_ignore_file_is_reported_and_defaults_still_apply(tmp_path: Path) -> None:
    (tmp_path / ".smartsyncignore").write_bytes(b"#" * (64 * 1024 + 1))
    (tmp_path / "Thumbs.db").write_bytes(b"t")
    result = Scanner(tmp_path).scan({})
    assert result.ignored == ["Thumbs.db"]
    assert [p for p, _ in result.errors] == [".smartsyncignore"]


def test_a_file_another_program_holds_is_reported_kept_and_read_next_time(
    tmp_path: Path,
) -> None:
    """Windows refuses to open a file Excel holds (a sharing violation); here an opener
    refusing one path stands in for it. The synced file is not read as deleted, the scan stays
    complete (deletes elsewhere still plan), and its edit is seen once it can be read."""
    (tmp_path / "Ledger.xlsx").write_bytes(b"v1" * 5_000)
    (tmp_path / "other.txt").write_bytes(b"other")
    first = Scanner(tmp_path).scan({})
    base = records_from(first.entries)
    (tmp_path / "Ledger.xlsx").write_bytes(b"v2, saved by Excel" * 1_000)

    def held_by_excel(path: str) -> BinaryIO:
        if path.endswith("Ledger.xlsx"):
            raise PermissionError(13, "The process cannot access the file because it is being "
                                      "used by another process")
        return open(path, "rb")

    held = Scanner(tmp_path, open_file=held_by_excel).scan(base)
    assert held.complete
    assert held.entries["Ledger.xlsx"].content == base["Ledger.xlsx"].content
    assert held.entries["Ledger.xlsx"].mtime_ns == base["Ledger.xlsx"].mtime_ns  # synced stat
    assert [p for p, _ in held.errors] == ["Ledger.xlsx"]
    assert "retried next sync" in held.errors[0][1]

    later = Scanner(tmp_path).scan(base)
    assert later.entries["Ledger.xlsx"].hashed
    assert later.entries["Ledger.xlsx"].content != base["Ledger.xlsx"].content


def test_file_deleted_between_the_stat_and_the_read_is_absent(tmp_path: Path) -> None:
    # check() stats, then opens: a file deleted in between is gone (issue 16: a sync failed
    # with FileNotFoundError on a case variant on exFAT), not an error that stops the sync
    (tmp_path / "memo.txt").write_bytes(b"v1")

    def deleted_meanwhile(path: str) -> BinaryIO:
        os.unlink(path)
        return open(path, "rb")

    assert Scanner(tmp_path, open_file=deleted_meanwhile).check("memo.txt", None) is None


def test_file_the_stat_still_sees_but_cannot_be_opened_is_changing(tmp_path: Path) -> None:
    # a name that stats but does not open (a stale cached spelling on a case-insensitive
    # FUSE mount) is never read as a deletion: it is treated as a file being changed
    (tmp_path / "memo.txt").write_bytes(b"v1")

    def vanishing(path: str) -> BinaryIO:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(FileChanging):
        Scanner(tmp_path, open_file=vanishing).check("memo.txt", None)
