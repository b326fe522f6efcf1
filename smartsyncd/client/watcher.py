"""Local-change notices for ``watch``: the system's file watcher, with the stat walk as fallback.

A ``NativeWatcher`` asks the operating system for events (watchdog: inotify on Linux, FSEvents on
macOS, ReadDirectoryChangesW on Windows) and costs nothing while the folder is idle, where a
stat walk of 10,000 files every second costs a laptop a steady slice of a core. Events arrive on
watchdog's thread and are handed to the reactor; a change is reported once the folder has been
quiet for ``settle`` seconds (an application saving a workbook writes a temp file, renames,
deletes: one sync, not three), or after ``max_delay`` of continuous writes. Events for the
client's own state folder and temp files, and for ignored names, are dropped. A slow safety
net still compares stat signatures every ``safety_interval`` seconds, because event queues can
overflow and network shares may not report at all.

When the system watcher cannot start (no inotify watches left, an unsupported volume), or
watchdog is missing, ``PollingWatcher`` compares stat signatures every ``interval`` seconds, as
before. Both are driven by an injected clock, so tests control time.

``mark()`` starts a new watch generation: the engine takes it together with the signature after a
sync, and ``changed(mark, signature)`` fires for any change after that point.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from smartsyncd.client.localfs import TEMP_PREFIX
from smartsyncd.client.state import STATE_DIR
from smartsyncd.core.ignore import IgnoreRules

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

log = Logger()

Signature = frozenset[tuple[str, int, int, int]]
SignatureOf = Callable[[], Awaitable[Signature]]  # a stat walk, run off the reactor


class LocalWatcher(Protocol):
    """What ``watch`` needs to wait for local changes."""

    native: bool

    def mark(self) -> int: ...

    def changed(self, mark: int, signature: Signature) -> Deferred[bool]: ...

    def stop(self) -> None: ...


class PollingWatcher:
    """Compare stat signatures every ``interval`` seconds (the fallback)."""

    native = False

    def __init__(self, signature_of: SignatureOf, clock: IReactorTime, interval: float = 1.0
                 ) -> None:
        self._signature_of = signature_of
        self._clock = clock
        self.interval = interval

    def mark(self) -> int:
        return 0

    def changed(self, mark: int, signature: Signature) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._poll(signature))

    async def _poll(self, signature: Signature) -> bool:
        while True:
            await _sleep(self._clock, self.interval)
            if await self._signature_of() != signature:
                return True

    def stop(self) -> None:
        pass


class NativeWatcher:
    """System file events, debounced, with a slow stat-walk safety net."""

    native = True

    def __init__(
        self,
        root: Path,
        signature_of: SignatureOf,
        clock: IReactorTime,
        *,
        settle: float = 1.0,
        max_delay: float = 10.0,
        safety_interval: float = 600.0,
        rules: IgnoreRules | None = None,
    ) -> None:
        self.root = Path(os.path.normpath(root))
        self._signature_of = signature_of
        self._call_later = clock.callLater
        self._seconds = clock.seconds
        self.settle = settle
        self.max_delay = max_delay
        self.safety_interval = safety_interval
        self.rules = rules or IgnoreRules.parse()  # the engine refreshes them each round
        self._generation = 0
        self._changed_in = -1  # the newest generation that saw a relevant event
        self._first_event: float | None = None
        self._waiter: Deferred[bool] | None = None
        self._settle_call: IDelayedCall | None = None
        self._safety_call: IDelayedCall | None = None
        self.events_seen = 0  # relevant events, for tests and status
        self.seen_paths: deque[str] = deque(maxlen=100)  # the latest relevant paths
        self._observer: BaseObserver | None = None
        self.stopping: threading.Thread | None = None  # stops watchdog's threads (see stop)

    def start(self, reactor: IReactorFromThreads) -> None:
        """Start the system watcher (raises OSError or ImportError when it cannot run)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        notice = self.notice

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads (our own scans included) change nothing
                for raw in (event.src_path, event.dest_path):
                    if raw:
                        reactor.callFromThread(notice, os.fsdecode(raw))

        observer = Observer()
        observer.schedule(Handler(), os.fspath(self.root), recursive=True)
        observer.daemon = True
        observer.start()  # raises when inotify watches run out, for example
        self._observer = observer

    def stop(self) -> None:
        """Stop waiting at once; watchdog's threads are stopped and joined on a thread of their
        own, since ``Observer.stop`` joins its emitters and must never hold up the reactor
        (a watch told to stop has to stop even if a system watcher is slow to let go)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            stopper = threading.Thread(
                target=_stop_observer, args=(observer,), name="smartsync-watch-stop", daemon=True
            )
            stopper.start()
            self.stopping = stopper
        self._forget(self._waiter)

    def mark(self) -> int:
        self._generation += 1
        self._first_event = None
        self._cancel_settle()
        return self._generation

    def notice(self, full_path: str) -> None:
        """One file-system event (called in the reactor thread)."""
        rel = self._relative(full_path)
        if rel is None:
            return
        self.events_seen += 1
        self.seen_paths.append(rel)
        self._changed_in = self._generation
        now = self._seconds()
        if self._first_event is None:
            self._first_event = now
        if self._waiter is not None:
            self._arm_settle(now)

    def changed(self, mark: int, signature: Signature) -> Deferred[bool]:
        waiter: Deferred[bool] = Deferred(self._forget)
        self._waiter = waiter
        if self._changed_in >= mark:
            self._arm_settle(self._seconds())
        self._safety_call = self._call_later(self.safety_interval, self._safety_check,
                                                  signature)
        return waiter

    def _safety_check(self, signature: Signature) -> None:
        self._safety_call = None

        def compared(now: Signature) -> None:
            if self._waiter is None:
                return
            if now != signature:
                log.info("a local change was found by the periodic check, not by an event")
                self._fire()
            else:
                self._safety_call = self._call_later(
                    self.safety_interval, self._safety_check, signature)

        async def check() -> None:
            try:
                compared(await self._signature_of())
            except Exception:
                log.failure("the periodic check for local changes failed")

        Deferred.fromCoroutine(check())

    def _arm_settle(self, now: float) -> None:
        first = self._first_event if self._first_event is not None else now
        delay = max(0.0, min(self.settle, first + self.max_delay - now))
        self._cancel_settle()
        self._settle_call = self._call_later(delay, self._fire)

    def _fire(self) -> None:
        self._settle_call = None
        waiter = self._waiter
        self._forget(waiter)
        if waiter is not None and not waiter.called:
            waiter.callback(True)

    def _cancel_settle(self) -> None:
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        self._settle_call = None

    def _forget(self, waiter: Deferred[bool] | None) -> None:
        if self._waiter is waiter:
            self._waiter = None
        self._cancel_settle()
        if self._safety_call is not None and self._safety_call.active():
            self._safety_call.cancel()
        self._safety_call = None

    def _relative(self, full_path: str) -> str | None:
        """The copy-relative path of an event worth a sync, or None."""
        try:
            rel = Path(os.path.normpath(full_path)).relative_to(self.root).as_posix()
        except ValueError:
            return None
        if rel in ("", ".") or rel == STATE_DIR or rel.startswith(STATE_DIR + "/"):
            return None
        name = rel.rsplit("/", 1)[-1]
        # an ignored folder's own event as well (a file with that name waits for the next
        # event or the safety net)
        if name.startswith(TEMP_PREFIX) or self.rules.ignores(rel) or (
            self.rules.ignores_folder(rel)
        ):
            return None
        return rel


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    observer.join()


def _sleep(clock: IReactorTime, seconds: float) -> Deferred[None]:
    return deferLater(clock, seconds, lambda: None)


def make_watcher(
    root: Path,
    signature_of: SignatureOf,
    clock: IReactorTime,
    reactor: IReactorFromThreads | None,
    *,
    poll_interval: float = 1.0,
    native: bool = True,
    rules: IgnoreRules | None = None,
) -> LocalWatcher:
    """The system watcher when it can start, else the polling fallback (logged)."""
    if native and reactor is not None:
        watcher = NativeWatcher(root, signature_of, clock, rules=rules)
        try:
            watcher.start(reactor)
            return watcher
        except (OSError, ImportError) as e:
            log.warn("cannot watch {root} for changes ({why}); checking every {n} s instead",
                     root=str(root), why=str(e), n=poll_interval)
    return PollingWatcher(signature_of, clock, poll_interval)
