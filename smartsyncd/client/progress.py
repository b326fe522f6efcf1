"""Progress reporting: the callback protocol the client library calls, and a rich renderer.

The library only calls ``start``/``advance``/``finish``; what a user sees is the renderer's
business. :class:`RichProgress` (used by the CLI) draws a bar on stderr, and only for tasks
still running after ``delay`` seconds, so quick syncs print nothing but their summary.
rich is imported only when a console is first needed (a ``--quiet`` command never imports it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # rich is imported when a bar is first needed: a quiet command never is
    from rich.console import Console
    from rich.progress import Progress as _RichBar
    from rich.progress import TaskID


class Progress(Protocol):
    """Receives progress of one task at a time (a transfer of ``total_bytes``)."""

    def start(self, task: str, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Ignores progress."""

    def start(self, task: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """A rich progress bar, shown only for a task that takes longer than ``delay`` seconds."""

    def __init__(
        self,
        console: Console | None = None,
        quiet: bool = False,
        *,
        delay: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self.quiet = quiet
        self.delay = delay
        self._now = now
        self._task: str | None = None
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._bar: _RichBar | None = None
        self._bar_task: TaskID | None = None

    @property
    def console(self) -> Console:
        """The console the bar is drawn on (stderr unless one was given), made on first use."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    @property
    def showing(self) -> bool:
        """Whether a bar is on screen now."""
        return self._bar is not None

    def start(self, task: str, total_bytes: int) -> None:
        self.finish()
        self._task = task
        self._total = max(0, total_bytes)
        self._done = 0
        self._started = self._now()

    def advance(self, nbytes: int) -> None:
        if self._task is None:
            return
        self._done += nbytes
        if self._bar is None:
            if self.quiet or not self.console.is_terminal:
                return
            if self._now() - self._started < self.delay:
                return
            self._show()
        assert self._bar is not None and self._bar_task is not None
        self._bar.update(self._bar_task, completed=self._done)

    def _show(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as _RichBar

        self._bar = _RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._bar_task = self._bar.add_task(
            self._task or "", total=self._total or None, completed=self._done
        )

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = None
        self._bar_task = None
        self._task = None
