"""Large commits (issue 7, small files in bulk) on both metadata backends.

A commit reads the head either row by row (``SqlHeadView``: indexed lookups) or, when the
engagement has at most a few ``files`` rows per change, all at once (``LoadedHeadView``). Both
must answer every question identically (tombstones, case and Unicode twins, folder spellings),
so the same batches give the same outcomes either way; a full-size 10,000-change commit keeps
its hash chain verifiable.
"""

from __future__ import annotations

import gc
import unicodedata
from typing import Any

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    chunk,
    commit,
    content_of,
    full,
    on_sync_store,
    pg_cluster,
    put,
    state,
    sync_store,
    sync_test,
    upload_file,
)

from smartsyncd.core.commit_rules import MAX_CHANGES
from smartsyncd.core.model import ProposedChange
from smartsyncd.core.paths import fold_key
from smartsyncd.storage import commit as commit_module
from smartsyncd.storage import headview, sqlstore
from smartsyncd.storage.headview import head_view
from smartsyncd.storage.sqlstore import LoadedHeadView, MetadataDB, SqlHeadView
from smartsyncd.testing.syncpool import open_sync_store

NFD_E = unicodedata.normalize("NFD", "é")

# a head with tombstones, case twins in different folders, non-ASCII folds (ß -> ss)
LAYOUT = [
    "Working papers/B-1 Cash.xlsx",
    "Working papers/Sub/Deep/x.txt",
    "working papers 2/a.txt",
    "Straße/Bank.pdf",
    "Résumé/cv.docx",
    "top.txt",
    "gone/only.txt",  # deleted below: a tombstone, and "gone" holds no live file
    "Mixed/ZED.txt",
    "mixed2/zed.txt",
]

PROBES = [
    *LAYOUT,
    "Working papers", "working papers", "WORKING PAPERS/b-1 cash.xlsx", "Working papers/Sub",
    "working papers/sub/deep", "Strasse", "strasse/bank.pdf", "STRASSE", "Résumé", "résumé",
    "gone", "gone/only.txt", "Mixed", "mixed", "nothing/here.txt", "", "top.txt/x",
]


async def _build(db_store: Any) -> int:
    e = await db_store.create_engagement("acme", "")
    changes, manifests = [], {}
    for i, path in enumerate(LAYOUT):
        c, s, refs = await upload_file(db_store, e.id, f"content {i}".encode())
        changes.append(put(path, None, c, s))
        manifests[path] = full(c, refs)
    r = await commit(db_store, e.id, "b1", changes, manifests)
    assert all(x.status == "applied" for x in r.results), r.results
    seq = next(x.seq for x in r.results if x.path == "gone/only.txt")
    await commit(db_store, e.id, "b2", [ProposedChange("gone/only.txt", "delete", seq)])
    return e.id


def _answers(view: Any) -> list[Any]:
    out: list[Any] = []
    for probe in PROBES:
        key = fold_key(probe) if probe else ""
        under = view.live_paths_under(probe + "/", 2) if probe else None
        out.append((probe, view.state(probe), view.live_path_with_key(key), view.folder_spelling(key), under))
    return out


@on_sync_store
async def test_loaded_head_answers_like_the_indexed_lookups(store) -> None:  # noqa: F811
    eid = await _build(store)

    def both(db: MetadataDB) -> tuple[list[Any], list[Any], Any]:
        rows = db.all("SELECT path, fold_key, seq, content, size FROM files WHERE engagement_id = ?", (eid,))
        return _answers(SqlHeadView(db, eid)), _answers(LoadedHeadView(rows)), head_view(db, eid, 1)

    indexed, loaded, chosen = await store.run_db(both)
    assert loaded == indexed
    assert isinstance(chosen, LoadedHeadView)  # a small engagement is read at once
    # and the answers are the expected ones, not just equal
    by_probe = {a[0]: a[1:] for a in indexed}
    assert by_probe["WORKING PAPERS/b-1 cash.xlsx"][1] == "Working papers/B-1 Cash.xlsx"
    assert by_probe["working papers/sub/deep"][2] == "Working papers/Sub/Deep"
    assert by_probe["Strasse"][2] == "Straße"
    assert by_probe["gone/only.txt"][0].content is None and by_probe["gone"][2] is None
    assert by_probe[""][2] == ""
    # live paths under a folder: exact spelling, bounded, tombstones and lookalikes left out
    assert by_probe["Working papers"][3] == ["Working papers/B-1 Cash.xlsx", "Working papers/Sub/Deep/x.txt"]
    assert by_probe["Mixed"][3] == ["Mixed/ZED.txt"] and by_probe["mixed"][3] == []
    assert by_probe["gone"][3] == []


