"""Fewer cyclic-GC passes while bulk work runs: one process-wide registry of raised thresholds.

A sync of thousands of small files (client/engine.py) and a commit of thousands of changes
(storage/sqlstore.py) each allocate hundreds of thousands of short-lived containers; at
Python's default gen-0 threshold (700) the collector then runs hundreds of times, each pass
also walking what survived. While such work runs, ``raised_gen0_threshold(n)`` keeps gen 0 at
``n`` or more; garbage cycles are still collected, only less often.

The GC's thresholds belong to the whole process, and both users can run in one (the tests, an
embedding app that also serves): the thresholds found when the first holder entered are
restored when the last holder leaves, whatever order they leave in, and while several hold it
gen 0 is the highest threshold any of them asked for. A gen-0 threshold already higher is kept;
0 (collection switched off) is left off. Thread-safe (commits run on database threads).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_held: list[int] = []  # the thresholds asked for by the holders now inside
_found: tuple[int, int, int] | None = None  # the thresholds before the first holder; None: GC off


@contextmanager
def raised_gen0_threshold(threshold: int) -> Iterator[None]:
    """Collect generation 0 at most every ``threshold`` allocations while inside."""
    global _found
    with _lock:
        if not _held:
            found = gc.get_threshold()
            _found = found if found[0] > 0 else None
        _held.append(threshold)
        _apply()
    try:
        yield
    finally:
        with _lock:
            _held.remove(threshold)
            if _held:
                _apply()
            elif _found is not None:
                gc.set_threshold(*_found)
                _found = None


def _apply() -> None:
    if _found is not None:
        gc.set_threshold(max(_found[0], *_held), *_found[1:])
