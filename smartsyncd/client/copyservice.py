"""The sync loop of one copy: ``smartsync watch`` runs it, and so can a desktop app.

``CopyService`` syncs, then waits for a server notification (long-poll) or a local change (the
system's file watcher, else a stat walk: client/watcher.py), and repeats until stopped; it is
shaped for a process that lives for hours on a laptop (the ``watch`` command, a tray icon, a
working-papers application). It has explicit states (``ServiceState``), tells every listener of
each change and of what each sync did (``CopyEvent``: state, report, conflict copies made,
skipped paths, retry notices, reachability, progress), and takes commands: ``start``,
``pause``, ``resume``, ``wake``, ``stop``. Network errors are retried (``backoff``); a missing
folder, a wipe order or (with ``end_when_signed_out``) an ended session ends the loop with that
error. When the server stops answering, and when it answers again, it says so once each
(``Reachability``).

- **Pause** never interrupts a sync: a running sync ends (whole batches only) and the service
  then waits, doing nothing, until ``resume``; edits made meanwhile are found by the next scan.
- **Sleep and network changes**: the host calls ``wake()`` from the operating system's "resumed"
  or "network changed" notice; the service also notices on its own when its tick timer fires
  much later than asked (the machine slept). Either drops a backoff wait or an idle long-poll
  (which may hang on a dead connection across a sleep) and syncs now. Each long-poll is also
  bounded by ``long_poll + poll_grace`` seconds.
- **Stop** lets a running sync end, unless ``stop(grace)`` is given: what is still in flight
  after ``grace`` seconds is cancelled. A file being pulled is written to a temp file and renamed
  into place (client/localfs.py), so a cancel never leaves a half-written file; a temp file it
  leaves is removed by the next sync (client/copylock.py).

The clock is injected (``SyncCopy``'s, a ``Clock`` in tests); nothing here imports the reactor.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads
from twisted.internet.task import deferLater
from twisted.logger import Logger

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.copycontext import CopyContext
from smartsyncd.client.errors import AuthError, HistoryDiverged, NetworkError
from smartsyncd.client.progress import Progress
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import load_rules
from smartsyncd.client.server import Server
from smartsyncd.client.watcher import LocalWatcher, NativeWatcher, Signature, make_watcher

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


@dataclass(frozen=True)
class CopyEvent:
    """What a listener hears. ``kind`` and ``value``:

    - ``state``: the new ``ServiceState``;
    - ``report``: the ``SyncReport`` of a finished sync;
    - ``conflict``: a conflict copy made (its path);
    - ``skipped``: ``(path, reason)`` of a path the sync left alone;
    - ``retry``: a ``RetryNotice`` (a request retried inside a sync) or, for a failed sync,
      ``{"error": str, "retry_in": seconds}``;
    - ``reachability``: a ``Reachability``, once when the server stops answering (a failed
      sync or long-poll) and once when it answers again;
    - ``progress``: ``(task, done_bytes, total_bytes)``;
    - ``woke``: why the service dropped its wait (``"host"``, ``"clock-jump"``, ``"resume"``).
    """

    kind: str
    value: Any


Listener = Callable[[CopyEvent], object]


class ServicedCopy(Protocol):
    """What the service needs of a copy: ``SyncCopy`` (opened, holding the copy lock)."""

    @property
    def ctx(self) -> CopyContext: ...

    @property
    def copy_id(self) -> str: ...

    def sync(self, api: Server, *, progress: Progress | None = None) -> Awaitable[SyncReport]:
        ...


class _EventProgress:
    """The engine's ``Progress`` turned into ``progress`` events (and passed on to ``also``)."""

    def __init__(self, emit: Callable[[str, Any], None], also: Progress | None = None) -> None:
        self._emit = emit
        self._also = also
        self._task = ""
        self._total = 0
        self._done = 0

    def start(self, task: str, total_bytes: int) -> None:
        self._task, self._total, self._done = task, total_bytes, 0
        self._emit("progress", (task, 0, total_bytes))
        if self._also is not None:
            self._also.start(task, total_bytes)

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        self._emit("progress", (self._task, self._done, self._total))
        if self._also is not None:
            self._also.advance(nbytes)

    def finish(self) -> None:
        if self._also is not None:
            self._also.finish()


