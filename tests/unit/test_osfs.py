"""The client's portable file primitives (client/osfs.py) on real files.

The Windows and macOS branches are type-checked by tox (``mypy --platform win32/darwin``); the
seek-based fallbacks Windows takes are plain POSIX calls too, so they run here against real
files, beside the POSIX fast path they stand in for."""

from __future__ import annotations

import ntpath
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


def test_the_copy_lock_and_filelocks_exclude_each_other(tmp_path: Path) -> None:
    """``lock_exclusive`` calls ``flock`` itself on POSIX (filelock's import is slow): a
    holder through filelock's descriptor lock (as a client of an earlier release takes it)
    still excludes it, and the other way round."""
    import filelock

    data_file = tmp_path / "lock"
    data_file.write_bytes(b"")
    first = osfs.open_fd(data_file, os.O_RDWR)
    second = osfs.open_fd(data_file, os.O_RDWR)
    try:
        assert filelock.lock_descriptor(first, blocking=False)
        assert not osfs.lock_exclusive(second)
        filelock.unlock_descriptor(first)
        assert osfs.lock_exclusive(second)
        assert not filelock.lock_descriptor(first, blocking=False)
    finally:
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


# -- the wrappers the client's modules route their file calls through (issue 16) ---------------


def test_folder_and_listing_wrappers_act_on_real_folders(tmp_path: Path) -> None:
    """``remove_folder``, ``list_names``, ``scandir`` (by path and by descriptor),
    ``make_folders`` with a mode, ``chmod`` and the look-ups, on real files."""
    folder = tmp_path / "Acme" / "Lead"
    osfs.make_folders(folder, 0o700)
    assert (folder.stat().st_mode & 0o777) == 0o700 & ~_umask()
    osfs.chmod(folder, 0o750)
    assert folder.stat().st_mode & 0o777 == 0o750
    (folder / "b.txt").write_bytes(b"b")
    (folder / "a.txt").write_bytes(b"a")
    assert sorted(osfs.list_names(folder)) == ["a.txt", "b.txt"]
    with osfs.scandir(folder) as it:
        assert sorted((e.name, e.path) for e in it) == [
            ("a.txt", str(folder / "a.txt")), ("b.txt", str(folder / "b.txt"))]
    fd = osfs.open_fd(folder, os.O_RDONLY)
    try:
        with osfs.scandir(fd) as it:
            assert sorted(e.name for e in it) == ["a.txt", "b.txt"]
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # not empty: refused, as os.rmdir
        osfs.remove_folder(folder)
    osfs.unlink(folder / "a.txt")
    osfs.unlink(folder / "b.txt")
    osfs.remove_folder(folder)
    assert osfs.list_names(tmp_path / "Acme") == []
    with pytest.raises(FileNotFoundError):
        osfs.remove_folder(folder)
    with pytest.raises(FileNotFoundError):
        osfs.list_names(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_make_folders_with_a_mode_matches_path_mkdir(tmp_path: Path) -> None:
    """The settings folder was ``Path.mkdir(mode=0o700, parents=True, exist_ok=True)``: the
    same modes on the folder and on the parents it made, and the same answer when it exists."""
    by_path = tmp_path / "p" / "q" / "smartsync"
    by_osfs = tmp_path / "o" / "q" / "smartsync"
    by_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    osfs.make_folders(by_osfs, 0o700, exist_ok=True)
    for a, b in [(by_path, by_osfs), (by_path.parent, by_osfs.parent)]:
        assert a.stat().st_mode == b.stat().st_mode
    osfs.make_folders(by_osfs, 0o700, exist_ok=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        osfs.make_folders(tmp_path / "file", exist_ok=True)
    os.symlink(tmp_path / "gone", tmp_path / "broken")  # os.makedirs: FileNotFoundError here
    for exist_ok in (False, True):
        with pytest.raises(FileExistsError):
            (tmp_path / "broken" / "a").mkdir(parents=True, exist_ok=exist_ok)
        with pytest.raises(FileExistsError):
            osfs.make_folders(tmp_path / "broken" / "a", exist_ok=exist_ok)


def test_descriptor_relative_wrappers_pass_names_as_they_are(tmp_path: Path) -> None:
    """With ``dir_fd`` (nofollow.py and wipe.py, POSIX), a name inside the open folder is used
    as given: ``make_folder``, ``stat_path``, ``unlink``, ``remove_folder`` and ``replace``."""
    (tmp_path / "temp").write_bytes(b"new")
    fd = osfs.open_fd(tmp_path, os.O_RDONLY)
    try:
        osfs.make_folder("Lead", 0o777, dir_fd=fd)
        with pytest.raises(FileExistsError):
            osfs.make_folder("Lead", 0o777, dir_fd=fd)
        assert osfs.stat_path("Lead", dir_fd=fd, follow_symlinks=False).st_ino == (
            tmp_path / "Lead").stat().st_ino
        os.symlink("Lead", tmp_path / "link")
        link_stat = osfs.stat_path("link", dir_fd=fd, follow_symlinks=False)
        assert link_stat.st_ino == (tmp_path / "link").lstat().st_ino
        osfs.unlink("link", dir_fd=fd)
        osfs.unlink("link", dir_fd=fd, missing_ok=True)
        with pytest.raises(FileNotFoundError):
            osfs.unlink("link", dir_fd=fd)
        lead = osfs.open_fd(tmp_path / "Lead", os.O_RDONLY)
        try:
            osfs.replace(tmp_path / "temp", "memo.txt", dst_dir_fd=lead)
        finally:
            os.close(lead)
        assert (tmp_path / "Lead" / "memo.txt").read_bytes() == b"new"
        assert not (tmp_path / "temp").exists()
        with pytest.raises(OSError):
            osfs.remove_folder("Lead", dir_fd=fd)
        (tmp_path / "Lead" / "memo.txt").unlink()
        osfs.remove_folder("Lead", dir_fd=fd)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_read_wrappers_return_what_path_reads(tmp_path: Path) -> None:
    """``read_bytes`` is byte-exact; ``read_text`` translates line ends as ``Path.read_text``
    does; ``open_binary`` reads and writes bytes untouched."""
    path = tmp_path / "copy.json"
    path.write_bytes(b'{"a": "caf\xc3\xa9"}\r\nline\rend\x1a\n')
    assert osfs.read_bytes(path) == path.read_bytes()
    assert osfs.read_text(path, "utf-8") == path.read_text("utf-8")
    assert "\r" not in osfs.read_text(path, "utf-8")
    with osfs.open_binary(tmp_path / "out.bin", "wb") as f:
        f.write(b"\r\n\x1a\x00")
    with osfs.open_binary(tmp_path / "out.bin") as f:
        assert f.read() == b"\r\n\x1a\x00"
    with pytest.raises(FileNotFoundError):
        osfs.read_bytes(tmp_path / "gone")
    with pytest.raises(IsADirectoryError):
        osfs.read_text(tmp_path, "utf-8")


@pytest.fixture
def shapes(tmp_path: Path) -> dict[str, Path]:
    """A file, a folder, a missing path, a path through a file, a link to a folder and a
    broken link: the cases the look-ups answer differently."""
    (tmp_path / "file").write_bytes(b"f")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "folder", tmp_path / "folder-link")
    os.symlink(tmp_path / "gone", tmp_path / "broken-link")
    names = ["file", "folder", "missing", "file/inside", "folder-link", "broken-link"]
    return {name: tmp_path / name for name in names}


def test_lookups_answer_as_the_calls_they_replace(shapes: dict[str, Path]) -> None:
    for name, path in shapes.items():
        assert osfs.exists(path) == path.exists(), name
        assert osfs.is_dir(path) == path.is_dir(), name
        assert osfs.is_file(path) == path.is_file(), name
        assert osfs.lexists(path) == os.path.lexists(path), name
        assert osfs.real_path(path) == os.path.realpath(path), name
    assert osfs.lexists(shapes["broken-link"]) and not osfs.exists(shapes["broken-link"])


def test_disk_usage_reports_the_volume_of_a_folder(tmp_path: Path) -> None:
    assert osfs.disk_usage(tmp_path) == shutil.disk_usage(tmp_path)
    with pytest.raises(FileNotFoundError):
        osfs.disk_usage(tmp_path / "gone")


# -- Windows: every wrapper hands the OS the extended-length path --------------------------------

WIN_FOLDER = "C:\\Clients\\" + "\\".join(f"Engagement section {n:02d}" for n in range(14))
WIN_FILE = WIN_FOLDER + "\\ledger.xlsx"
WIN_OTHER = WIN_FOLDER + "\\..\\ledger (copy).xlsx"
LONG_FILE = "\\\\?\\" + WIN_FILE
LONG_OTHER = "\\\\?\\" + ntpath.normpath(WIN_OTHER)


class Reached(Exception):
    """The wrapper called the OS function: stop there (nothing real is touched)."""


@pytest.fixture
def on_windows(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, str], list[object]]:
    """``osfs`` as it runs on Windows (``sys.platform``, ``ntpath`` rules for ``abspath``);
    the returned function replaces one OS call with a recorder of the paths it is given."""
    monkeypatch.setattr(osfs, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(os.path, "abspath", ntpath.abspath)

    def record(owner: Any, name: str) -> list[object]:
        seen: list[object] = []

        def recorder(*args: object, **kwargs: object) -> object:
            seen.extend(os.fspath(a) if isinstance(a, os.PathLike) else a for a in args)
            raise Reached

        monkeypatch.setattr(owner, name, recorder, raising=False)
        return seen

    return record


WRAPPED: list[tuple[str, Callable[[], object], Any, str, list[object]]] = [
    ("replace", lambda: osfs.replace(WIN_FILE, WIN_OTHER), os, "replace", [LONG_FILE, LONG_OTHER]),
    ("rename", lambda: osfs.rename(WIN_FILE, WIN_OTHER), os, "rename", [LONG_FILE, LONG_OTHER]),
    ("unlink", lambda: osfs.unlink(WIN_FILE), os, "unlink", [LONG_FILE]),
    ("link", lambda: osfs.link(WIN_FILE, WIN_OTHER), os, "link", [LONG_FILE, LONG_OTHER]),
    ("remove_folder", lambda: osfs.remove_folder(WIN_FOLDER), os, "rmdir",
     ["\\\\?\\" + WIN_FOLDER]),
    ("make_folder", lambda: osfs.make_folder(WIN_FOLDER), os, "mkdir",
     ["\\\\?\\" + WIN_FOLDER, 0o777]),
    ("make_folders", lambda: osfs.make_folders(WIN_FOLDER, 0o700), os, "mkdir",
     ["\\\\?\\" + WIN_FOLDER, 0o700]),
    ("stat_path", lambda: osfs.stat_path(WIN_FILE), os, "stat", [LONG_FILE]),
    ("chmod", lambda: osfs.chmod(WIN_FILE, 0o444), os, "chmod", [LONG_FILE, 0o444]),
    ("list_names", lambda: osfs.list_names(WIN_FOLDER), os, "listdir",
     ["\\\\?\\" + WIN_FOLDER]),
    ("scandir", lambda: osfs.scandir(WIN_FOLDER), os, "scandir", ["\\\\?\\" + WIN_FOLDER]),
    ("open_binary", lambda: osfs.open_binary(WIN_FILE, "wb"), osfs, "open", [LONG_FILE, "wb"]),
    ("read_bytes", lambda: osfs.read_bytes(WIN_FILE), osfs, "open", [LONG_FILE, "rb"]),
    ("read_text", lambda: osfs.read_text(WIN_FILE, "utf-8"), osfs, "open", [LONG_FILE]),
    ("exists", lambda: osfs.exists(WIN_FILE), os, "stat", [LONG_FILE]),
    ("is_dir", lambda: osfs.is_dir(WIN_FILE), os, "stat", [LONG_FILE]),
    ("is_file", lambda: osfs.is_file(WIN_FILE), os, "stat", [LONG_FILE]),
    ("lexists", lambda: osfs.lexists(WIN_FILE), os.path, "lexists", [LONG_FILE]),
    ("real_path", lambda: osfs.real_path(WIN_FILE), os.path, "realpath", [LONG_FILE]),
    ("disk_usage", lambda: osfs.disk_usage(WIN_FOLDER), shutil, "disk_usage",
     ["\\\\?\\" + WIN_FOLDER]),
    ("open_fd", lambda: osfs.open_fd(WIN_FILE, os.O_RDONLY), os, "open",
     [LONG_FILE, os.O_RDONLY | osfs.OPEN_FLAGS, 0o666]),
    ("set_mtime", lambda: osfs.set_mtime(WIN_FILE, 0), os, "stat", [LONG_FILE]),
]


@pytest.mark.parametrize(
    ("call", "owner", "name", "expected"), [w[1:] for w in WRAPPED], ids=[w[0] for w in WRAPPED]
)
def test_on_windows_each_wrapper_gives_the_os_the_extended_length_path(
    on_windows: Callable[[Any, str], list[object]], call: Callable[[], object], owner: Any,
    name: str, expected: list[object],
) -> None:
    """A path over 260 characters reaches the OS call as ``\\\\?\\C:\\...`` (``..``
    resolved first), each argument that is a path, and only those."""
    assert len(WIN_FILE) > 260
    seen = on_windows(owner, name)
    with pytest.raises(Reached):
        call()
    assert seen == expected


def test_on_windows_a_path_from_a_prefixed_listing_is_passed_on_unchanged(
    on_windows: Callable[[Any, str], list[object]],
) -> None:
    """``scandir`` of a prefixed folder yields prefixed entry paths (wipe.py and copylock.py
    remove those): wrapping one again leaves it as it is."""
    seen = on_windows(os, "unlink")
    with pytest.raises(Reached):
        osfs.unlink(LONG_FILE)
    assert seen == [LONG_FILE]


def test_on_windows_a_name_in_an_open_folder_is_not_prefixed(
    on_windows: Callable[[Any, str], list[object]],
) -> None:
    """``dir_fd`` calls take a name relative to the folder, never a prefixed path."""
    seen = on_windows(os, "rmdir")
    with pytest.raises(Reached):
        osfs.remove_folder("Lead", dir_fd=3)
    assert seen == ["Lead"]
