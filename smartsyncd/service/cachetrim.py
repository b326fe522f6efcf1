"""Keeps a branch's chunk cache under ``[branch] cache_max_bytes`` (issue 18).

``CacheTrimmer`` is poked after each fetch from central that added to the cache (and looks
every ``interval`` seconds on its clock); when the cache's packs take more than the limit it
reads what must stay (``protected``: the engagements the branch carries and the chunks of
their heads, from the standby) and trims the cache off the reactor
(``storage/branchcache.ChunkCache.trim``: least recently read packs of engagements not
carried go first; a carried head is never trimmed). One trim runs at a time; a poke during
one runs another after it. A failed trim is logged and tried again at the next poke.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smartsyncd.service.periodic import PeriodicService

log = Logger(namespace="smartsyncd.branch")

Protected = tuple[set[int], set[tuple[int, str]]]
INTERVAL_S = 60.0
REGROW = 0.05


class CacheTrimmer(PeriodicService):
    """Keeps the branch's chunk cache under ``max_bytes``, off the reactor, least recently
    read first and never a carried engagement's head."""

    def __init__(
        self, store: Any, max_bytes: int, clock: IReactorTime,
        protected: Callable[[], Awaitable[Protected]], interval: float = INTERVAL_S,
    ) -> None:
        super().__init__(clock, interval, "cache-trim")
        self._store = store  # storage/standby.BranchStore: its cache and trim_cache
        self.max_bytes = max_bytes
        self._protected = protected
        self._again = False
        self.trims = 0
        # what a trim could not free (carried heads over the limit): no new trim until the cache
        # grew by REGROW of the limit past it, rather than one after every fetch
        self._floor = 0
        self.bytes_freed = 0

    def poke(self) -> None:
        """Trim now if the cache is over its limit (cheap: the sizes are in memory)."""
        total = self._store.cache.total_bytes
        if not self.running or total <= self.max_bytes or total < self._floor + self.max_bytes * REGROW:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._trim())
        self._running.addBoth(self._trimmed)

    def _trimmed(self, _: object) -> None:
        self._running = None
        if self._again:
            self._again = False
            self.poke()

    async def _trim(self) -> None:
        try:
            carried, protected = await self._protected()
            report = await self._store.trim_cache(self.max_bytes, carried, protected)
        except Exception:
            log.failure("trimming the chunk cache failed (tried again at the next fetch)")
            return
        self.trims += 1
        self.bytes_freed += report.bytes_freed
        if report.bytes_kept > self.max_bytes:
            if not self._floor:
                log.warn("the chunk cache stays over [branch] cache_max_bytes ({limit}): {kept} bytes"
                         " are carried engagements' heads, which are never trimmed",
                         limit=self.max_bytes, kept=report.bytes_kept)
            self._floor = report.bytes_kept
        else:
            self._floor = 0
        log.info(
            "chunk cache trimmed: {packs} pack(s), {chunks} chunk(s), {freed} bytes freed;"
            " {kept} bytes kept (limit {limit})", packs=report.packs, chunks=report.chunks,
            freed=report.bytes_freed, kept=report.bytes_kept, limit=self.max_bytes,
        )
