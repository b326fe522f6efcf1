"""A sync loop a desktop app hosts: one copy, explicit states, events, pause/resume, wake-ups.

``CopyService`` is what ``watch`` does (sync, then wait for a server notification or a local
change), shaped for a host that lives for hours on a laptop: a tray icon or a working-papers
application. It has explicit states (``ServiceState``), tells every listener of each change and
of what each sync did (``CopyEvent``: state, report, conflict copies made, skipped paths, retry
notices, progress), and takes commands: ``start``, ``pause``, ``resume``, ``wake``, ``stop``.

- **Pause** never interrupts a sync: a running sync ends (whole batches only) and the service
  then waits, doing nothing, until ``resume``; edits made meanwhile are found by the next scan.
- **Sleep and network changes**: the host calls ``wake()`` from the operating system's "resumed"
  or "network changed" notice; the service also notices on its own when its tick timer fires
  much later than asked (the machine slept). Either drops a backoff wait or an idle long-poll
  (which may hang on a dead connection across a sleep) and syncs now. Each long-poll is also
  bounded by ``long_poll + poll_grace`` seconds.

The clock is injected (``SyncCopy``'s, a ``Clock`` in tests); nothing here imports the reactor.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads
from twisted.internet.task import deferLater
from twisted.logger import Logger

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import AuthError, NetworkError
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.server import Server
from smartsyncd.client.watch import Watch
from smartsyncd.client.watcher import LocalWatcher, make_watcher

log = Logger(namespace="smartsyncd.client.service")


class ServiceState(enum.Enum):
    """Where the service is; each change is one ``CopyEvent("state", ...)``."""

    CREATED = "created"
    IDLE = "idle"  # in sync, waiting for a change here or on the server
    SYNCING = "syncing"
    WAITING_TO_RETRY = "waiting-to-retry"  # a sync failed on the network; retrying soon
    OFFLINE = "offline"  # several syncs in a row failed on the network
    PAUSED = "paused"
    SIGNED_OUT = "signed-out"  # the session ended: the host must sign in again, then wake()
    STOPPED = "stopped"


@dataclass(frozen=True)
class CopyEvent:
    """What a listener hears. ``kind`` and ``value``:

    - ``state``: the new ``ServiceState``;
    - ``report``: the ``SyncReport`` of a finished sync;
    - ``conflict``: a conflict copy made (its path);
    - ``skipped``: ``(path, reason)`` of a path the sync left alone;
    - ``retry``: a ``RetryNotice`` (a request retried inside a sync) or, for a failed sync,
      ``{"error": str, "retry_in": seconds}``;
    - ``progress``: ``(task, done_bytes, total_bytes)``;
    - ``woke``: why the service dropped its wait (``"host"``, ``"clock-jump"``, ``"resume"``).
    """

    kind: str
    value: Any


Listener = Callable[[CopyEvent], object]


class _EventProgress:
    """The engine's ``Progress`` turned into ``progress`` events."""

    def __init__(self, emit: Callable[[str, Any], None]) -> None:
        self._emit = emit
        self._task = ""
        self._total = 0
        self._done = 0

    def start(self, task: str, total_bytes: int) -> None:
        self._task, self._total, self._done = task, total_bytes, 0
        self._emit("progress", (task, 0, total_bytes))

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        self._emit("progress", (self._task, self._done, self._total))

    def finish(self) -> None:
        pass


