"""``smartsync export``: materialize an engagement as it stood at a moment (docs/workflow.md).

The server answers which version of each file was current after the last change committed at
or before that moment (``GET .../export?at=``); each file is assembled from its manifest and
fetched chunks (verified by hash on arrival) into a temp file, fsynced and renamed into a new
or empty folder, with the version's date and read-only attribute. A version past the engagement's retention is listed as ``missing`` and not
written; nothing is ever half-written under its final name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from twisted.internet.threads import deferToThread

from smartsyncd.client import osfs
from smartsyncd.client.errors import ProtocolError, UsageError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.localfs import discard_temp, finish_temp, fsync_dir, open_temp
from smartsyncd.client.nofollow import ensure_folder
from smartsyncd.client.pullwrite import apply_attributes
from smartsyncd.client.wire import wire_mtime
from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.model import ChunkRef, is_folder
from smartsyncd.core.paths import normalize_path
from smartsyncd.runtime.blocking import RunBlocking

WINDOW = 8 * 1024 * 1024


@dataclass
class ExportReport:
    seq: int = 0  # the change-log position the export reflects
    files: int = 0
    folders: int = 0  # empty folders (folder entries) made
    bytes: int = 0
    missing: list[str] = field(default_factory=list)  # past retention: not written

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq, "files": self.files, "folders": self.folders, "bytes": self.bytes,
            "missing": self.missing,
        }


def _prepare(path: Path) -> None:
    if osfs.exists(path):
        if not osfs.is_dir(path):
            raise UsageError(f"{path} exists and is not a folder")
        if any(osfs.list_names(path)):
            raise UsageError(f"{path} is not empty: export into a new or empty folder")
        return
    osfs.make_folders(path)
    fsync_dir(path.parent)


def _make_folder(root: Path, target: Path) -> None:
    """Make ``target`` and its parents inside ``root`` (blocking), durably."""
    ensure_folder(root, target)
    fsync_dir(target.parent)


async def export_engagement(
    api: ServerAPI,
    engagement: str,
    at: datetime,
    directory: Path,
    run_blocking: RunBlocking = deferToThread,
) -> ExportReport:
    root = directory.absolute()
    seq, files = await api.export(engagement, at)
    await run_blocking(_prepare, root)
    report = ExportReport(seq=seq)
    for item in files:
        path = item.get("path")
        try:
            if not isinstance(path, str) or normalize_path(path) != path:
                raise ProtocolError(f"server sent an invalid path {path!r}")
        except InvalidPath as exc:
            raise ProtocolError(f"server sent an invalid path {path!r}") from exc
        if not item.get("available", True):
            report.missing.append(path)
            continue
        content = item.get("content")
        if not isinstance(content, str):
            raise ProtocolError(f"export answer names no content for {path}")
        target = root / path
        if is_folder(content):  # an empty folder as it stood (docs/protocol.md)
            await run_blocking(_make_folder, root, target)
            report.folders += 1
            continue
        manifest = await api.manifest(engagement, content)
        temp, handle = await run_blocking(open_temp, root, target)
        try:
            window: list[ChunkRef] = []
            size = 0
            for chunk in [*manifest.chunks, None]:
                if chunk is not None and (not window or size + chunk.size <= WINDOW):
                    window.append(chunk)
                    size += chunk.size
                    continue
                if window:
                    data = await api.fetch_chunks(engagement, window)
                    await run_blocking(_write, handle, [data[c.hash] for c in window])
                if chunk is not None:
                    window, size = [chunk], chunk.size
            await run_blocking(finish_temp, temp, handle, target)
        except BaseException:
            await run_blocking(discard_temp, temp, handle)
            raise
        await run_blocking(apply_attributes, target, wire_mtime(item), item.get("readonly") is True)
        report.files += 1
        report.bytes += manifest.size
    return report


def _write(handle: BinaryIO, parts: list[bytes]) -> None:
    for part in parts:
        handle.write(part)
