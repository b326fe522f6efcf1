"""The client's portable file-system primitives: Linux, macOS and Windows behind one face.

Every descriptor the client opens goes through ``open_fd``, which adds ``O_BINARY`` on Windows
(without it the C runtime translates newlines and stops reading at Ctrl-Z: a spreadsheet would be
hashed and written corrupted) and keeps it out of started programs. ``pread``/``pwrite`` fall
back to a seek on Windows, which has neither; ``sync_file`` asks macOS for ``F_FULLFSYNC``
(its ``fsync`` leaves data in the drive's cache); ``sync_folder`` is a no-op on Windows, where a
folder cannot be opened and NTFS journals the rename itself. ``lock_exclusive`` is
``flock`` on POSIX and filelock's ``LockFileEx`` on byte 0 on Windows. ``is_readonly``,
``set_readonly`` and ``set_mtime`` carry a file's date and read-only attribute (issue 16): the
write bits on POSIX, ``FILE_ATTRIBUTE_READONLY`` on Windows (which ``os.chmod`` and ``os.stat``
map to the write bits there). On Windows every path given here gets the extended-length
``\\\\?\\`` prefix (``native_path``, client/longpath.py) so paths over 260 characters work;
every wrapper of a path call here does the same (``replace``, ``rename``, ``unlink``,
``remove_folder``, ``make_folder(s)``, ``stat_path``, ``chmod``, ``list_names``, ``scandir``,
``open_binary``, ``read_bytes``/``read_text``, the ``exists``-style look-ups, ``real_path`` and
``disk_usage``), and the rest of the client makes no direct file call
(tests/unit/test_client_fs_calls.py). Each behaves on POSIX exactly as the call it stands for
(same flags, same errors); a ``dir_fd`` name is passed as is. All calls block: run them on a
thread. Direct ``os.open``/``os.pread``/``fcntl`` use in the client is refused by ruff
(banned-api), so new code cannot forget this.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    from os import _ScandirIterator

from smartsyncd.client.longpath import extended_length

# Windows: binary mode, not inherited by started programs. POSIX: close-on-exec.
OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_CLOEXEC", 0)


def native_path(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``path`` as the operating system should get it: on Windows the absolute, extended-length
    form (``\\\\?\\C:\\...``, no 260-character limit); elsewhere ``path`` unchanged."""
    if sys.platform == "win32":
        return extended_length(os.path.abspath(os.fspath(path)))
    return path


def replace(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *,
    dst_dir_fd: int | None = None,
) -> None:
    """``os.replace`` with long paths on Windows (``dst_dir_fd``: ``target`` is a name in
    that open folder, passed as is)."""
    destination = target if dst_dir_fd is not None else native_path(target)
    os.replace(native_path(source), destination, dst_dir_fd=dst_dir_fd)


def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.rename`` with long paths on Windows (which refuses an existing ``target``)."""
    os.rename(native_path(source), native_path(target))


def _at(path: str | os.PathLike[str], dir_fd: int | None) -> str | os.PathLike[str]:
    """A name inside the open folder ``dir_fd`` goes as is (POSIX only); a path gets
    ``native_path``."""
    return path if dir_fd is not None else native_path(path)


def unlink(
    path: str | os.PathLike[str], *, missing_ok: bool = False, dir_fd: int | None = None
) -> None:
    """``os.unlink`` with long paths on Windows."""
    try:
        os.unlink(_at(path, dir_fd), dir_fd=dir_fd)
    except FileNotFoundError:
        if not missing_ok:
            raise


def link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.link`` without following a link at ``source``, with long paths on Windows."""
    os.link(native_path(source), native_path(target), follow_symlinks=False)


def remove_folder(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
    """``os.rmdir`` (an empty folder, or a folder link or junction itself) with long paths on
    Windows."""
    os.rmdir(_at(path, dir_fd), dir_fd=dir_fd)


def make_folder(
    path: str | os.PathLike[str], mode: int = 0o777, *, exist_ok: bool = False,
    dir_fd: int | None = None,
) -> None:
    """``os.mkdir`` with long paths on Windows (``exist_ok``: a folder already there is fine;
    it needs a path, not a name in ``dir_fd``)."""
    try:
        os.mkdir(_at(path, dir_fd), mode, dir_fd=dir_fd)
    except FileExistsError:
        if not (exist_ok and dir_fd is None and os.path.isdir(native_path(path))):
            raise


def make_folders(
    path: str | os.PathLike[str], mode: int = 0o777, *, exist_ok: bool = False
) -> None:
    """``Path.mkdir(mode, parents=True)``: missing parents made too (with the default mode;
    ``mode`` applies to ``path`` itself), with long paths on Windows. Not ``os.makedirs``, which
    raises another error when a parent is a broken link."""
    Path(native_path(path)).mkdir(mode, parents=True, exist_ok=exist_ok)


def stat_path(
    path: str | os.PathLike[str], *, follow_symlinks: bool = True, dir_fd: int | None = None
) -> os.stat_result:
    """``os.stat`` with long paths on Windows."""
    return os.stat(_at(path, dir_fd), dir_fd=dir_fd, follow_symlinks=follow_symlinks)


def chmod(path: str | os.PathLike[str], mode: int) -> None:
    """``os.chmod`` with long paths on Windows (where it sets or clears the read-only
    attribute only)."""
    os.chmod(native_path(path), mode)


def list_names(path: str | os.PathLike[str]) -> list[str]:
    """``os.listdir``: the names in folder ``path``, with long paths on Windows."""
    return os.listdir(native_path(path))


def scandir(path: str | os.PathLike[str] | int) -> _ScandirIterator[str]:
    """``os.scandir`` of a folder path (long paths on Windows: each entry's ``path`` then
    carries the prefix too) or of an open folder descriptor (POSIX)."""
    if isinstance(path, int):
        return os.scandir(path)
    return os.scandir(native_path(path))


def open_binary(path: str | os.PathLike[str], mode: Literal["rb", "wb"] = "rb") -> BinaryIO:
    """The built-in ``open`` in binary mode (buffered, not inherited), with long paths on
    Windows."""
    return open(native_path(path), mode)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """``Path.read_bytes``: the whole file, with long paths on Windows."""
    with open(native_path(path), "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike[str], encoding: str) -> str:
    """``Path.read_text``: the whole file decoded (universal newlines, as ``Path.read_text``),
    with long paths on Windows."""
    with open(native_path(path), encoding=encoding) as f:
        return f.read()


def exists(path: str | os.PathLike[str]) -> bool:
    """``Path.exists`` (follows links; a missing path is False, a permission error raises)
    with long paths on Windows."""
    return Path(native_path(path)).exists()


def is_dir(path: str | os.PathLike[str]) -> bool:
    """``Path.is_dir`` (follows links; a missing path is False, a permission error raises)
    with long paths on Windows."""
    return Path(native_path(path)).is_dir()


def is_file(path: str | os.PathLike[str]) -> bool:
    """``Path.is_file`` (follows links; a missing path is False, a permission error raises)
    with long paths on Windows."""
    return Path(native_path(path)).is_file()


def lexists(path: str | os.PathLike[str]) -> bool:
    """``os.path.lexists`` (a link counts, even a broken one; False on any error) with long
    paths on Windows."""
    return os.path.lexists(native_path(path))


def real_path(path: str | os.PathLike[str]) -> str:
    """``os.path.realpath`` (links resolved) with long paths on Windows, where the result then
    keeps the ``\\\\?\\`` prefix."""
    return os.path.realpath(native_path(path))


def disk_usage(path: str | os.PathLike[str]) -> shutil._ntuple_diskusage:
    """``shutil.disk_usage`` of the volume holding ``path``, with long paths on Windows."""
    return shutil.disk_usage(native_path(path))


def open_fd(
    path: str | os.PathLike[str], flags: int, mode: int = 0o666, *, dir_fd: int | None = None
) -> int:
    """``os.open`` in binary mode and not inheritable, on every platform."""
    target = path if dir_fd is not None else native_path(path)
    return os.open(target, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)  # noqa: TID251


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of a small file (a settings or cache file)."""
    fd = open_fd(path, os.O_RDONLY)
    try:
        return pread(fd, limit, 0)
    finally:
        os.close(fd)


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    if sys.platform == "win32":
        return read_at_by_seek(fd, size, offset)
    return os.pread(fd, size, offset)  # noqa: TID251


def pwrite(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    if sys.platform == "win32":
        write_at_by_seek(fd, data, offset)
        return
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)  # noqa: TID251
        view = view[written:]
        offset += written


def read_at_by_seek(fd: int, size: int, offset: int) -> bytes:
    """``pread`` where there is none (moves the descriptor's position: one user per fd)."""
    os.lseek(fd, offset, os.SEEK_SET)
    parts: list[bytes] = []
    while size > 0:
        piece = os.read(fd, size)
        if not piece:
            break
        parts.append(piece)
        size -= len(piece)
    return b"".join(parts)


def write_at_by_seek(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` where there is none (moves the descriptor's position: one user per fd)."""
    os.lseek(fd, offset, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def sync_file(fd: int) -> None:
    """Flush a file's data to stable storage (``F_FULLFSYNC`` on macOS, where plain ``fsync``
    stops at the drive's cache)."""
    if sys.platform == "darwin":
        import fcntl  # noqa: TID251

        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass  # not supported by this volume (e.g. a network share): plain fsync below
    os.fsync(fd)  # noqa: TID251


def sync_folder(path: Path | str) -> None:
    """Make a rename or create inside ``path`` durable. POSIX: fsync the folder. Windows:
    nothing to do (folders cannot be opened; NTFS journals the change)."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)  # noqa: TID251
    try:
        sync_file(fd)
    finally:
        os.close(fd)


# flock's answers for "held elsewhere" (EACCES on some file systems), as filelock has them
_LOCK_HELD = frozenset({errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK})


def lock_exclusive(fd: int) -> bool:
    """Try to take an exclusive lock on ``fd`` without waiting; False when another open file
    description holds it. Released when ``fd`` is closed (or the process dies). POSIX:
    ``flock`` itself (what filelock calls there; importing filelock 4 costs 15-40 ms of a
    sync's start, issue 15); Windows: filelock's ``LockFileEx`` on byte 0."""
    if sys.platform == "win32":
        import filelock

        return filelock.lock_descriptor(fd, blocking=False)
    import fcntl  # noqa: TID251

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _LOCK_HELD:
            return False
        raise
    return True


WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def is_readonly(st: os.stat_result) -> bool:
    """The read-only attribute as users see it: the owner may not write (POSIX), or
    ``FILE_ATTRIBUTE_READONLY`` (Windows, where ``os.stat`` then reports no write bit)."""
    return not st.st_mode & stat.S_IWUSR


def set_readonly(path: Path | str, readonly: bool) -> None:
    """Set or clear the read-only attribute. POSIX: remove every write bit, or give the owner
    one back (group and others keep what they had); Windows: ``os.chmod`` sets or clears
    ``FILE_ATTRIBUTE_READONLY`` only."""
    if sys.platform == "win32":
        os.chmod(native_path(path), stat.S_IREAD if readonly else stat.S_IREAD | stat.S_IWRITE)
        return
    mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
    wanted = mode & ~WRITE_BITS if readonly else mode | stat.S_IWUSR
    if wanted != mode:
        os.chmod(path, wanted)


def set_mtime(path: Path | str, mtime_ns: int) -> None:
    """Give ``path`` the modification time ``mtime_ns`` (nanoseconds since 1970 UTC), keeping
    its access time. The file system may round it (FAT: 2 s, exFAT: 10 ms, NTFS: 100 ns) or
    clamp it to what it can hold (FAT and exFAT start in 1980): callers read the stored value
    back with ``os.stat``."""
    atime_ns = stat_path(path).st_atime_ns
    os.utime(native_path(path), ns=(atime_ns, mtime_ns))
