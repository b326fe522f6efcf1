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
    (await server.clone(api, tmp_path / "a")).close()
    target = tmp_path / "a" / "Ledger.xlsx"
    target.write_bytes(ledger(b"version one "))

    def excel_saves() -> None:  # same size, new bytes: only the hashes can tell
        target.write_bytes(ledger(b"version two "))

    report = await _sync_with(server, tmp_path / "a", excel_saves)
    assert report.skipped == [("Ledger.xlsx", "changed while syncing; sent next time")]
    assert report.partial and report.uploaded == 0
    _head, files = await api.snapshot(ENG)
    assert [f.path for f in files] == []  # nothing half-read was committed

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
    (await server.clone(api, tmp_path / "a")).close()
    target = tmp_path / "a" / "Ledger.xlsx"
    target.write_bytes(ledger(b"final figures "))
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
    assert [f.path for f in files] == []

    os.unlink(target)
    os.rename(kept, target)  # the other program let go
    again = server.open(tmp_path / "a")
    try:
        second = await again.sync(api)
    finally:
        again.close()
    assert second.uploaded == 1 and not second.partial