BATCHES: list[list[tuple[str, str, int | None, str]]] = [
    # (path, kind, base, content label): clashes, conflicts, stale deletes, edit beats delete
    [("new/one.txt", "put", None, "n1"), ("top.txt", "put", 6, "t2")],
    [("Top.TXT", "put", None, "t3")],  # clash with a live file of other case: refused
    [("top.txt", "put", 6, "t4"), ("gone/only.txt", "put", None, "g2")],  # stale edit: conflict
    [("top.txt", "delete", 6, ""), ("strasse/new.txt", "put", None, "s1")],  # folder clash
    [("top.txt", "delete", 6, ""), ("Working papers/Sub/Deep/y.txt", "put", None, "y1")],
    # a case-only rename of a file whose folder has other case: refused
    [("Working papers/B-1 Cash.xlsx", "delete", 1, ""), ("working papers/b-1 cash.xlsx", "put", 1, "w2")],
    [("mixed/new.txt", "put", None, "m1")],  # "Mixed" and "mixed2" exist: Mixed is the folder
    [("Résumé/cv.docx/inner.txt", "put", None, "r1")],  # a folder over a live file: refused
    [(f"R{NFD_E}sum{NFD_E}/other.docx", "put", None, "r2")],  # NFD spelling of a live folder
    # a folder renamed in case with its one file ("mixed2" is another folder): applied
    [("Mixed/ZED.txt", "delete", 8, ""), ("MIXED/zed.txt", "put", None, "z2")],
]


async def _run_batches(db_store: Any) -> list[Any]:
    eid = await _build(db_store)
    outcomes: list[Any] = []
    for n, batch in enumerate(BATCHES):
        changes, manifests = [], {}
        for path, kind, base, label in batch:
            if kind == "delete":
                changes.append(ProposedChange(path, "delete", base))
                continue
            c, s, refs = await upload_file(db_store, eid, label.encode())
            changes.append(put(path, base, c, s))
            manifests[path] = full(c, refs)
        try:
            r = await commit(db_store, eid, f"x{n}", changes, manifests, user="bob")
            outcomes.append([(x.path, x.status, x.seq, x.conflict_path, x.current_seq) for x in r.results])
        except Exception as e:  # a refusal: its code and details are the outcome
            outcomes.append((type(e).__name__, str(e)))
    outcomes.append(await state(db_store, eid))
    reports = await db_store.verify_audit("acme")
    assert reports and all(rep.problem is None for rep in reports), reports
    return outcomes


async def _outcomes_on_a_new_store(on: Any) -> list[Any]:
    """``_run_batches`` on a store opened on the backend ``on`` (closed afterwards)."""
    s = open_sync_store(str(on.data_dir), on.url, now=lambda: T0)  # synchronous pools
    try:
        return await _run_batches(s)
    finally:
        await s.close()


def _use_a_fresh_backend(on: Any, request: Any, folder: str) -> None:
    """Point the backend ``on`` at an empty data folder (on PostgreSQL, a fresh schema too)."""
    on.data_dir = on.data_dir.with_name(folder)
    if on.url is not None:
        on.url = request.getfixturevalue("pg_cluster").fresh_url()


@sync_test
async def test_same_outcomes_with_either_head_view(backend, monkeypatch, request) -> None:  # noqa: F811
    loaded = await _outcomes_on_a_new_store(backend)
    _use_a_fresh_backend(backend, request, "data-indexed")
    monkeypatch.setattr(headview, "_LOAD_HEAD_BASE", 0)
    monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 0)  # every engagement is "large"
    indexed = await _outcomes_on_a_new_store(backend)
    assert indexed == loaded
    kinds = [o[0] if isinstance(o[0], str) else sorted({x[1] for x in o}) for o in loaded[:-1]]
    assert kinds == [
        ["applied"], "PathClash", ["applied", "conflict"], "PathClash", ["applied", "stale"],
        "PathClash", "PathClash", "PathClash", ["applied"], ["applied"],
    ], loaded


