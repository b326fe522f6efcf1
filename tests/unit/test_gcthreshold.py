"""The process-wide gen-0 threshold registry (smartsyncd/runtime/gcthreshold.py): a client sync and a
daemon commit in one process, entering and leaving in any order, leave the thresholds as found."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from smartsyncd.client.engine import SYNC_GC_THRESHOLD
from smartsyncd.client.engine import fewer_gc_passes as during_sync
from smartsyncd.runtime.gcthreshold import raised_gen0_threshold
from smartsyncd.storage.sqlstore import COMMIT_GC_THRESHOLD
from smartsyncd.storage.sqlstore import fewer_gc_passes as during_commit


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_sync_and_a_commit_leaving_in_crossed_order_restore_what_was_found() -> None:
    sync, commit = during_sync(), during_commit()
    sync.__enter__()
    assert gc.get_threshold() == (SYNC_GC_THRESHOLD, 10, 10)
    commit.__enter__()  # the lower request does not lower it
    assert gc.get_threshold() == (SYNC_GC_THRESHOLD, 10, 10)
    sync.__exit__(None, None, None)  # the commit still runs: its own threshold now
    assert gc.get_threshold() == (COMMIT_GC_THRESHOLD, 10, 10)
    commit.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_commit_first_then_a_sync_restore_what_was_found() -> None:
    commit, sync = during_commit(), during_sync()
    commit.__enter__()
    sync.__enter__()
    assert gc.get_threshold()[0] == SYNC_GC_THRESHOLD
    commit.__exit__(None, None, None)
    assert gc.get_threshold()[0] == SYNC_GC_THRESHOLD
    sync.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_is_kept_and_collection_off_stays_off() -> None:
    gc.set_threshold(50_000, 10, 10)
    with raised_gen0_threshold(10_000):
        assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_threshold() == (50_000, 10, 10)
    gc.set_threshold(0, 10, 10)
    with raised_gen0_threshold(10_000), raised_gen0_threshold(20_000):
        assert gc.get_threshold() == (0, 10, 10)
    assert gc.get_threshold() == (0, 10, 10)


def test_an_exception_inside_restores_the_thresholds() -> None:
    with pytest.raises(RuntimeError), raised_gen0_threshold(10_000):
        assert gc.get_threshold()[0] == 10_000
        raise RuntimeError("refused batch")
    assert gc.get_threshold() == (700, 10, 10)
