"""A thread pool owned by a service, for blocking work that must stay off the reactor thread.

``ThreadPoolService.run_blocking(f, *args, **kwargs)`` runs ``f`` in the pool and returns a
Deferred; it is what the web layer and the local authenticator receive as ``run_blocking``
(CPU work: chunk decompression and hashing, password hashing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_T = TypeVar("_T")
_P = ParamSpec("_P")


class ThreadPoolService(Service):
    """Starts its pool with the service and stops it (joining the threads) on shutdown."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        name: str = "cpu",
        min_threads: int = 0,
        max_threads: int = 2,
    ) -> None:
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=min_threads, maxthreads=max_threads, name=name)
        self.setName(f"{name}-pool")

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()

    def run_blocking(self, f: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        """Run ``f(*args, **kwargs)`` in the pool; the Deferred fires on the reactor thread."""
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)