@pytest.mark.parametrize(("count", "fill"), [(MAX_CHANGES, 0), (1000, 300)])
@on_sync_store
async def test_a_full_size_commit_applies_whole_and_verifies(store, monkeypatch, count, fill) -> None:  # noqa: F811
    """MAX_CHANGES new files in one batch (as the first sync of a folder sends them) into an
    empty engagement; and 1,000 into one read row by row (the row budget lowered)."""
    if fill:
        monkeypatch.setattr(headview, "_LOAD_HEAD_BASE", 10)
        monkeypatch.setattr(headview, "_LOAD_HEAD_PER_CHANGE", 0)
    e = await store.create_engagement("bulk", "")
    data = [f"small file {i}".encode() for i in range(count + fill)]
    stored = [chunk(d) for d in data]
    await store.store_chunks(e.id, stored)
    head = 0
    if fill:
        pre = [content_of(c) for c in stored[:fill]]
        r = await commit(
            store, e.id, "fill",
            [put(f"old/{i}.txt", None, c, s) for i, (c, s, _) in enumerate(pre)],
            {f"old/{i}.txt": full(c, refs) for i, (c, _, refs) in enumerate(pre)},
        )
        head = r.head
    items = [content_of(c) for c in stored[fill:]]
    paths = [f"folder{i % 100:03d}/file{i:05d}.bin" for i in range(count)]
    changes = [put(p, None, c, s) for p, (c, s, _) in zip(paths, items, strict=True)]
    manifests = {p: full(c, refs) for p, (c, _, refs) in zip(paths, items, strict=True)}
    # one clash anywhere refuses the whole batch: nothing of it is written
    clash = [*changes[:-1], put("FOLDER000/file00000.bin", None, items[-1][0], items[-1][1])]
    with pytest.raises(Exception, match="more than once"):
        await commit(store, e.id, "clash", clash, manifests)
    assert await store.head(e.id) == head
    r = await commit(store, e.id, "all", changes, manifests)
    assert r.head == head + count
    assert [x.status for x in r.results] == ["applied"] * count
    assert [x.seq for x in r.results] == list(range(head + 1, head + count + 1))
    replay = await commit(store, e.id, "all", changes, manifests)
    assert replay.replayed and replay.head == r.head
    _, files = await store.snapshot(e.id)
    assert len(files) == count + fill
    reports = await store.verify_audit("bulk")
    assert reports and all(rep.problem is None for rep in reports), reports


@on_sync_store
async def test_a_commit_collects_garbage_less_often_and_restores_the_thresholds(store, monkeypatch) -> None:  # noqa: F811
    """While a commit runs, gen 0 is collected every COMMIT_GC_THRESHOLD allocations; after it,
    committed or refused, the thresholds are what they were."""
    seen: list[tuple[int, int, int]] = []
    real_commit_tx = commit_module.commit_tx

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.get_threshold())  # observes only: the real transaction runs
        return real_commit_tx(*args, **kwargs)

    monkeypatch.setattr(commit_module, "commit_tx", watched)
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        e = await store.create_engagement("gc", "")
        c, s, refs = await upload_file(store, e.id, b"a small file")
        await commit(store, e.id, "b1", [put("a.txt", None, c, s)], {"a.txt": full(c, refs)})
        assert seen == [(sqlstore.COMMIT_GC_THRESHOLD, 10, 10)]
        assert gc.get_threshold() == (700, 10, 10)
        with pytest.raises(Exception, match="more than once"):  # refused: restored all the same
            await commit(store, e.id, "b2", [put("b.txt", None, c, s), put("B.txt", None, c, s)], {})
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(0, 10, 10)  # collection off: left off
        await commit(store, e.id, "b3", [put("c.txt", None, c, s)], {"c.txt": full(c, refs)})
        assert seen[-1] == (0, 10, 10) and gc.get_threshold() == (0, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_overlapping_commits_restore_the_thresholds_once_the_last_ends() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        first, second = sqlstore.fewer_gc_passes(), sqlstore.fewer_gc_passes()
        first.__enter__()
        second.__enter__()  # another DB thread's commit (PostgreSQL)
        assert gc.get_threshold()[0] == sqlstore.COMMIT_GC_THRESHOLD
        first.__exit__(None, None, None)
        assert gc.get_threshold()[0] == sqlstore.COMMIT_GC_THRESHOLD  # the second still runs
        second.__exit__(None, None, None)
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)
