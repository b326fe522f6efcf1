"""Large transfer buffers back to the system when freed: a fixed glibc mmap threshold.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at first) with its
own ``mmap`` and unmaps it on free; but each such free *raises* the threshold to the freed size
(up to 32 MiB). After the first 16 MiB upload window is freed, the windows, request bodies and
compressed copies of a bulk transfer all come from the heaps of the threads that made them,
where freed holes are kept and reused only if the next buffer fits: measured on a 1 GiB upload
(bench/upload_memory.py --client-env MALLOC_MMAP_THRESHOLD_=...), the client's peak RSS was
277 MB with the moving threshold and 205 MB with a fixed one. ``fix_mmap_threshold`` sets it
once per process (setting it also stops the moving). 4 MiB keeps the 1 MiB read buffers of an
upload (client/push.py ``READ_SPAN``) in the heap, where they are reused without page faults.
A no-op where ``mallopt`` is not glibc's (macOS, Windows, musl) or the environment already set
``MALLOC_MMAP_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

M_MMAP_THRESHOLD = -3  # glibc malloc.h
DEFAULT_THRESHOLD = 4 * 1024 * 1024
_lock = threading.Lock()
_done: list[bool] = []


def fix_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations of ``nbytes`` or more by mmap from now on; True if it was set (now or
    by an earlier call)."""
    with _lock:
        if not _done:
            _done.append(_set(nbytes))
        return _done[0]


def _set(nbytes: int) -> bool:
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # another libc's mallopt may read the option differently
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
