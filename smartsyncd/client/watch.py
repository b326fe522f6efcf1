"""Continuous sync (``smartsync watch``): sync, then wait for a server notification
(long-poll) or a local change (the system's file watcher, else signature polling:
client/watcher.py), and repeat until stopped. Network errors are retried after a delay; a
missing folder or marker ends the watch with that error. When the server stops answering, and
when it answers again, the watch says so once each (``Reachability``: a log event and the
``on_status`` callback)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, race
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import deferLater

from smartsyncd.client.copycontext import CopyContext, log
from smartsyncd.client.errors import HistoryDiverged, NetworkError
from smartsyncd.client.progress import Progress
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import load_rules
from smartsyncd.client.server import Server
from smartsyncd.client.watcher import LocalWatcher, NativeWatcher, make_watcher

SyncOnce = Callable[[Server, Progress | None], Awaitable[SyncReport]]


@dataclass(frozen=True)
class Reachability:
    """The server stopped answering (``reachable`` False: ``error``, next try in ``retry_in``
    seconds) or answers again (True)."""

    reachable: bool
    error: str | None = None
    retry_in: float | None = None

    def describe(self) -> str:
        if self.reachable:
            return "server reachable again"
        return f"server unreachable ({self.error}); trying again in {self.retry_in:g} s"


class Watch:
    """The watch loop of one copy; ``sync`` runs one sync (``SyncCopy.sync``)."""

    def __init__(
        self, ctx: CopyContext, sync: SyncOnce,
        on_status: Callable[[Reachability], object] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sync = sync
        self.on_status = on_status
        self.reachable = True

    def _status(self, reachable: bool, error: str | None = None,
                retry_in: float | None = None) -> None:
        """Tell of a change of reachability (only a change: one line per outage)."""
        if reachable == self.reachable:
            return
        self.reachable = reachable
        status = Reachability(reachable, error, retry_in)
        if reachable:
            log.info("{status}", status=status.describe(), reachable=True)
        else:
            log.warn("{status}", status=status.describe(), reachable=False, error=error)
        if self.on_status is not None:
            self.on_status(status)

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
        ``stop`` fires. Network errors are retried; a missing folder or marker ends the watch
        with that error. Local changes come from the system's file watcher when it can run
        (``native_watch``, and a real reactor as the clock), else from a stat walk every
        ``poll_interval`` seconds."""
        ctx = self.ctx
        threads = ctx.clock if IReactorFromThreads.providedBy(ctx.clock) else None
        watcher = make_watcher(
            ctx.directory, lambda: ctx.run(ctx.scanner.signature), ctx.clock, threads,
            poll_interval=poll_interval, native=native_watch,
        )
        try:
            await self._loop(api, stop, on_report, watcher, progress, long_poll, retry_delay)
        finally:
            watcher.stop()

    async def _loop(
        self,
        api: Server,
        stop: Deferred[None],
        on_report: Callable[[SyncReport], object],
        watcher: LocalWatcher,
        progress: Progress | None,
        long_poll: float,
        retry_delay: float,
    ) -> None:
        stopped: Deferred[None] = Deferred()

        def on_stop(result: object) -> object:
            if not stopped.called:
                stopped.callback(None)
            return result

        stop.addBoth(on_stop)
        while not stopped.called:
            # Taken before the sync: an edit made while it runs (after its scan) must not
            # become part of the "already synced" picture we wait against.
            before = await self.ctx.run(self.ctx.scanner.signature)
            try:
                report = await self.sync(api, progress)
            except NetworkError as e:
                log.warn("sync failed, retrying: {why}", why=str(e))
                self._status(False, str(e), retry_delay)
                await self._wait(self._sleep(retry_delay), stopped)
                continue
            self._status(True)
            on_report(report)
            mark = watcher.mark()
            signature = await self.ctx.run(self.ctx.scanner.signature)
            if signature != before:
                continue  # our own downloads, or an edit made meanwhile: sync again to see
            if isinstance(watcher, NativeWatcher):
                local_rules = await self.ctx.run(load_rules, self.ctx.directory, [])
                watcher.rules = local_rules.with_engagement(self.ctx.scanner.engagement_rules)
            while not stopped.called:
                remote = Deferred.fromCoroutine(self._remote_news(api, long_poll, retry_delay))
                local = watcher.changed(mark, signature)
                which = await self._wait_any([remote, local], stopped)
                if which is None:
                    return
                _index, news = which
                if isinstance(news, Exception):
                    raise news
                if news:
                    break

    async def _remote_news(
        self, api: Server, wait: float, retry_delay: float
    ) -> bool | Exception:
        """True when the server has changes for us (long-poll). Errors other than network
        trouble are returned, not raised: a race ignores a failing contender."""
        since = await self.ctx.last_seq()
        try:
            _head, changes, _more = await api.changes(self.ctx.engagement, since, 1, wait=wait)
        except NetworkError as e:
            log.warn("waiting for server changes failed: {why}", why=str(e))
            self._status(False, str(e), retry_delay)
            await self._sleep(retry_delay)
            return False
        except HistoryDiverged:
            return True  # the sync reconciles
        except Exception as e:
            return e
        self._status(True)
        return bool(changes)

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.ctx.clock, seconds, lambda: None)

    async def _wait(self, d: Deferred[Any], stopped: Deferred[None]) -> None:
        await self._wait_any([d], stopped)

    async def _wait_any(
        self, ds: list[Deferred[Any]], stopped: Deferred[None]
    ) -> tuple[int, Any] | None:
        """The first of ``ds`` to succeed as (index, result), or None when stopped first; the
        others are cancelled."""
        stop_copy: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            if not stop_copy.called:
                stop_copy.callback(None)
            return result

        stopped.addBoth(relay)
        index, result = await race([*ds, stop_copy])
        if index == len(ds):
            return None
        return index, result
