"""Folder entries in the real store (issue 16), on SQLite and PostgreSQL and through each head
view a commit may read (whole, at the batch's keys, row by row): committed without a manifest,
files go inside and leave again, a delete of the entry deletes nothing inside, history, restore
and export list entries as available, gc leaves them whole, and ``fsck`` is clean."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    put,
    sync_store,
    upload_file,
)

from smartsyncd.core.errors import BadRequest, PathClash
from smartsyncd.core.model import FOLDER_CONTENT, ProposedChange
from smartsyncd.storage import headview
from smartsyncd.storage.sqlstore import SqlHeadView


def entry(path: str, base: int | None = None) -> ProposedChange:
    return put(path, base, FOLDER_CONTENT, 0)


@pytest.mark.parametrize("view", ["loaded", "keyed", "row-by-row"])
@on_sync_store
async def test_folder_entries_in_the_store(store, monkeypatch, view) -> None:  # noqa: F811
    if view != "loaded":
        monkeypatch.setattr(headview, "_LOAD_HEAD_BASE", 0)
        monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 0)
    if view == "row-by-row":
        monkeypatch.setattr(headview, "KeyedHeadView", lambda db, eid, paths, normalized=False: SqlHeadView(db, eid))
    eid = (await store.create_engagement("acme", "")).id
    r = await commit(store, eid, "b1", [entry("Tax"), entry("Audit/Planning")])
    assert [x.status for x in r.results] == ["applied", "applied"]
    tax = r.results[0].seq

    c, s, refs = await upload_file(store, eid, b"the return")
    r = await commit(store, eid, "b2", [put("Tax/return.pdf", None, c, s)], {"Tax/return.pdf": full(c, refs)})
    assert r.results[0].status == "applied"  # inside the entry, in its spelling
    with pytest.raises(PathClash):
        await commit(store, eid, "b3", [put("TAX/other.pdf", None, c, s)])
    with pytest.raises(PathClash):
        await commit(store, eid, "b4", [entry("audit")])

    # the entry deleted by a copy that never saw the file: the file stays
    r = await commit(store, eid, "b5", [ProposedChange("Tax", "delete", tax)], now=T0 + timedelta(hours=1))
    assert r.results[0].status == "applied"
    _head, files = await store.snapshot(eid)
    assert {f.path: f.content for f in files} == {"Tax/return.pdf": c, "Audit/Planning": FOLDER_CONTENT}

    versions = await store.history(eid, "Tax")
    assert [(v.kind, v.available) for v in versions] == [("put", True), ("delete", False)]
    restored = await store.restore(eid, "alice", None, None, "Tax", 1, "r1", T0 + timedelta(hours=2))
    assert restored.results[0].status == "applied"
    _seq, exported = await store.export_at(eid, T0 + timedelta(minutes=30))
    assert {(f.path, f.available) for f in exported} == {
        ("Tax", True), ("Audit/Planning", True), ("Tax/return.pdf", True),
    }
    assert await store.fsck() == []
    await store.gc(eid, timedelta(0))  # nothing of an entry to collect; it stays whole
    assert [v.available for v in await store.history(eid, "Audit/Planning")] == [True]
    assert await store.fsck() == []


@on_sync_store
async def test_a_folder_entry_with_a_manifest_or_a_size_is_refused(store) -> None:  # noqa: F811
    eid = (await store.create_engagement("acme", "")).id
    with pytest.raises(BadRequest):
        await commit(store, eid, "b1", [put("Tax", None, FOLDER_CONTENT, 5)])
    with pytest.raises(BadRequest):
        await commit(store, eid, "b2", [entry("Tax")], {"Tax": full(FOLDER_CONTENT, ())})
    head, files = await store.snapshot(eid)
    assert head == 0 and files == []
