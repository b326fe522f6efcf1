"""What code beside the async store needs of it: running work on its DB and file pools.

``sqlstore.SqlServerStore`` satisfies ``StoreRunner``; ``fsck`` and ``upload`` take one instead
of importing the store, so they stay below it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StoreRunner(Protocol):
    """``run_db(fn, *args)`` runs ``fn(meta, *args)`` on the DB pool, ``run_file(fn, *args)``
    runs ``fn(packs, *args)`` on the file pool; both map outages to ``Unavailable``."""

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """A pure read, on the read connection where there is one (not behind commits)."""
        ...

    async def run_file(self, fn: Callable[..., T], *args: Any) -> T: ...
