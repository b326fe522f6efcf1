"""The client's wipe routine (client/wipe.py) on real copy folders: what goes, what a link
keeps safe, an order for another copy, and a wipe interrupted half-way resumed at the next start.

The server here is a recorder of ``report_wipe`` calls only: any other call (an upload, a
commit) would fail the test with AttributeError, which is the point.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from smartsyncd.client import wipe
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import NetworkError, ProtocolError, WipeInterrupted, WipeOrdered
from smartsyncd.client.state import ClientState, CopyMeta

SERVER = "https://127.0.0.1:8443"
META = CopyMeta(SERVER, "acme-2026", "alice", "copy-1")


class ReportRecorder:
    """Only what a wipe may send: its report. ``fail`` makes the next reports fail."""

    def __init__(self, base_url: str = SERVER) -> None:
        self.base_url = base_url
        self.copy_id: str | None = None
        self.reports: list[tuple[str, str, str, str, int]] = []
        self.fail = False

    async def report_wipe(self, eng: str, copy_id: str, key: str, host: str, files: int) -> dict:
        if self.fail:
            raise NetworkError("cannot reach the server", retryable=True)
        self.reports.append((eng, copy_id, key, host, files))
        return {"copy": copy_id}


async def run_here(fn: Any, *args: Any) -> Any:
    return fn(*args)


def result_of(coro: Any) -> Any:
    d = Deferred.fromCoroutine(coro)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the wipe waited on something"
    if isinstance(out[0], BaseException) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def order(copy: str = "copy-1", engagement: str = "acme-2026") -> WipeOrdered:
    return WipeOrdered("wipe_ordered", "wipe", 410, {
        "engagement": engagement, "copy": copy, "ordered_by": "admin:root",
        "ordered_at": "2026-12-05T12:00:00Z",
    })


def make_copy(root: Path) -> tuple[Path, Path]:
    """A copy with nested folders, an unsynced edit, and links to a folder and a file outside
    it; returns (copy, outside)."""
    copy = root / "copy"
    outside = root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the copy's")
    copy.mkdir()
    ClientState.create(copy, META).close()
    (copy / "a.txt").write_text("a")
    (copy / "sub" / "deeper").mkdir(parents=True)
    (copy / "sub" / "b.txt").write_text("b")
    (copy / "sub" / "deeper" / "c.txt").write_text("c")
    (copy / "unsynced edit.xlsx").write_bytes(b"pending work")
    os.symlink(outside, copy / "sub" / "linked folder")
    os.symlink(outside / "keep.txt", copy / "linked file")
    (copy / ".smartsync" / "base").mkdir()
    (copy / ".smartsync" / "base" / "x.zst").write_bytes(b"cached")
    return copy, outside


def forget_into(seen: list[str]) -> Any:
    return seen.append


def test_a_wipe_removes_the_copy_and_its_settings_never_what_a_link_points_to(tmp_path: Path) -> None:
    copy, outside = make_copy(tmp_path)
    assert wipe.count_files(copy) == 6  # 4 files and 2 links; .smartsync left out
    opened = SyncCopy.open(copy)
    key = opened.state.copy_key()
    server, forgotten = ReportRecorder(), []
    result = result_of(wipe.obey(
        copy, opened.state, opened.lock, server, order(), run_here, forget_into(forgotten)
    ))
    assert result.files_removed == 6 and result.reported and not result.resumed
    assert list(copy.iterdir()) == []  # files, folders, links and .smartsync all gone
    assert (outside / "keep.txt").read_text() == "not the copy's"  # links were not followed
    assert forgotten == [SERVER]
    assert server.reports == [("acme-2026", "copy-1", key, server.reports[0][3], 6)]
    assert len(hashlib.sha256(bytes.fromhex(key)).hexdigest()) == 64


def test_an_order_for_another_copy_or_from_another_server_deletes_nothing(tmp_path: Path) -> None:
    copy, _ = make_copy(tmp_path)
    opened = SyncCopy.open(copy)
    for bad, server in ((order(copy="copy-2"), ReportRecorder()),
                        (order(engagement="other"), ReportRecorder()),
                        (order(), ReportRecorder("https://evil.example:8443"))):
        with pytest.raises(ProtocolError):
            result_of(wipe.obey(copy, opened.state, opened.lock, server, bad, run_here, print))
        assert server.reports == []
    assert (copy / "a.txt").read_text() == "a" and (copy / ".smartsync" / "state.sqlite3").exists()
    assert not wipe.wipe_marker_path(copy).exists()
    opened.close()


def test_a_folder_swapped_for_a_link_is_unlinked_not_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy, outside = make_copy(tmp_path)
    (copy / "late").mkdir()
    real_open = wipe.open_fd

    def swap_then_open(name: Any, flags: int, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
        # the race the descriptor walk closes: listed as a folder, a link when opened
        if name == "late":
            os.rmdir(copy / "late")
            os.symlink(outside, copy / "late")
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(wipe, "open_fd", swap_then_open)
    assert wipe._clear(copy, frozenset({".smartsync"}), follow=True) == 7  # 6 + the late link
    assert (outside / "keep.txt").read_text() == "not the copy's"
    assert sorted(p.name for p in copy.iterdir()) == [".smartsync"]


def test_a_crash_mid_wipe_is_resumed_at_the_next_start_and_never_synced(tmp_path: Path) -> None:
    copy, outside = make_copy(tmp_path)
    opened = SyncCopy.open(copy)
    key = opened.state.copy_key()
    marker = wipe.WipeMarker(SERVER, "acme-2026", "copy-1", key, "admin:root", "t", 6)
    wipe.begin(copy, marker)
    opened.close()
    # the crash: the settings and one folder went, the rest did not
    wipe._clear(copy / ".smartsync", frozenset({wipe.WIPE_FILE, "lock"}), follow=False)
    wipe._clear(copy / "sub", frozenset(), follow=True)
    assert (copy / "a.txt").exists()

    with pytest.raises(WipeInterrupted):  # never opened for a sync that would push deletions
        SyncCopy.open(copy)
    assert wipe.read_wipe_marker(copy) == marker

    server, forgotten = ReportRecorder(), []
    server.fail = True  # first start: the server cannot be reached
    first = result_of(wipe.resume(copy, marker, server, run_here, forget_into(forgotten)))
    assert first.resumed and not first.reported and "cannot reach" in (first.problem or "")
    assert sorted(p.name for p in copy.iterdir()) == [".smartsync"]  # files gone anyway
    assert forgotten == [SERVER]  # and so is the token
    assert wipe.read_wipe_marker(copy) == marker  # kept until reported

    server.fail = False  # next start: reported, marker gone
    second = result_of(wipe.resume(copy, marker, server, run_here, forget_into(forgotten)))
    assert second.reported and second.files_removed == 6
    assert server.reports[0][:3] == ("acme-2026", "copy-1", key)
    assert list(copy.iterdir()) == [] and (outside / "keep.txt").exists()


def test_a_damaged_marker_stops_rather_than_guessing(tmp_path: Path) -> None:
    copy, _ = make_copy(tmp_path)
    wipe.wipe_marker_path(copy).write_text("{not json")
    with pytest.raises(WipeInterrupted):
        wipe.read_wipe_marker(copy)
    assert (copy / "a.txt").exists()
