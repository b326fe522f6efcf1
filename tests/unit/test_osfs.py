"""The client's portable file primitives (client/osfs.py) on real files.

The Windows and macOS branches are type-checked by tox (``mypy --platform win32/darwin``); the
seek-based fallbacks Windows takes are plain POSIX calls too, so they run here against real
files, beside the POSIX fast path they stand in for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smartsyncd.client import osfs


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.xlsx"
    path.write_bytes(b"line one\r\nline two\nctrl-z \x1a and on\r\n" * 3)
    return path


@pytest.mark.parametrize("read_at", [osfs.pread, osfs.read_at_by_seek])
def test_reads_at_an_offset_exactly_and_short_at_the_end(data_file: Path, read_at) -> None:
    blob = data_file.read_bytes()
    fd = osfs.open_fd(data_file, os.O_RDONLY)
    try:
        assert read_at(fd, 12, 5) == blob[5:17]
        assert read_at(fd, 1000, len(blob) - 4) == blob[-4:]
        assert read_at(fd, 10, len(blob) + 10) == b""
    finally:
        os.close(fd)


@pytest.mark.parametrize("write_at", [osfs.pwrite, osfs.write_at_by_seek])
def test_writes_all_bytes_at_an_offset(data_file: Path, write_at) -> None:
    before = data_file.read_bytes()
    fd = osfs.open_fd(data_file, os.O_RDWR)
    try:
        write_at(fd, b"\r\nXY\x1a", 3)
        write_at(fd, b"tail", len(before) + 2)  # past the end: the gap reads as zeros
    finally:
        os.close(fd)
    after = data_file.read_bytes()
    assert after[:3] == before[:3] and after[3:8] == b"\r\nXY\x1a"
    assert after[8 : len(before)] == before[8:]
    assert after[len(before) :] == b"\0\0tail"


def test_descriptors_are_not_inherited_by_started_programs(data_file: Path) -> None:
    fd = osfs.open_fd(data_file, os.O_RDONLY)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_folder_sync_accepts_a_folder_and_refuses_a_missing_one(tmp_path: Path) -> None:
    osfs.sync_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        osfs.sync_folder(tmp_path / "gone")


def test_lock_is_exclusive_across_open_file_descriptions(data_file: Path) -> None:
    first = osfs.open_fd(data_file, os.O_RDWR)
    second = osfs.open_fd(data_file, os.O_RDWR)
    try:
        assert osfs.lock_exclusive(first)
        assert not osfs.lock_exclusive(second)
        os.close(first)
        first = -1
        assert osfs.lock_exclusive(second)  # closing the holder's descriptor dropped it
    finally:
        if first >= 0:
            os.close(first)
        os.close(second)


def test_path_wrappers_act_on_real_files_and_leave_paths_alone_off_windows(tmp_path: Path) -> None:
    """Off Windows ``native_path`` is the identity (no ``\\\\?\\`` prefix reaches POSIX); the
    wrappers then do exactly what the ``os`` calls they replace do."""
    folder = tmp_path / "Acme"
    assert osfs.native_path(folder) is folder
    osfs.make_folder(folder)
    first = folder / "a.txt"
    first.write_bytes(b"one")
    osfs.rename(first, folder / "b.txt")
    (folder / "c.txt").write_bytes(b"three")
    osfs.replace(folder / "c.txt", folder / "b.txt")
    assert osfs.stat_path(folder / "b.txt").st_size == 5
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    osfs.unlink(folder / "b.txt")
    osfs.unlink(folder / "b.txt", missing_ok=True)
    with pytest.raises(FileNotFoundError):
        osfs.unlink(folder / "b.txt")


def test_make_folder_exist_ok_accepts_a_folder_but_never_a_file(tmp_path: Path) -> None:
    osfs.make_folder(tmp_path / "Lead", exist_ok=True)
    osfs.make_folder(tmp_path / "Lead", exist_ok=True)
    with pytest.raises(FileExistsError):
        osfs.make_folder(tmp_path / "Lead")
    (tmp_path / "memo.txt").write_bytes(b"m")
    with pytest.raises(FileExistsError):
        osfs.make_folder(tmp_path / "memo.txt", exist_ok=True)


def test_make_folders_creates_missing_parents_and_refuses_an_existing_folder(
    tmp_path: Path,
) -> None:
    """``make_folders`` (used for the state folder and export targets) creates the whole chain,
    and without ``exist_ok`` refuses a folder already there, as ``Path.mkdir(parents=True)``."""
    deep = tmp_path / "a" / "b" / ".smartsync"
    osfs.make_folders(deep)
    assert deep.is_dir()
    with pytest.raises(FileExistsError):
        osfs.make_folders(deep)
    osfs.make_folders(deep, exist_ok=True)
