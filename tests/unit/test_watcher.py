"""The local-change watcher of ``watch`` (client/watcher.py): debounce and safety net on a
Clock, idle cost counted in stat walks, the polling fallback (real inotify events:
tests/integration/test_watcher_events.py)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock

from smartsyncd.client.watcher import NativeWatcher, PollingWatcher, Signature, make_watcher
from smartsyncd.core.ignore import IgnoreRules

EMPTY: Signature = frozenset()
CHANGED: Signature = frozenset({("a.xlsx", 1, 1, 1)})


class Walks:
    """A stand-in stat walk that counts its calls and returns what the test sets."""

    def __init__(self) -> None:
        self.count = 0
        self.result = EMPTY

    async def __call__(self) -> Signature:
        self.count += 1
        return self.result


def native(tmp_path: Path, clock: Clock, walks: Walks, **kw: float) -> NativeWatcher:
    return NativeWatcher(tmp_path, walks, clock, rules=IgnoreRules.parse("drafts/\n"),
                         **kw)


def test_a_burst_of_events_is_one_change_after_the_folder_settles(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    w = native(tmp_path, clock, walks, settle=1.0)
    fired = w.changed(w.mark(), EMPTY)
    for _ in range(3):  # an application saving: temp file, rename, delete
        w.notice(str(tmp_path / "Ledger.xlsx"))
        clock.advance(0.5)
    assert not fired.called
    clock.advance(0.5)
    assert fired.called and walks.count == 0  # no stat walk was needed


def test_continuous_writes_still_sync_after_max_delay(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    w = native(tmp_path, clock, walks, settle=1.0, max_delay=10.0)
    fired = w.changed(w.mark(), EMPTY)
    for _ in range(19):
        w.notice(str(tmp_path / "big.pst"))
        clock.advance(0.5)
    assert not fired.called
    w.notice(str(tmp_path / "big.pst"))
    clock.advance(0.5)
    assert fired.called


def test_own_state_temp_files_and_ignored_names_are_not_changes(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    w = native(tmp_path, clock, walks)
    fired = w.changed(w.mark(), EMPTY)
    for name in (".smartsync/state.db", ".smartsync", ".~smartsync-1.tmp", "Q1/.~smartsync-2.tmp",
                 "~$Ledger.xlsx", "drafts/x.xlsx", "Thumbs.db", "../outside.txt"):
        w.notice(str(tmp_path / name))
    clock.advance(5)
    assert not fired.called and w.events_seen == 0
    w.notice(str(tmp_path / "Q1" / "Cash.xlsx"))
    clock.advance(1)
    assert fired.called and w.events_seen == 1


def test_an_event_after_the_mark_counts_even_before_waiting(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    w = native(tmp_path, clock, walks)
    w.notice(str(tmp_path / "before-mark.xlsx"))  # e.g. our own download, during the sync
    mark = w.mark()
    quiet = w.changed(mark, EMPTY)
    clock.advance(5)
    assert not quiet.called
    quiet.cancel()
    quiet.addErrback(lambda f: None)
    mark = w.mark()
    w.notice(str(tmp_path / "edited-meanwhile.xlsx"))
    fired = w.changed(mark, EMPTY)
    clock.advance(1)
    assert fired.called


def test_the_safety_net_walks_rarely_and_finds_what_events_missed(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    w = native(tmp_path, clock, walks, safety_interval=600.0)
    fired = w.changed(w.mark(), EMPTY)
    clock.advance(599)
    assert walks.count == 0
    clock.advance(1)
    assert walks.count == 1 and not fired.called  # nothing changed: waits for the next round
    walks.result = CHANGED
    clock.advance(600)
    assert walks.count == 2 and fired.called
    assert clock.getDelayedCalls() == []  # nothing left scheduled once it fired


def test_idle_cost_an_hour_native_against_polling(tmp_path: Path) -> None:
    clock, native_walks, polling_walks = Clock(), Walks(), Walks()
    w = native(tmp_path, clock, native_walks, safety_interval=600.0)
    waiting = w.changed(w.mark(), EMPTY)
    poller = PollingWatcher(polling_walks, clock, interval=1.0)
    polling = poller.changed(poller.mark(), EMPTY)
    for _ in range(3600):
        clock.advance(1)
    assert not waiting.called and not polling.called
    assert native_walks.count == 6 and polling_walks.count == 3600
    waiting.cancel()
    waiting.addErrback(lambda f: None)
    polling.cancel()
    polling.addErrback(lambda f: None)
    assert clock.getDelayedCalls() == []  # cancelling leaves no timer behind


def test_polling_fallback_reports_a_changed_signature(tmp_path: Path) -> None:
    clock, walks = Clock(), Walks()
    poller = PollingWatcher(walks, clock, interval=2.0)
    fired = poller.changed(poller.mark(), EMPTY)
    clock.advance(2)
    clock.advance(2)
    assert walks.count == 2 and not fired.called
    walks.result = CHANGED
    clock.advance(2)
    assert fired.called


def test_a_folder_that_cannot_be_watched_falls_back_to_polling(tmp_path: Path) -> None:
    w = make_watcher(tmp_path / "missing", Walks(), Clock(), reactor, poll_interval=3.0)
    assert isinstance(w, PollingWatcher) and w.interval == 3.0
    assert not make_watcher(tmp_path, Walks(), Clock(), None).native  # no reactor: polling
