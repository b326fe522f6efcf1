"""A branch's read events, kept durably until central has them (issue 18).

The branch's database is a read-only standby, so its read audit (downloads, exports, history
views: ``web/readaudit.py``) cannot be written there. ``ReadSpool.add`` writes each batch the
branch's ``ReadAudit`` flushes as one JSON-lines file in ``DATA/read-spool`` (temp file, fsync,
rename, fsync the folder): the events survive a crash and a long link outage.
``service/readforward.py`` sends the oldest files to central (``pending``) and removes them
once central recorded them (``remove``); a batch central refuses as malformed is renamed
``*.rejected`` (kept for the admin, never resent). Delivery is at least once: a link cut
between central's write and its answer sends that batch again.

Blocking: run it on the store's file pool.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

from smartsyncd.storage.readaudit import ReadEvent

SUFFIX = ".jsonl"


def event_json(event: ReadEvent) -> dict[str, Any]:
    return {
        "engagement_id": event.engagement_id, "event": event.event, "actor": event.actor,
        "at": event.at.isoformat(), "detail": event.detail,
    }


class ReadSpool:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def prepare(self) -> int:
        """Create the folder (0700); returns how many batches wait in it."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        return len(self._batches())

    def add(self, events: Sequence[ReadEvent]) -> str:
        """Durably keep one batch; returns its file name."""
        lines = "".join(json.dumps(event_json(e), default=str) + "\n" for e in events)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        temp = os.path.join(self.folder, f".{name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, lines.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, os.path.join(self.folder, name))
        self._sync_folder()
        return name

    def pending(self, max_events: int) -> list[tuple[str, list[dict[str, Any]]]]:
        """The oldest batches, whole, up to ``max_events`` events (at least one batch)."""
        out: list[tuple[str, list[dict[str, Any]]]] = []
        total = 0
        for name in self._batches():
            with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                events = [json.loads(line) for line in f if line.strip()]
            if out and total + len(events) > max_events:
                break
            out.append((name, events))
            total += len(events)
        return out

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                os.unlink(os.path.join(self.folder, name))
            except FileNotFoundError:
                pass
        self._sync_folder()

    def set_aside(self, names: Sequence[str]) -> None:
        for name in names:
            os.rename(os.path.join(self.folder, name), os.path.join(self.folder, name + ".rejected"))
        self._sync_folder()

    def _batches(self) -> list[str]:
        return sorted(n for n in os.listdir(self.folder) if n.endswith(SUFFIX) and not n.startswith("."))

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
