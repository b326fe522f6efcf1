"""The branch's prefetch of the engagements it carries (issue 18, docs/branch-offices.md).

``Prefetcher`` is a small service on an injected clock. A pass reads the carry list from the
branch's standby (``storage/branches.carried_engagements``, by the hash of the branch's
secret: the list is written at central and replicates here), and for each carried engagement
whose head moved since it was last complete, the chunks of its head that the cache lacks
(``PrefetchSource.lacking``), then fetches them in the batches users' fetches use (256 chunks,
``web/branch.FETCH_SLICE``), one request at a time, paced to ``rate`` bytes per second when
set (the office link is shared with the staff's own work).

States (``state``): ``starting``; ``fetching`` during a pass; ``idle`` once every carried head
is complete (the next pass comes after ``rescan`` seconds, or at once on ``wake``: the replay
watcher calls it when a replayed commit moved a head); ``link_down`` when central could not be
reached (the pass stops; the next one is tried after ``retry`` seconds, doubling up to
``retry_max``, and fetches only what is still lacking, so a cut link resumes where it was);
``error`` for any other failure (logged, retried the same way). ``stopped`` after stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from smartsyncd.core.errors import CentralUnreachable
from smartsyncd.storage.branches import CarriedEngagement

log = Logger(namespace="smartsyncd.branch")

BATCH = 256  # chunks per request, as web/branch.FETCH_SLICE
RESCAN_S = 10.0  # a carry added at central is noticed within this (plus the replication delay)
RETRY_S = 5.0
RETRY_MAX_S = 60.0


class PrefetchSource(Protocol):
    async def carried(self) -> list[CarriedEngagement]:
        """The engagements this branch carries, with their heads (from the standby)."""

    async def lacking(self, engagement: CarriedEngagement) -> tuple[int, list[str]]:
        """(head, the chunk hashes of the files at head that the cache lacks)."""

    async def fetch(self, engagement: CarriedEngagement, hashes: Sequence[str]) -> int:
        """Fetch and cache ``hashes`` from central; the bytes that crossed (0 when others'
        fetches brought them); ``CentralUnreachable`` when the link is down."""


@dataclass
class Progress:
    """What the prefetch did for one engagement (for logs, /healthz and tests)."""

    head: int = -1  # the head last made complete here
    lacking: int = 0  # chunks still to fetch in the current pass
    chunks: int = 0  # chunks fetched since start
    bytes: int = 0


class Prefetcher(Service):
    def __init__(
        self, source: PrefetchSource, clock: IReactorTime, *, rate: float | None = None,
        batch: int = BATCH, rescan: float = RESCAN_S, retry: float = RETRY_S, retry_max: float = RETRY_MAX_S,
    ) -> None:
        self._source = source
        self._clock = clock
        self.rate = rate  # bytes per second; None: unpaced (still one request at a time)
        self.batch = batch
        self.rescan = rescan
        self.retry = retry
        self.retry_max = retry_max
        self.state = "starting"
        self.passes = 0
        self.progress: dict[str, Progress] = {}
        self._next_retry = retry
        self._call: IDelayedCall | None = None
        self._running: Deferred[None] | None = None
        self._again = False  # woken during a pass: run another right after it
        self.setName("prefetch")

    def report(self) -> dict[str, object]:
        """For /healthz: the state and, per carried engagement, the head made complete here."""
        return {
            "state": self.state,
            "engagements": {
                name: {"head": p.head, "lacking": p.lacking, "chunks": p.chunks, "bytes": p.bytes}
                for name, p in sorted(self.progress.items())
            },
        }

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.state = "stopped"
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        running, self._running = self._running, None
        if running is not None and not running.called:
            running.cancel()
        return None

    def wake(self) -> None:
        """A head moved (or the carry list may have): look again now."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self._clock.seconds() + delay:
                return
            self._call.cancel()
        self._call = self._clock.callLater(delay, self._start_pass)

    def _start_pass(self) -> None:
        self._call = None
        if not self.running or self._running is not None:
            return
        self._again = False
        running = Deferred.fromCoroutine(self._pass())
        self._running = running
        running.addErrback(lambda f: f.trap(CancelledError))
        running.addBoth(self._passed)

    def _passed(self, _: object) -> None:
        self._running = None
        if not self.running:
            return
        if self.state in ("link_down", "error"):
            delay, self._next_retry = self._next_retry, min(self._next_retry * 2, self.retry_max)
            self._schedule(delay)
            return
        self._next_retry = self.retry
        self._schedule(0 if self._again else self.rescan)

    async def _pass(self) -> None:
        self.passes += 1
        try:
            for engagement in await self._source.carried():
                progress = self.progress.setdefault(engagement.name, Progress())
                if progress.head == engagement.head:
                    continue
                await self._engagement(engagement, progress)
        except CentralUnreachable as e:
            if self.state != "link_down":
                log.warn("prefetch paused, the central server is unreachable: {error}", error=e.message)
            self.state = "link_down"
            return
        except CancelledError:
            raise
        except Exception:
            log.failure("prefetch pass failed (retried)")
            self.state = "error"
            return
        self.state = "idle"

    async def _engagement(self, engagement: CarriedEngagement, progress: Progress) -> None:
        head, lacking = await self._source.lacking(engagement)
        progress.lacking = len(lacking)
        if lacking:
            self.state = "fetching"
            log.info("prefetching {n} chunk(s) of {engagement} (head {head})",
                     n=len(lacking), engagement=engagement.name, head=head)
        for start in range(0, len(lacking), self.batch):
            part = lacking[start : start + self.batch]
            began = self._clock.seconds()
            crossed = await self._source.fetch(engagement, part)
            progress.chunks += len(part)
            progress.bytes += crossed
            progress.lacking -= len(part)
            if self.rate:
                await self._sleep(crossed / self.rate - (self._clock.seconds() - began))
        progress.head = head

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        pause: Deferred[None] = Deferred()
        call = self._clock.callLater(seconds, pause.callback, None)
        try:
            await pause
        finally:
            if call.active():
                call.cancel()