class CopyService:
    """Keep one opened copy (``SyncCopy.open``) in sync with ``api`` until ``stop()``."""

    def __init__(
        self,
        copy: ServicedCopy,
        api: Server,
        *,
        long_poll: float = 30.0,
        poll_grace: float = 15.0,
        poll_retry: float = 15.0,
        backoff: Backoff | None = None,
        offline_after: int = 3,
        tick: float = 5.0,
        jump: float = 30.0,
        poll_interval: float = 1.0,
        native_watch: bool = True,
        progress: Progress | None = None,
        end_when_signed_out: bool = False,
    ) -> None:
        self.copy = copy
        self.api = api
        self.clock = copy.ctx.clock
        self.long_poll = long_poll
        self.poll_grace = poll_grace
        self.poll_retry = poll_retry  # after a long-poll failed on the network
        self.backoff = backoff or Backoff(initial=2.0, maximum=300.0)
        self.offline_after = offline_after
        self.tick = tick
        self.jump = jump
        self.poll_interval = poll_interval
        self.native_watch = native_watch
        self.end_when_signed_out = end_when_signed_out  # the CLI: exit, a person must sign in
        self.state = ServiceState.CREATED
        self.reachable = True
        self.listeners: list[Listener] = []
        self._paused = False
        self._stopping = False
        self._nudge: Deferred[str] = Deferred()
        self._done: Deferred[None] | None = None
        self._tick_call: IDelayedCall | None = None
        self._last_tick = 0.0
        self._progress = _EventProgress(self._emit, progress)

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
            told = self.api.on_retry  # what the host had (the CLI prints it) keeps hearing

            def on_retry(notice: object) -> None:
                if told is not None:
                    told(notice)
                self._emit("retry", notice)

            self.api.on_retry = on_retry  # type: ignore[attr-defined]
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

    def stop(self, grace: float | None = None) -> Deferred[bool]:
        """Stop after the running sync, if any; fires True when stopped. With ``grace``, what
        is still in flight after that many seconds (a sync, a scan, a long-poll) is cancelled
        and the Deferred fires False, whether or not the cancelled work has ended by then."""
        self._stopping = True
        self._poke("stop")
        running = self._done
        if running is None:
            self._set_state(ServiceState.STOPPED)
            return succeed(True)
        done: Deferred[bool] = Deferred()
        timer: IDelayedCall | None = None

        def stopped(result: object) -> object:
            if timer is not None and timer.active():
                timer.cancel()
            if not done.called:
                done.callback(True)
            return result

        def overdue() -> None:
            log.warn("still {state} {grace:g} s after the stop: cancelling it",
                     state=self.state.value, grace=grace)
            done.callback(False)  # first: the cancel below may end the loop at once
            running.cancel()

        if grace is not None and not running.called:
            timer = self.clock.callLater(grace, overdue)
        running.addBoth(stopped)
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
        ctx = self.copy.ctx
        while not self._stopping:
            if self._paused:
                self._set_state(ServiceState.PAUSED)
                await self._nudged([])
                continue
            self._set_state(ServiceState.SYNCING)
            # Taken before the sync: an edit made while it runs (after its scan) must not
            # become part of the "already synced" picture we wait against.
            before = await ctx.run(ctx.scanner.signature)
            try:
                report = await self.copy.sync(self.api, progress=self._progress)
            except NetworkError as e:
                failures += 1
                delay = next(delays)
                log.warn("sync failed, retrying: {why}", why=str(e))
                self._set_state(ServiceState.OFFLINE if failures >= self.offline_after
                                else ServiceState.WAITING_TO_RETRY)
                self._reach(False, str(e), delay)
                self._emit("retry", {"error": str(e), "retry_in": delay})
                await self._nudged([deferLater(self.clock, delay, lambda: "timer")])
                continue
            except AuthError as e:
                log.warn("signed out: {why}", why=str(e))
                if self.end_when_signed_out:
                    raise
                self._set_state(ServiceState.SIGNED_OUT)
                await self._nudged([])  # the host signs in again (api.token) and calls wake()
                continue
            failures, delays = 0, self.backoff.delays()
            self._reach(True)
            self._tell(report)
            mark = watcher.mark()
            if await ctx.run(ctx.scanner.signature) != before:
                continue  # our own downloads, or an edit made meanwhile
            if self._paused or self._stopping:
                continue
            if isinstance(watcher, NativeWatcher):  # the rules the sync just used
                local_rules = await ctx.run(load_rules, ctx.directory, [])
                watcher.rules = local_rules.with_engagement(ctx.scanner.engagement_rules)
            self._set_state(ServiceState.IDLE)
            await self._idle(watcher, mark, before)

    async def _idle(self, watcher: LocalWatcher, mark: int, signature: Signature) -> None:
        """Wait for a change here or on the server, or a nudge; errors other than the
        network's (a wipe order, a missing folder) end the service."""
        while True:
            # a failed long-poll (server down while idle) shows as offline until one answers
            self._set_state(ServiceState.IDLE if self.reachable else ServiceState.OFFLINE)
            remote = Deferred.fromCoroutine(self._remote_news())
            remote.addTimeout(self.long_poll + self.poll_grace, self.clock,
                              onTimeoutCancel=lambda _r, _t: False)
            local = watcher.changed(mark, signature)
            news = await self._nudged([remote, local])
            if isinstance(news, Exception):
                raise news
            if news is not False:
                return

    async def _remote_news(self) -> bool | Exception:
        """True when the server has changes for us (long-poll). Errors other than network
        trouble are returned, not raised: a race ignores a failing contender."""
        since = await self.copy.ctx.last_seq()
        try:
            _head, changes, _more = await self.api.changes(
                self.copy.ctx.engagement, since, 1, wait=self.long_poll)
        except NetworkError as e:
            log.warn("waiting for server changes failed: {why}", why=str(e))
            self._reach(False, str(e), self.poll_retry)
            await deferLater(self.clock, self.poll_retry, lambda: None)
            return False
        except HistoryDiverged:
            return True  # the sync reconciles
        except Exception as e:
            return e
        self._reach(True)
        return bool(changes)

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

    def _reach(self, reachable: bool, error: str | None = None,
               retry_in: float | None = None) -> None:
        """Tell of a change of reachability (only a change: one event per outage)."""
        if reachable == self.reachable:
            return
        self.reachable = reachable
        status = Reachability(reachable, error, retry_in)
        if reachable:
            log.info("{status}", status=status.describe(), reachable=True)
        else:
            log.warn("{status}", status=status.describe(), reachable=False, error=error)
        self._emit("reachability", status)

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


async def _first(ds: list[Deferred[Any]]) -> tuple[int, Any]:
    """(index, result) of the first of ``ds`` to fire; the others are cancelled (all of them
    when the wait itself is cancelled). Unlike ``race``, a failure counts as a result
    (returned as the exception)."""

    cancelled = False

    def cancel_all(_: object) -> None:
        nonlocal cancelled
        cancelled = True  # what they fire with now is no answer: the wait ends cancelled
        for d in ds:
            d.cancel()

    done: Deferred[tuple[int, Any]] = Deferred(cancel_all)

    def settle(result: Any, index: int) -> None:
        if done.called or cancelled:
            return
        value = result.value if hasattr(result, "value") and hasattr(result, "trap") else result
        done.callback((index, value))
        for other in ds:
            if other is not ds[index]:
                other.cancel()

    for i, d in enumerate(ds):
        d.addBoth(settle, i)
    return await done
