"""Crash-safe local file operations for the sync client (all blocking: call them on a thread).

Writes go to a temp file in the target's folder (``.~smartsync-*``, skipped by the scanner), are
fsynced, renamed over the target and the folder is fsynced: after a crash the path holds either
the old or the new content, never a torn mix. Moves to a conflict copy never replace an existing
file. A failed fsync is not retried on the same descriptor: the error propagates.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import blake3

from smartsyncd.client import osfs
from smartsyncd.client.nofollow import ensure_folder, open_new, replace_into
from smartsyncd.client.osfs import open_fd, pread, sync_file, sync_folder

TEMP_PREFIX = ".~smartsync-"


def fsync_dir(path: Path | str) -> None:
    """Make a create or rename inside ``path`` durable (``osfs.sync_folder``)."""
    sync_folder(path)


def make_parents(root: Path, target: Path) -> None:
    """Create the folders between ``root`` and ``target`` durably (fsync each new folder's
    parent), never through a symbolic link (``nofollow.LinkInPath``)."""
    ensure_folder(root, target.parent)


def temp_path_for(target: Path) -> Path:
    return target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"


def open_temp(root: Path, target: Path) -> tuple[Path, BinaryIO]:
    """Open a new temp file beside ``target`` (creating its folders) for writing; no folder
    on the way may be a symbolic link (``nofollow.LinkInPath``)."""
    temp = temp_path_for(target)
    fd = open_new(root, temp)
    return temp, os.fdopen(fd, "wb")


def finish_temp(
    temp: Path, handle: BinaryIO, target: Path, root: Path | None = None
) -> os.stat_result:
    """fsync and close the temp file, rename it over ``target``, fsync the folder. With
    ``root``, ``target``'s folder is reached from it without following a link.

    Returns the stat of the final file.
    """
    try:
        handle.flush()
        sync_file(handle.fileno())
    finally:
        handle.close()
    if root is None:
        osfs.replace(temp, target)
    else:
        replace_into(root, temp, target)
    fsync_dir(target.parent)
    return osfs.stat_path(target)


def discard_temp(temp: Path, handle: BinaryIO | None = None) -> None:
    """Close and remove a temp file that will not be installed. Closing flushes the buffer,
    which fails again on a full disk: the file is removed anyway (it would hold the space)."""
    try:
        if handle is not None:
            handle.close()
    except OSError:
        pass  # the buffered bytes are being thrown away
    finally:
        osfs.unlink(temp, missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically and durably (target's folder must exist)."""
    temp, handle = open_temp(target.parent, target)
    try:
        handle.write(data)
    except BaseException:
        discard_temp(temp, handle)
        raise
    finish_temp(temp, handle, target)


def move_no_replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, refusing (FileExistsError) when ``dst`` exists; fsync both
    folders. Uses link + unlink so an existing ``dst`` is never replaced."""
    osfs.make_folders(dst.parent, exist_ok=True)
    try:
        osfs.link(src, dst)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "conflict copy name taken", str(dst)) from None
        # file systems without hard links: check, then rename (a small race, never a replace
        # of a file that existed at the check)
        if osfs.lexists(dst):
            raise FileExistsError(errno.EEXIST, "conflict copy name taken", str(dst)) from None
        osfs.rename(src, dst)
    else:
        osfs.unlink(src)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def remove_file(root: Path, target: Path, keep: Callable[[Path], bool] | None = None) -> None:
    """Delete ``target`` durably, then remove folders left empty up to ``root``, stopping at
    one ``keep`` names (a synced folder entry)."""
    osfs.unlink(target)
    fsync_dir(target.parent)
    parent = target.parent
    while parent != root and root in parent.parents and not (keep and keep(parent)):
        try:
            osfs.remove_folder(parent)
        except OSError:
            break
        fsync_dir(parent.parent)
        parent = parent.parent


def read_chunk(path: Path, offset: int, size: int, expect: str) -> bytes | None:
    """Read ``size`` bytes at ``offset``; return them only if they hash to ``expect``."""
    try:
        with osfs.open_binary(path) as f:
            f.seek(offset)
            data = f.read(size)
    except OSError:
        return None
    if len(data) != size or blake3.blake3(data).hexdigest() != expect:
        return None
    return data


def read_chunks(
    path: Path, wanted: list[tuple[int, int, str]], max_span: int = 16 << 20
) -> dict[str, bytes | None]:
    """``read_chunk`` for many ``(offset, size, hash)`` of one file: one open, and chunks that
    lie back to back (a new file's run of chunks) are read with one ``pread`` per run of at most
    ``max_span`` bytes. Each chunk maps to its bytes, or None if they no longer hash to it (or
    the file is gone). A file that cannot be opened (no permission, a Windows sharing
    violation) raises that OSError, so the caller can say why."""
    out: dict[str, bytes | None] = {}
    try:
        fd = open_fd(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return {h: None for _, _, h in wanted}
    try:
        todo = sorted(wanted)
        i = 0
        while i < len(todo):
            start = todo[i][0]
            j, end = i, todo[i][0] + todo[i][1]
            while j + 1 < len(todo) and todo[j + 1][0] == end and end - start < max_span:
                j += 1
                end += todo[j][1]
            try:
                run = memoryview(pread(fd, end - start, start))
            except OSError:
                run = memoryview(b"")
            for offset, size, digest in todo[i : j + 1]:
                piece = run[offset - start : offset - start + size]
                ok = len(piece) == size and blake3.blake3(piece).hexdigest() == digest
                out[digest] = piece.tobytes() if ok else None
            i = j + 1
    finally:
        os.close(fd)
    return out


def same_stat(st: os.stat_result, size: int, mtime_ns: int, inode: int) -> bool:
    return st.st_size == size and st.st_mtime_ns == mtime_ns and st.st_ino == inode
