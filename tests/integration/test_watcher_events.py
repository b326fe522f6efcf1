"""The native watcher of ``watch`` (client/watcher.py) on real inotify events, delivered
through the running reactor (so here, not in tests/unit): a real file event wakes it, and
events for ignored files alone do not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from smartsyncd.client.watcher import NativeWatcher, make_watcher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_watcher import EMPTY, Walks  # noqa: E402

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_a_real_file_event_wakes_the_watcher(tmp_path: Path) -> None:
    (tmp_path / "Q1").mkdir()
    walks = Walks()
    w = make_watcher(tmp_path, walks, reactor, reactor)
    assert isinstance(w, NativeWatcher)
    w.settle = 0.05
    try:
        fired = w.changed(w.mark(), EMPTY)
        (tmp_path / "Q1" / "Cash.xlsx").write_bytes(b"new figures")
        assert await fired.addTimeout(30, reactor) is True
        assert w.events_seen >= 1 and walks.count == 0
    finally:
        w.stop()


@pytest.mark.parametrize("name", ["~$Cash.xlsx", ".smartsync/state.db"])
@pytest_twisted.ensureDeferred
async def test_real_events_for_ignored_files_do_not_wake_it(tmp_path: Path, name: str) -> None:
    (tmp_path / ".smartsync").mkdir()
    w = make_watcher(tmp_path, Walks(), reactor, reactor)
    assert isinstance(w, NativeWatcher)
    w.settle = 0.05
    try:
        quiet = w.changed(w.mark(), EMPTY)
        (tmp_path / name).write_bytes(b"noise")
        (tmp_path / "marker.txt").write_bytes(b"a real change, after the noise")
        assert await quiet.addTimeout(30, reactor) is True
        # the noise came first and was dropped: only the marker's events counted
        assert w.events_seen >= 1
        assert all("marker" in p for p in w.seen_paths)
    finally:
        w.stop()


@pytest_twisted.ensureDeferred
async def test_stop_returns_at_once_and_the_system_watcher_ends(tmp_path: Path) -> None:
    """``stop`` hands watchdog's stop-and-join to a thread of its own: a stuck or slow emitter
    can never freeze the reactor of a ``watch`` told to stop (Ctrl-C)."""
    w = make_watcher(tmp_path, Walks(), reactor, reactor)
    assert isinstance(w, NativeWatcher)
    observer = w._observer
    assert observer is not None and observer.is_alive()
    pending = w.changed(w.mark(), EMPTY)
    w.stop()
    assert w.stopping is not None
    assert not pending.called  # forgotten, not fired: a stopped watcher reports nothing
    w.stopping.join(30)
    assert not w.stopping.is_alive() and not observer.is_alive()
    (tmp_path / "late.txt").write_bytes(b"after the stop")
    assert not pending.called
