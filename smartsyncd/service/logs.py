"""Log observers the daemon adds beside twistd's own readable log file.

``[log] json_file`` adds a log for shippers: one JSON object per line (no record separator,
none of Twisted's internal event layout), each with ``time`` (ISO 8601, UTC), ``level``,
``message`` (rendered), ``event`` (the message template: the same for every event of a kind),
``namespace``, and the event's own fields that people search by (``user``, ``engagement``,
``client``, ``request_id``, ``port``...). Fields whose names look like secrets are never written;
no module logs passwords or tokens in the first place. The file is reopened on SIGUSR1, so
logrotate can move it away (``conf/logrotate.d/smartsyncd``).
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from types import FrameType
from typing import IO

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogPublisher,
    eventAsText,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

from smartsyncd.service.reload import SignalHandler

_SECRET_WORDS = ("password", "passwd", "token", "secret", "authorization", "cookie")
_SCALARS = (str, int, float, bool, type(None))


def ops_record(event: LogEvent) -> dict[str, object]:
    """The JSON object written for one Twisted log event."""
    when = datetime.fromtimestamp(float(event.get("log_time", 0.0)), UTC)
    level = event.get("log_level")
    record: dict[str, object] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "message": formatEvent(event),
        "event": event.get("log_format") or "",
        "namespace": event.get("log_namespace", ""),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "time"):
            continue
        if any(word in key.lower() for word in _SECRET_WORDS):
            continue
        if isinstance(value, _SCALARS):
            record[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, _SCALARS) for v in value):
            record[key] = list(value)
    if "log_failure" in event:
        record["error"] = eventAsText(event, includeTimestamp=False, includeSystem=False)
    return record


@implementer(ILogObserver)
class _JsonLinesObserver:
    def __init__(self, service: JsonLogService) -> None:
        self._service = service

    def __call__(self, event: LogEvent) -> None:
        out = self._service.file
        if out is None:
            return
        line = json.dumps(ops_record(event), ensure_ascii=False, default=str, separators=(",", ":"))
        out.write(line + "\n")
        out.flush()


class JsonLogService(Service):
    """Writes ``ops_record`` lines to ``path`` while the service runs; SIGUSR1 reopens it."""

    def __init__(self, path: str, publisher: LogPublisher = globalLogPublisher) -> None:
        self.path = path
        self._publisher = publisher
        self.file: IO[str] | None = None
        self._observer: ILogObserver = _JsonLinesObserver(self)
        self._previous_usr1: SignalHandler = None
        self.setName("json-log")

    def privilegedStartService(self) -> None:
        # Opened before twistd drops privileges and before other services log their start.
        self._open()
        super().privilegedStartService()

    def startService(self) -> None:
        self._open()
        self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)
        super().startService()

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self.reopen)  # type: ignore[attr-defined]
        if callable(self._previous_usr1):
            self._previous_usr1(signum, frame)

    def _open(self) -> None:
        if self.file is not None:
            return
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.file = os.fdopen(fd, "a", encoding="utf-8")
        self._publisher.addObserver(self._observer)

    def reopen(self) -> None:
        """Close the file and open ``path`` again (after logrotate moved it)."""
        old, self.file = self.file, None
        if old is not None:
            old.close()
        self._publisher.removeObserver(self._observer)
        self._open()

    def reopen_and_describe(self) -> str:
        """``reopen``, as a SIGHUP reload step."""
        self.reopen()
        return f"reopened {self.path}"

    def stopService(self) -> None:
        super().stopService()
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        self._publisher.removeObserver(self._observer)
        if self.file is not None:
            self.file.close()
            self.file = None
