"""Log observers the daemon adds beside twistd's own readable log file.

``[log] json_file`` adds a ``twisted.logger.jsonFileLogObserver`` (one JSON event per line,
appended) for log shippers. Events carry structured fields (user, engagement, sequence...);
no module logs passwords or tokens, so none reach this file either.
"""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import (
    LogPublisher,
    globalLogPublisher,
    jsonFileLogObserver,
)


class JsonLogService(Service):
    """Adds a JSON-lines observer to ``publisher`` while the service runs."""

    def __init__(self, path: str, publisher: LogPublisher = globalLogPublisher) -> None:
        self.path = path
        self._publisher = publisher
        self._file: IO[str] | None = None
        self._observer: Any = None
        self.setName("json-log")

    def privilegedStartService(self) -> None:
        # Opened before twistd drops privileges and before other services log their start.
        self._open()
        super().privilegedStartService()

    def startService(self) -> None:
        self._open()
        super().startService()

    def _open(self) -> None:
        if self._file is not None:
            return
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stopService
        self._observer = jsonFileLogObserver(self._file)
        self._publisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            self._publisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None
