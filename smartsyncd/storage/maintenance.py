"""The outcome of the last ``fsck`` and ``gc``, kept in ``DATA/maintenance.json``.

``smartsync-admin fsck`` and ``gc`` run in their own process; the daemon shows their last
outcome in its metrics (``smartsync_fsck_*``, ``smartsync_gc_*``, web/metrics.py) by reading
this file when scraped. ``RecordingStore`` wraps the store the admin command uses and writes
the file (crash-safe: temp file, fsync, rename) after each ``fsck`` and each engagement's
``gc``. Two admin commands finishing at the same moment: the last write wins, which is still
a true last outcome. Blocking: call ``read_record`` and ``update_record`` on a thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from smartsyncd.storage.api import FsckProblem, GcReport
from smartsyncd.storage.durable import write_durably

FILE_NAME = "maintenance.json"


def record_path(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def read_record(data_dir: str) -> dict[str, Any]:
    """The record, or ``{}`` when there is none (or it cannot be read or parsed)."""
    try:
        with open(record_path(data_dir), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def update_record(data_dir: str, change: Callable[[dict[str, Any]], None]) -> None:
    record = read_record(data_dir)
    change(record)
    write_durably(record_path(data_dir), json.dumps(record, sort_keys=True).encode() + b"\n")


def fsck_done(data_dir: str, at: datetime, problems: list[FsckProblem]) -> None:
    def change(record: dict[str, Any]) -> None:
        record["fsck"] = {"finished_at": at.timestamp(), "problems": len(problems)}

    update_record(data_dir, change)


def gc_done(data_dir: str, at: datetime, report: GcReport) -> None:
    """Keep ``report`` as its engagement's last gc outcome."""

    def change(record: dict[str, Any]) -> None:
        gc = record.setdefault("gc", {})
        gc[report.engagement] = {
            "finished_at": at.timestamp(),
            "skipped": report.skipped is not None,
            "bytes_freed": report.bytes_freed,
            "chunks_removed": report.chunks_removed,
            "packs_removed": report.packs_removed,
        }

    update_record(data_dir, change)


class RecordingStore:
    """The admin command's store: ``fsck`` and ``gc`` also write their outcome; every other
    call is passed on untouched."""

    def __init__(self, store: Any, data_dir: str, now: Callable[[], datetime],
                 run_blocking: Callable[..., Any]) -> None:
        self._store = store
        self.inner = store  # looked through for the lifecycle methods (lifecycle_or_none)
        self._data_dir = data_dir
        self._now = now
        self._run_blocking = run_blocking

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def fsck(self) -> list[FsckProblem]:
        problems: list[FsckProblem] = await self._store.fsck()
        await self._record(fsck_done, problems)
        return problems

    async def gc(self, engagement_id: int, grace: timedelta) -> GcReport:
        report: GcReport = await self._store.gc(engagement_id, grace)
        await self._record(gc_done, report)
        return report

    async def _record(self, done: Callable[..., None], outcome: Any) -> None:
        try:
            await self._run_blocking(done, self._data_dir, self._now(), outcome)
        except OSError:
            pass  # an account that may not write the data folder: the check itself stands
