"""Continuous sync for library callers (``SyncCopy.watch``): the loop of ``CopyService``
(client/copyservice.py) behind a stop Deferred and two callbacks.

``smartsync watch`` and desktop hosts use ``CopyService`` directly; ``Watch`` keeps the older
call shape (``run(api, stop, on_report, ...)``, ``on_status`` hearing each ``Reachability``
change) without a loop of its own, so both behave the same: sleep and network changes, a bounded
long-poll, the system's file watcher with the walk as fallback. Network errors are retried every
``retry_delay`` seconds; a missing folder, a marker or a wipe order ends the watch with that
error, and so does an ended session (``AuthError``: a library caller signs in again and calls
``watch`` anew)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.copycontext import CopyContext
from smartsyncd.client.copyservice import CopyEvent, CopyService, Reachability
from smartsyncd.client.progress import Progress
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.server import Server

SyncOnce = Callable[[Server, Progress | None], Awaitable[SyncReport]]

__all__ = ["Reachability", "SyncOnce", "Watch", "steady"]


def steady(delay: float) -> Backoff:
    """The same ``delay`` before every retry (no growth, no jitter): ``watch``'s retries."""
    return Backoff(initial=delay, factor=1.0, maximum=delay, jitter=lambda: 1.0)


@dataclass
class _Copy:
    """The copy as ``CopyService`` sees it, syncing through ``sync``."""

    ctx: CopyContext
    copy_id: str
    once: SyncOnce

    def sync(self, api: Server, *, progress: Progress | None = None) -> Awaitable[SyncReport]:
        return self.once(api, progress)


class Watch:
    """The watch loop of one copy; ``sync`` runs one sync (``SyncCopy.sync``)."""

    def __init__(
        self, ctx: CopyContext, sync: SyncOnce,
        on_status: Callable[[Reachability], object] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sync = sync
        self.on_status = on_status

    async def run(
        self,
        api: Server,
        stop: Deferred[None],
        on_report: Callable[[SyncReport], object],
        *,
        progress: Progress | None = None,
        poll_interval: float = 1.0,
        long_poll: float = 30.0,
        retry_delay: float = 5.0,
        native_watch: bool = True,
    ) -> None:
        """Sync, then wait for a server notification or a local change, and repeat until
        ``stop`` fires (a running sync ends first). Local changes come from the system's file
        watcher when it can run (``native_watch``, and a real reactor as the clock), else from
        a stat walk every ``poll_interval`` seconds."""
        copy = _Copy(self.ctx, api.copy_id or self.ctx.copy_id, self.sync)
        service = CopyService(
            copy, api, long_poll=long_poll, poll_retry=retry_delay, backoff=steady(retry_delay),
            poll_interval=poll_interval, native_watch=native_watch, progress=progress,
            end_when_signed_out=True,
        )

        def hear(event: CopyEvent) -> None:
            if event.kind == "report":
                on_report(event.value)
            elif event.kind == "reachability" and self.on_status is not None:
                self.on_status(event.value)

        service.subscribe(hear)
        running = service.start()
        stop.addBoth(lambda result: (service.stop(), result)[1])
        await running
