"""What each ``smartsync-admin`` command module is handed: the open store, the output, one error.

``cli/admin.py`` builds the parser and the context; command modules such as
``cli/admin_workflow.py`` receive an ``AdminContext`` and import nothing back from ``admin``.
"""

from __future__ import annotations

from typing import Protocol, TextIO

from smartsyncd.storage.api import EngagementRecord, ServerStore


class AdminError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class AdminContext(Protocol):
    """The open store and where normal output goes."""

    store: ServerStore
    out: TextIO

    def say(self, line: str) -> None:
        """Write one line of normal output."""

    async def engagement(self, name: str) -> EngagementRecord:
        """The engagement called ``name``; ``AdminError`` when there is none."""
