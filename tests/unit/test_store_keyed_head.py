"""``KeyedHeadView``: a big engagement's head as a commit batch reads it (both backends).

A commit on an engagement with more ``files`` rows than the batch could cheaply read whole
reads only the rows at the fold keys of its paths and their folders, and asks the rest (other
names, folder spellings) row by row. It must answer exactly as the row-by-row ``SqlHeadView``
for every probe (tombstones, case and Unicode twins, folder spellings), whether or not the
probe's key was among the batch's, and the clash/conflict/stale batches of
test_store_commit_scale.py must come out the same through all three views.
"""

from __future__ import annotations

from typing import Any

from test_storage import (  # noqa: F401 - fixtures of the store suite
    T0,
    backend,
    on_sync_store,
    pg_cluster,
    sync_store,
    sync_test,
)
from test_store_commit_scale import (
    LAYOUT,
    PROBES,
    _answers,
    _build,
    _outcomes_on_a_new_store,
    _use_a_fresh_backend,
)

from smartsyncd.storage import headview
from smartsyncd.storage.headview import head_view
from smartsyncd.storage.sqlstore import KeyedHeadView, LoadedHeadView, MetadataDB, SqlHeadView


@on_sync_store
async def test_keyed_head_answers_like_the_indexed_lookups(store) -> None:  # noqa: F811
    eid = await _build(store)

    def views(db: MetadataDB) -> list[list[Any]]:
        return [
            _answers(SqlHeadView(db, eid)),
            _answers(KeyedHeadView(db, eid, PROBES)),  # every probe's key read
            _answers(KeyedHeadView(db, eid, PROBES[::2])),  # half read, half asked row by row
            _answers(KeyedHeadView(db, eid, ["elsewhere/new.txt"])),  # none read
            _answers(KeyedHeadView(db, eid, ["../bad", "", *LAYOUT[:3]])),  # invalid paths skipped
        ]

    indexed, *keyed = await store.run_db(views)
    for answers in keyed:
        assert answers == indexed


@on_sync_store
async def test_a_big_engagement_is_read_at_the_batch_keys(store, monkeypatch) -> None:  # noqa: F811
    eid = await _build(store)

    def chosen(db: MetadataDB) -> tuple[Any, Any, Any]:
        return head_view(db, eid, 1, ["a.txt"]), head_view(db, eid, 1), head_view(db, eid, 100, ["a.txt"])

    monkeypatch.setattr(headview, "_LOAD_HEAD_BASE", 2)
    monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 0)
    big, no_paths, _ = await store.run_db(chosen)
    assert isinstance(big, KeyedHeadView) and isinstance(no_paths, SqlHeadView)
    monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 2)
    *_, small = await store.run_db(chosen)
    assert isinstance(small, LoadedHeadView)  # 9 rows, a batch of 100: read whole


@sync_test
async def test_same_outcomes_through_keyed_and_row_by_row_views(backend, monkeypatch, request) -> None:  # noqa: F811
    monkeypatch.setattr(headview, "_LOAD_HEAD_BASE", 0)
    monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 0)  # every engagement is "large"
    keyed = await _outcomes_on_a_new_store(backend)
    _use_a_fresh_backend(backend, request, "data-row-by-row")
    monkeypatch.setattr(headview, "KeyedHeadView", lambda db, eid, paths, normalized=False: SqlHeadView(db, eid))
    indexed = await _outcomes_on_a_new_store(backend)
    assert keyed == indexed
