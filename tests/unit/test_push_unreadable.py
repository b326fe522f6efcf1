"""A file that changes, or cannot be opened, between the scan that hashed it and its upload
(issue 16: "a file open in Excel is retried later and reported, never half-read"): the real
engine over the in-memory server. The scanner's ``open_file`` hook only stands in for the time
passing between scan and upload; the change and the failing open are real file-system events."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from clientkit import ENG, MemoryServer, driven

from smartsyncd.client.scanner import Scanner

SIZE = 200_000  # several chunks: uploaded from a read-back of the file, not the scan's bytes


def ledger(tag: bytes) -> bytes:
    return (tag * (SIZE // len(tag) + 1))[:SIZE]


class _ThenAct:
    """A file object that, once the scan has read and re-checked it, runs ``act``."""

    def __init__(self, path: str, act: Any) -> None:
        self._f = open(path, "rb")  # noqa: SIM115  (closed in close)
        self._act = act

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _ThenAct:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
        self._act()


async def _synced_then_edited(server: MemoryServer, api: Any, folder: Path, tag: bytes) -> Path:
    """Ledger.xlsx synced, then edited: an edit is hashed by the scan and read back by the
    push (a new file is uploaded as the scan reads it: client/newfiles.py)."""
    (await server.clone(api, folder)).close()
    target = folder / "Ledger.xlsx"
    target.write_bytes(ledger(b"version zero "))
    copy = server.open(folder)
    try:
        await copy.sync(api)
    finally:
        copy.close()
    target.write_bytes(ledger(tag))
    later = os.stat(target).st_mtime_ns + 2_000_000_000
    os.utime(target, ns=(later, later))
    return target


async def _sync_with(server: MemoryServer, folder: Path, act: Any) -> Any:
    """Open the copy with a scanner whose read of Ledger.xlsx is followed by ``act``; sync."""
    acted: list[bool] = []

    def opener(path: str) -> Any:
        if path.endswith("Ledger.xlsx") and not acted:
            acted.append(True)
            return _ThenAct(path, act)
        return open(path, "rb")

    api = await server.api()
    copy = server.open(folder, scanner=Scanner(folder, open_file=opener))
    try:
        report = await copy.sync(api)
    finally:
        copy.close()
    assert acted, "the scan did not read the file"
    return report


@driven
async def test_a_file_changed_after_its_scan_is_skipped_not_committed_then_sent(
    server: MemoryServer, tmp_path: Path
) -> None:
    api = await server.api()
    target = await _synced_then_edited(server, api, tmp_path / "a", b"version one ")
    _head, before = await api.snapshot(ENG)

    def excel_saves() -> None:  # same size, new bytes: only the hashes can tell
        target.write_bytes(ledger(b"version two "))

    report = await _sync_with(server, tmp_path / "a", excel_saves)
    assert report.skipped == [("Ledger.xlsx", "changed while syncing; sent next time")]
    assert report.partial and report.uploaded == 0
    _head, files = await api.snapshot(ENG)
    assert files == before  # nothing half-read was committed

    again = server.open(tmp_path / "a")
    try:
        second = await again.sync(api)
    finally:
        again.close()
    assert second.uploaded == 1 and not second.partial
    clone = await server.clone(await server.api("bob"), tmp_path / "b")
    clone.close()
    assert (tmp_path / "b" / "Ledger.xlsx").read_bytes() == ledger(b"version two ")


@driven
async def test_a_file_that_cannot_be_opened_at_upload_is_reported_and_retried(
    server: MemoryServer, tmp_path: Path
) -> None:
    """Between the scan and the upload the path becomes a socket, which ``open`` refuses
    (ENXIO) even for root: a real failing open standing in for Windows' sharing violation."""
    api = await server.api()
    target = await _synced_then_edited(server, api, tmp_path / "a", b"final figures ")
    _head, before = await api.snapshot(ENG)
    kept = tmp_path / "kept.xlsx"
    holder = socket.socket(socket.AF_UNIX)

    def held() -> None:
        os.rename(target, kept)
        holder.bind(str(target))

    try:
        report = await _sync_with(server, tmp_path / "a", held)
    finally:
        holder.close()
    [(path, reason)] = report.skipped
    assert path == "Ledger.xlsx" and reason.startswith("cannot read now (")
    assert reason.endswith("; retried next sync") and report.partial
    _head, files = await api.snapshot(ENG)
    assert files == before

    os.unlink(target)
    os.rename(kept, target)  # the other program let go
    again = server.open(tmp_path / "a")
    try:
        second = await again.sync(api)
    finally:
        again.close()
    assert second.uploaded == 1 and not second.partial