class CopyService:
    """Keep one opened copy (``SyncCopy.open``) in sync with ``api`` until ``stop()``."""

    def __init__(
        self,
        copy: SyncCopy,
        api: Server,
        *,
        long_poll: float = 30.0,
        poll_grace: float = 15.0,
        backoff: Backoff | None = None,
        offline_after: int = 3,
        tick: float = 5.0,
        jump: float = 30.0,
        poll_interval: float = 1.0,
        native_watch: bool = True,
    ) -> None:
        self.copy = copy
        self.api = api
        self.clock = copy.ctx.clock
        self.long_poll = long_poll
        self.poll_grace = poll_grace
        self.backoff = backoff or Backoff(initial=2.0, maximum=300.0)
        self.offline_after = offline_after
        self.tick = tick
        self.jump = jump
        self.poll_interval = poll_interval
        self.native_watch = native_watch
        self.state = ServiceState.CREATED
        self.listeners: list[Listener] = []
        self._paused = False
        self._stopping = False
        self._nudge: Deferred[str] = Deferred()
        self._done: Deferred[None] | None = None
        self._tick_call: IDelayedCall | None = None
        self._last_tick = 0.0
        self._watch = Watch(copy.ctx, self._sync_once)
        self._progress = _EventProgress(self._emit)

    # -- what the host calls -------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def start(self) -> Deferred[None]:
        """Run the loop; the Deferred fires when it has stopped (or fails with the error that
        ended it, e.g. a missing folder or a wipe order)."""
        if self._done is not None:
            raise RuntimeError("the service was already started")
        self.api.copy_id = self.copy.copy_id
        if hasattr(self.api, "on_retry"):  # ServerAPI: requests retried inside a sync
            self.api.on_retry = lambda notice: self._emit("retry", notice)  # type: ignore[attr-defined]
        self._schedule_tick()
        self._done = Deferred.fromCoroutine(self._run())
        return self._done

    def pause(self) -> None:
        """Stop syncing once the running sync (if any) has ended; nothing more until resume."""
        if not self._paused:
            self._paused = True
            if self.state is not ServiceState.SYNCING:
                self._set_state(ServiceState.PAUSED)
            self._poke("pause")

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._poke("resume")

    def wake(self, why: str = "host") -> None:
        """The machine woke or the network changed: drop any wait and sync now."""
        if not self._stopping and not self._paused:
            self._emit("woke", why)
            self._poke(why)

    def stop(self) -> Deferred[None]:
        """Stop after the running sync, if any; fires when stopped."""
        self._stopping = True
        self._poke("stop")
        if self._done is None:
            self._set_state(ServiceState.STOPPED)
            return Deferred.fromCoroutine(_nothing())
        done: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            done.callback(None)
            return result

        self._done.addBoth(fire)
        return done

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        ctx = self.copy.ctx
        threads = ctx.clock if IReactorFromThreads.providedBy(ctx.clock) else None
        watcher = make_watcher(
            ctx.directory, lambda: ctx.run(ctx.scanner.signature), ctx.clock, threads,
            poll_interval=self.poll_interval, native=self.native_watch,
        )
        try:
            await self._loop(watcher)
        finally:
            watcher.stop()
            if self._tick_call is not None and self._tick_call.active():
                self._tick_call.cancel()
            self._set_state(ServiceState.STOPPED)

    async def _loop(self, watcher: LocalWatcher) -> None:
        delays = self.backoff.delays()
        failures = 0
        while not self._stopping:
            if self._paused:
                self._set_state(ServiceState.PAUSED)
                await self._nudged([])
                continue
            self._set_state(ServiceState.SYNCING)
            before = await self.copy.ctx.run(self.copy.ctx.scanner.signature)
            try:
                report = await self.copy.sync(self.api, progress=self._progress)
            except NetworkError as e:
                failures += 1
                delay = next(delays)
                self._set_state(ServiceState.OFFLINE if failures >= self.offline_after
                                else ServiceState.WAITING_TO_RETRY)
                self._emit("retry", {"error": str(e), "retry_in": delay})
                await self._nudged([deferLater(self.clock, delay, lambda: "timer")])
                continue
            except AuthError as e:
                log.warn("signed out: {why}", why=str(e))
                self._set_state(ServiceState.SIGNED_OUT)
                await self._nudged([])  # the host signs in again (api.token) and calls wake()
                continue
            failures, delays = 0, self.backoff.delays()
            self._tell(report)
            mark = watcher.mark()
            if await self.copy.ctx.run(self.copy.ctx.scanner.signature) != before:
                continue  # our own downloads, or an edit made meanwhile
            if self._paused or self._stopping:
                continue
            self._set_state(ServiceState.IDLE)
            await self._idle(watcher, mark, before)

    async def _idle(self, watcher: LocalWatcher, mark: int, signature: Any) -> None:
        """Wait for a change here or on the server, or a nudge; errors other than the
        network's (a wipe order, a missing folder) end the service."""
        while True:
            # a failed long-poll (server down while idle) shows as offline until one answers
            self._set_state(ServiceState.IDLE if self._watch.reachable else ServiceState.OFFLINE)
            remote = Deferred.fromCoroutine(
                self._watch._remote_news(self.api, self.long_poll, self.poll_grace))
            remote.addTimeout(self.long_poll + self.poll_grace, self.clock,
                              onTimeoutCancel=lambda _r, _t: False)
            local = watcher.changed(mark, signature)
            news = await self._nudged([remote, local])
            if isinstance(news, Exception):
                raise news
            if news is not False:
                return

    async def _nudged(self, ds: list[Deferred[Any]]) -> Any:
        """The first result of ``ds`` or of a nudge (pause, resume, wake, stop): "nudge"."""
        mine: Deferred[str] = Deferred()  # the shared nudge itself is never cancelled

        def relay(why: str) -> str:
            if not mine.called:
                mine.callback(why)
            return why

        self._nudge.addCallback(relay)
        index, result = await _first([*ds, mine])
        return "nudge" if index == len(ds) else result

    async def _sync_once(self, api: Server, progress: Any) -> SyncReport:
        return await self.copy.sync(api, progress=progress)

    # -- events, ticks -------------------------------------------------------------------------

    def _poke(self, why: str) -> None:
        nudge, self._nudge = self._nudge, Deferred()
        nudge.callback(why)

    def _schedule_tick(self) -> None:
        self._last_tick = self.clock.seconds()
        self._tick_call = self.clock.callLater(self.tick, self._on_tick)

    def _on_tick(self) -> None:
        # A timer firing far later than asked means the machine slept (or the clock jumped).
        late = self.clock.seconds() - self._last_tick - self.tick
        self._schedule_tick()
        if late > self.jump and self.state in (
            ServiceState.IDLE, ServiceState.WAITING_TO_RETRY, ServiceState.OFFLINE
        ):
            log.info("clock jumped {late:.0f} s (the machine slept?): syncing now", late=late)
            self.wake("clock-jump")

    def _set_state(self, state: ServiceState) -> None:
        if state is not self.state:
            self.state = state
            self._emit("state", state)

    def _tell(self, report: SyncReport) -> None:
        self._emit("report", report)
        for path in report.conflicts:
            self._emit("conflict", path)
        for path, reason in report.skipped:
            self._emit("skipped", (path, reason))

    def _emit(self, kind: str, value: Any) -> None:
        event = CopyEvent(kind, value)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.failure("a listener failed on {kind}", kind=kind)


async def _nothing() -> None:
    return None


async def _first(ds: list[Deferred[Any]]) -> tuple[int, Any]:
    """(index, result) of the first of ``ds`` to fire; the others are cancelled. Unlike
    ``race``, a failure counts as a result (returned as the exception)."""
    done: Deferred[tuple[int, Any]] = Deferred()

    def settle(result: Any, index: int) -> None:
        if done.called:
            return
        value = result.value if hasattr(result, "value") and hasattr(result, "trap") else result
        done.callback((index, value))
        for other in ds:
            if other is not ds[index]:
                other.cancel()

    for i, d in enumerate(ds):
        d.addBoth(settle, i)
    return await done
