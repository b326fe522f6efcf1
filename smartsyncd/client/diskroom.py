"""Room on the copy's disk for a pulled file (blocking: call on a thread).

Before a pulled file's temp file is opened, the free space of its volume is compared with the
file's size; a file that cannot fit is not started, and one that still runs out of space while
being written (the size check cannot see block overhead, other writers) is discarded. Either
way the pull goes on with the files that fit, and the file is reported with what it needs and
what is free (``NoRoom``), pulled by a later sync once there is room.
"""

from __future__ import annotations

import errno
from pathlib import Path

from smartsyncd.client import osfs

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# left free besides the file: the state database records it after the write, and a disk
# filled to the last byte would fail that (and every other program on the laptop)
RESERVE = 1024 * 1024


class NoRoom(Exception):
    """A pulled file does not fit on the copy's disk: ``needed`` bytes, ``free`` bytes free."""

    def __init__(self, path: str, needed: int, free: int, *, failed: bool = False) -> None:
        super().__init__(path, needed, free)
        self.path = path
        self.needed = needed
        self.free = free
        self.failed = failed  # the write itself ran out of space (or of files: inodes, quota)

    @property
    def reason(self) -> str:
        what = ("the disk is full (no space left on device)" if self.failed
                else "not enough space on the disk")
        return (
            f"{what}: needs {self.needed} bytes ({_human(self.needed)}, the file and a "
            f"{_human(RESERVE)} reserve), {self.free} bytes ({_human(self.free)}) free; "
            "pulled by a later sync once there is room"
        )

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_disk_full(exc: BaseException) -> bool:
    """An ``OSError`` saying the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def free_bytes(target: Path) -> int:
    """Free bytes for an ordinary user on the volume that holds (or will hold) ``target``."""
    folder = target.parent
    while not osfs.exists(folder) and folder != folder.parent:
        folder = folder.parent
    return osfs.disk_usage(folder).free


def check_room(path: str, target: Path, size: int) -> None:
    """Raise ``NoRoom`` unless ``size`` bytes and the reserve fit beside ``target`` now."""
    free = free_bytes(target)
    if size + RESERVE > free:
        raise NoRoom(path, size + RESERVE, free)


def no_room_after(path: str, target: Path, size: int) -> NoRoom:
    """The ``NoRoom`` for a write of ``size`` bytes that failed with a full disk (free space
    measured now, after its temp file was removed)."""
    try:
        free = free_bytes(target)
    except OSError:
        free = 0
    return NoRoom(path, size + RESERVE, free, failed=True)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover
