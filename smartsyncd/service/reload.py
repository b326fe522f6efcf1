"""SIGHUP: reload what can change safely while the daemon runs, and say what was done.

twistd leaves SIGHUP at its default action, which ended the daemon without a log line. The
``ReloadService`` catches it and runs each registered step (reopen the log files, reload the
TLS certificate...) on the reactor thread, logging one line per step: what it did, or why it
could not. A failing step never stops the daemon and never stops the other steps.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

if TYPE_CHECKING:
    from smartsyncd.service.reactor import DaemonReactor

log = Logger(namespace="smartsyncd.service")

ReloadStep = Callable[[], "str | Awaitable[str]"]
# what signal.signal returns (and takes back)
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class ReloadService(Service):
    """Runs the registered reload steps on SIGHUP (or when ``reload`` is called)."""

    def __init__(self, reactor: DaemonReactor) -> None:
        self._reactor = reactor
        self._steps: list[tuple[str, ReloadStep]] = []
        self._previous: SignalHandler = None
        self.setName("reload")

    def add_step(self, name: str, step: ReloadStep) -> None:
        """``step`` returns (or resolves to) a short description of what it changed."""
        self._steps.append((name, step))

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_hup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[list[str]]:
        """Run every step; the Deferred fires with one line per step."""
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> list[str]:
        log.info("SIGHUP: reloading ({count} steps)", count=len(self._steps))
        lines = []
        for name, step in self._steps:
            try:
                result = step()
                if not isinstance(result, str):
                    result = await result
                log.info("reload {step}: {result}", step=name, result=result)
                lines.append(f"{name}: {result}")
            except Exception as e:  # noqa: BLE001 - a failed step is reported, never fatal
                log.warn("reload {step} failed: {problem}", step=name, problem=str(e) or type(e).__name__)
                lines.append(f"{name}: failed: {e}")
        return lines
