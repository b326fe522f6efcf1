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
``MALLOC_MMAP_THRESHOLD_``. ``keep_heap_top`` (the daemon) likewise for ``M_TRIM_THRESHOLD``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_TRIM_THRESHOLD = -1
DEFAULT_THRESHOLD = 4 * 1024 * 1024
DEFAULT_TRIM = 16 * 1024 * 1024
_lock = threading.Lock()
_done: list[bool] = []
_trim_done: list[bool] = []


def fix_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations of ``nbytes`` or more by mmap from now on; True if it was set (now or
    by an earlier call)."""
    with _lock:
        if not _done:
            _done.append(_set(nbytes))
        return _done[0]


def keep_heap_top(nbytes: int = DEFAULT_TRIM) -> bool:
    """Keep up to ``nbytes`` of freed memory at the top of each malloc heap instead of giving
    it back at once (glibc's ``M_TRIM_THRESHOLD``, 128 KiB once the mmap threshold is fixed):
    the daemon's download pieces (1 MiB, under the mmap threshold) are then reused from one
    answer to the next without page faults (issue 15: 80k minor faults and 0.1-0.15 CPU-s per
    256 MiB download). True if it was set (now or by an earlier call)."""
    with _lock:
        if not _trim_done:
            _trim_done.append(_set(nbytes, M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"))
        return _trim_done[0]


def _set(nbytes: int, option: int = M_MMAP_THRESHOLD, env: str = "MALLOC_MMAP_THRESHOLD_") -> bool:
    if not sys.platform.startswith("linux") or env in os.environ:
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
    return bool(mallopt(option, nbytes))
