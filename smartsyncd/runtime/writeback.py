"""Starting the disk's work on written bytes early: Linux's ``sync_file_range`` (issue 15, s13).

A large write followed by one fsync makes the fsync wait for all of it. Asking the kernel to
start writing each batch out as it lands (``SYNC_FILE_RANGE_WRITE``: start, do not wait) leaves
the final fsync little to do, so an upload's answer (daemon) or a download's rename (client)
comes sooner. It is a hint, never a durability step: the fsync still follows, and reports any
error. Python's os module has no binding, so libc's is loaded through ctypes on first use (not
at import: the client's start-up stays lean). Elsewhere than Linux it does nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
_loaded: list[Callable[[int, int, int, int], int] | None] = []


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not _loaded:
        found: Callable[[int, int, int, int], int] | None = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                call = ctypes.CDLL(None, use_errno=True).sync_file_range
                call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                call.restype = ctypes.c_int
                found = call
            except (OSError, AttributeError):
                found = None
        _loaded.append(found)
    return _loaded[0]


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd`` to disk (0: to
    the end of the file), without waiting; its result is ignored (the fsync that must follow
    reports errors)."""
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
