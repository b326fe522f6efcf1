"""The client's portable file-system primitives: Linux, macOS and Windows behind one face.

Every descriptor the client opens goes through ``open_fd``, which adds ``O_BINARY`` on Windows
(without it the C runtime translates newlines and stops reading at Ctrl-Z: a spreadsheet would be
hashed and written corrupted) and keeps it out of started programs. ``pread``/``pwrite`` fall
back to a seek on Windows, which has neither; ``sync_file`` asks macOS for ``F_FULLFSYNC``
(its ``fsync`` leaves data in the drive's cache); ``sync_folder`` is a no-op on Windows, where a
folder cannot be opened and NTFS journals the rename itself. ``lock_exclusive`` is filelock's
descriptor lock: ``flock`` on POSIX, ``LockFileEx`` on byte 0 on Windows. ``is_readonly``,
``set_readonly`` and ``set_mtime`` carry a file's date and read-only attribute (issue 16): the
write bits on POSIX, ``FILE_ATTRIBUTE_READONLY`` on Windows (which ``os.chmod`` and ``os.stat``
map to the write bits there). On Windows every path given here gets the extended-length
``\\\\?\\`` prefix (``native_path``, client/longpath.py) so paths over 260 characters work;
the ``replace``, ``rename``, ``unlink``, ``make_folder`` and ``stat_path`` wrappers do the same
for those calls. All calls block: run them on a thread. Direct ``os.open``/``os.pread``/``fcntl``
use in the client is refused by ruff (banned-api), so new code cannot forget this.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import filelock

from smartsyncd.client.longpath import extended_length

# Windows: binary mode, not inherited by started programs. POSIX: close-on-exec.
OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_CLOEXEC", 0)


def native_path(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``path`` as the operating system should get it: on Windows the absolute, extended-length
    form (``\\\\?\\C:\\...``, no 260-character limit); elsewhere ``path`` unchanged."""
    if sys.platform == "win32":
        return extended_length(os.path.abspath(os.fspath(path)))
    return path


def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace`` with long paths on Windows."""
    os.replace(native_path(source), native_path(target))


def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.rename`` with long paths on Windows (which refuses an existing ``target``)."""
    os.rename(native_path(source), native_path(target))


def unlink(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """``os.unlink`` with long paths on Windows."""
    try:
        os.unlink(native_path(path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def make_folder(
    path: str | os.PathLike[str], mode: int = 0o777, *, exist_ok: bool = False
) -> None:
    """``os.mkdir`` with long paths on Windows (``exist_ok``: a folder already there is fine)."""
    try:
        os.mkdir(native_path(path), mode)
    except FileExistsError:
        if not (exist_ok and os.path.isdir(native_path(path))):
            raise


def make_folders(path: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
    """``os.makedirs`` (missing parents too) with long paths on Windows."""
    os.makedirs(native_path(path), exist_ok=exist_ok)


def stat_path(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
    """``os.stat`` with long paths on Windows."""
    return os.stat(native_path(path), follow_symlinks=follow_symlinks)


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


def lock_exclusive(fd: int) -> bool:
    """Try to take an exclusive lock on ``fd`` without waiting; False when another open file
    description holds it. Released when ``fd`` is closed (or the process dies)."""
    return filelock.lock_descriptor(fd, blocking=False)


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
