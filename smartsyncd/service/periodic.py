"""A service that pokes itself on a timer (the branch's cache trimmer and read forwarder): a
``LoopingCall`` on the injected clock while running, and a stop that waits for the work the
last poke started (``_running``)."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class PeriodicService(Service):
    """Calls ``poke`` at once on start and every ``interval`` seconds on ``clock`` after."""

    def __init__(self, clock: IReactorTime, interval: float, name: str) -> None:
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None  # the work a poke started, if any
        self.setName(name)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        loop = LoopingCall(self.poke)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self._interval, now=True)

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._running

    def poke(self) -> None:
        raise NotImplementedError
