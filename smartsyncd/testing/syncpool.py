"""A synchronous stand-in for the store's thread pools, for unit tests with no running reactor.

``SyncThreadPool`` runs each job at once, in the calling thread, and ``SyncReactor`` delivers
its result at once: ``deferToThreadPool`` then returns a Deferred that has already fired, so a
``SqlServerStore`` coroutine runs to its end inside ``run_sync``. The SQL, the transactions and
the error mapping are the real ones; only the thread hop is gone (so this cannot show a
blocking call on the reactor thread, nor a race between pools). ``open_sync_sqlite_store``
opens a store on it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from smartsyncd.storage.sqlite import open_server_store
from smartsyncd.storage.sqlstore import SqlServerStore

T = TypeVar("T")
R = TypeVar("R")


class SyncThreadPool(ThreadPool):
    """A ``ThreadPool`` that runs every job immediately in the caller's thread."""

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(  # noqa: N802 - Twisted's name
        self, onResult: Callable[[bool, R], object] | None, func: Callable[..., R], *args: Any, **kw: Any
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            if onResult is not None:
                onResult(False, Failure())  # type: ignore[arg-type]  # as ThreadPool does
            return
        if onResult is not None:
            onResult(True, result)


class SyncReactor:
    """The one reactor method ``deferToThreadPool`` uses: ``callFromThread``, run at once."""

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:  # noqa: N802
        f(*args, **kw)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that only awaits already-fired Deferreds; return or raise its result."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the coroutine waited for something that is not synchronous")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return cast(T, outcome[0])


def open_sync_store(
    data_dir: str, database_url: str | None = None, now: Callable[[], datetime] | None = None
) -> SqlServerStore:
    """``storage.sqlite.open_server_store`` (SQLite, or PostgreSQL given its URL) with every
    pool a ``SyncThreadPool``: a store whose coroutines complete inside ``run_sync``."""
    return run_sync(
        open_server_store(
            data_dir, reactor=SyncReactor(), database_url=database_url, now=now, pool=SyncThreadPool
        )
    )


def open_sync_sqlite_store(data_dir: str, now: Callable[[], datetime] | None = None) -> SqlServerStore:
    """A migrated SQLite ``SqlServerStore`` in ``data_dir`` on synchronous pools."""
    return open_sync_store(data_dir, None, now)
