"""The workflow part of the store (storage/workflow.py) on both backends, real pack files:
lock/finalize/abandoned-copy refusals inside the commit transaction, the hash chains, restore,
export at a time, copies, and gc never dropping a referenced chunk."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    Backend,
    backend,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    put,
    sync_test,
    upload_file,
)

from smartsyncd.core.errors import (
    BatchReused,
    CopyAbandoned,
    Finalized,
    Forbidden,
    Locked,
    NotFound,
    UnsyncedCopies,
)
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.api import SessionRecord
from smartsyncd.storage.gc import retained_contents
from smartsyncd.storage.sqlite import DB_FILENAME
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wstore(backend, clock) -> Iterator[SqlServerStore]:  # noqa: F811
    """The store on synchronous pools (``smartsyncd.testing.syncpool``): no reactor runs."""
    s = open_sync_store(str(backend.data_dir), backend.url, now=clock)
    try:
        yield s
    finally:
        run_sync(s.close())


async def engagement_with_file(store, name="acme") -> tuple[int, str, int]:
    e = await store.create_engagement(name, "")
    content, size, refs = await upload_file(store, e.id, b"first version " * 100)
    await commit(store, e.id, "b1", [put("WP/cash.xlsx", None, content, size)], {"WP/cash.xlsx": full(content, refs)})
    return e.id, content, size


@on_sync_store
async def test_lock_refuses_other_users_commit_inside_the_transaction(wstore, clock) -> None:
    eid, content, size = await engagement_with_file(wstore)
    other, osize, orefs = await upload_file(wstore, eid, b"bob's edit")
    lock = await wstore.checkout(eid, "wp", "alice", "s1", timedelta(hours=8))  # folds case
    assert lock.path == "wp" and lock.holder == "alice"
    with pytest.raises(Locked) as refused:
        await commit(wstore, eid, "b2", [put("WP/cash.xlsx", 1, other, osize)], {"WP/cash.xlsx": full(other, orefs)}, user="bob")
    assert refused.value.details["holder"] == "alice" and refused.value.details["path"] == "WP/cash.xlsx"
    assert refused.value.details["since"].startswith("2026-11-26T15:30")
    assert await wstore.head(eid) == 1  # nothing applied
    # the holder commits; a delete by another user is refused too
    await commit(wstore, eid, "b3", [put("WP/cash.xlsx", 1, other, osize)], {"WP/cash.xlsx": full(other, orefs)})
    with pytest.raises(Locked):
        await commit(wstore, eid, "b4", [ProposedChange("WP/cash.xlsx", "delete", 2)], user="bob")
    with pytest.raises(Locked):  # overlapping lock of another user
        await wstore.checkout(eid, "WP/cash.xlsx", "bob", "s2", None)
    with pytest.raises(Forbidden):
        await wstore.checkin(eid, "WP", "bob")
    # expired: no longer counts
    clock.now = T0 + timedelta(hours=9)
    await commit(wstore, eid, "b5", [ProposedChange("WP/cash.xlsx", "delete", 2)], user="bob", now=clock.now)
    assert await wstore.list_locks(eid) == []
    lock = await wstore.checkout(eid, "WP", "bob", "s2", None)
    broken = await wstore.break_lock(eid, "WP", "admin:root", "on leave")
    assert broken.holder == "bob"
    events = [(r.event, r.actor) for r in await wstore.audit_records(eid) if r.chain == "eng:acme"]
    assert events == [("checkout", "alice"), ("checkout", "bob"), ("lock_break", "admin:root")]


@on_sync_store
async def test_finalize_refuses_commits_and_restore_until_reopened(wstore) -> None:
    eid, content, size = await engagement_with_file(wstore)
    await wstore.report_copy(eid, "copy-1", "bob", "laptop", "s2", 3, None)
    with pytest.raises(UnsyncedCopies) as refused:
        await wstore.finalize(eid, "admin:root", "signed off", False)
    assert refused.value.details["copies"] == ["copy-1"]
    status, pending = await wstore.finalize(eid, "admin:root", "signed off", True)
    assert status.finalized and status.finalized_reason == "signed off" and [c.copy_id for c in pending] == ["copy-1"]
    with pytest.raises(Finalized) as frozen:
        await commit(wstore, eid, "b2", [ProposedChange("WP/cash.xlsx", "delete", 1)])
    assert frozen.value.details["reason"] == "signed off" and frozen.value.status == 423
    with pytest.raises(Finalized):
        await wstore.restore(eid, "alice", "s1", None, "WP/cash.xlsx", 1, "r1", T0)
    with pytest.raises(Finalized):
        await wstore.checkout(eid, "WP", "alice", "s1", None)
    report = await wstore.gc(eid, timedelta(0))
    assert report.skipped
    await wstore.reopen(eid, "admin:root", "typo")
    await commit(wstore, eid, "b3", [ProposedChange("WP/cash.xlsx", "delete", 1)])


@on_sync_store
async def test_abandoned_copy_is_refused_forever_and_its_session_ends(wstore) -> None:
    eid, content, size = await engagement_with_file(wstore)
    await wstore.create_session(SessionRecord("sess-b", "tokhash-b", "bob", (), "local", T0, T0 + timedelta(days=1), T0))
    await wstore.register_copy(eid, "copy-b", "bob", "laptop-7", "sess-b")
    with pytest.raises(Forbidden):
        await wstore.register_copy(eid, "copy-b", "mallory", "x", None)
    copy = await wstore.abandon_copy(eid, "copy-b", "admin:root")
    assert copy.abandoned_by == "admin:root"
    assert await wstore.get_session("tokhash-b") is None
    with pytest.raises(CopyAbandoned):
        await wstore.commit(eid, "bob", "sess-c", "b2", [ProposedChange("WP/cash.xlsx", "delete", 1)], {}, T0, copy="copy-b")
    with pytest.raises(CopyAbandoned):
        await wstore.report_copy(eid, "copy-b", "bob", "laptop-7", "sess-c", 0, None)
    await wstore.commit(eid, "bob", "sess-c", "b3", [ProposedChange("WP/cash.xlsx", "delete", 1)], {}, T0, copy="copy-new")


@on_sync_store
async def test_hash_chain_detects_edit_removal_and_reorder(wstore, backend) -> None:  # noqa: F811
    eid, content, size = await engagement_with_file(wstore)
    for i in range(2, 5):
        c, s, refs = await upload_file(wstore, eid, f"v{i}".encode())
        await commit(wstore, eid, f"b{i}", [put(f"f{i}.txt", None, c, s)], {f"f{i}.txt": full(c, refs)})
    reports = await wstore.verify_audit("acme")
    assert [r.problem for r in reports] == [None, None] and reports[0].records == 4
    original = backend.raw("SELECT path FROM changes WHERE engagement_id = ? AND seq = 3", (eid,))[0][0]
    backend.raw("UPDATE changes SET path = 'other.txt' WHERE engagement_id = ? AND seq = 3", (eid,))
    assert "record 3: contents do not match" in (await wstore.verify_audit("acme"))[0].problem
    backend.raw("UPDATE changes SET path = ? WHERE engagement_id = ? AND seq = 3", (original, eid))
    backend.raw("UPDATE changes SET seq = 99 WHERE engagement_id = ? AND seq = 4", (eid,))
    assert "record 4: missing" in (await wstore.verify_audit("acme"))[0].problem
    backend.raw("UPDATE changes SET seq = 4 WHERE engagement_id = ? AND seq = 99", (eid,))
    backend.raw("UPDATE changes SET seq = 100 WHERE engagement_id = ? AND seq = 2", (eid,))
    backend.raw("UPDATE changes SET seq = 2 WHERE engagement_id = ? AND seq = 3", (eid,))
    backend.raw("UPDATE changes SET seq = 3 WHERE engagement_id = ? AND seq = 100", (eid,))
    assert "record 2: prev_hash does not match" in (await wstore.verify_audit("acme"))[0].problem
    # sign-ins are chained globally
    all_reports = await wstore.verify_audit(None)
    assert all_reports[-1].chain == "global" and all_reports[-1].problem is None


@sync_test
async def test_migration_backfills_hashes_of_existing_rows(tmp_path) -> None:
    from smartsyncd.storage.audit import backfill_change_hashes
    from smartsyncd.storage.sqlite import SQLITE

    s = await Backend("sqlite", tmp_path / "data", None).open()
    try:
        await engagement_with_file(s)
    finally:
        await s.close()
    db = sqlite3.connect(tmp_path / "data" / DB_FILENAME, isolation_level=None)
    try:
        before = db.execute("SELECT record_hash FROM changes").fetchall()
        db.execute("UPDATE changes SET prev_hash = NULL, record_hash = NULL")
        backfill_change_hashes(db, SQLITE)
        assert db.execute("SELECT record_hash FROM changes").fetchall() == before
    finally:
        db.close()


@on_sync_store
async def test_history_restore_and_export_at(wstore, clock) -> None:
    e = await wstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(wstore, e.id, b"one")
    c2, s2, r2 = await upload_file(wstore, e.id, b"two!")
    await commit(wstore, e.id, "b1", [put("a.txt", None, c1, s1)], {"a.txt": full(c1, r1)}, now=T0)
    await commit(wstore, e.id, "b2", [put("a.txt", 1, c2, s2)], {"a.txt": full(c2, r2)}, now=T0 + timedelta(hours=1))
    await commit(wstore, e.id, "b3", [ProposedChange("a.txt", "delete", 2)], now=T0 + timedelta(hours=2))
    versions = await wstore.history(e.id, "a.txt")
    assert [(v.number, v.kind, v.size) for v in versions] == [(1, "put", 3), (2, "put", 4), (None, "delete", 0)]
    result = await wstore.restore(e.id, "bob", "s", None, "a.txt", 1, "r1", T0 + timedelta(hours=3))
    assert result.results[0].status == "applied" and result.changes[0].content == c1
    again = await wstore.restore(e.id, "bob", "s", None, "a.txt", 1, "r1", T0 + timedelta(hours=3))
    assert again.replayed  # same batch key: applied once
    with pytest.raises(BatchReused):  # the same key for another restore: refused
        await wstore.restore(e.id, "bob", "s", None, "a.txt", 2, "r1", T0 + timedelta(hours=3))
    with pytest.raises(NotFound):
        await wstore.restore(e.id, "bob", "s", None, "a.txt", 9, "r2", T0)
    seq, files = await wstore.export_at(e.id, T0 + timedelta(minutes=30))
    assert seq == 1 and [(f.path, f.content) for f in files] == [("a.txt", c1)]
    seq, files = await wstore.export_at(e.id, T0 + timedelta(hours=2, minutes=1))
    assert seq == 3 and files == []
    assert (await wstore.export_at(e.id, T0 - timedelta(days=1)))[0] == 0


def test_retention_rule() -> None:
    now = T0
    old, recent = "2026-01-01T00:00:00.000000+00:00", "2026-11-26T00:00:00.000000+00:00"
    rows = [  # (seq, path, kind, content, committed_at, conflict_of) by path, seq
        (1, "a", "put", b"A1", old, None),
        (2, "a", "put", b"A2", old, None),
        (5, "a", "put", b"A3", recent, None),  # replaced recently -> kept
        (6, "a", "put", b"A4", recent, None),  # current -> kept
        (3, "c (conflict)", "put", b"C1", old, "c"),  # conflict copy -> always kept
        (7, "c (conflict)", "delete", None, old, None),
        (4, "d", "put", b"D1", old, None),
        (8, "d", "delete", None, old, None),  # deleted long ago -> expires
    ]
    # A2 was replaced (by A3) recently: still kept; A1 was replaced long ago
    assert retained_contents(rows, 30, now) == {b"A2", b"A3", b"A4", b"C1"}
    assert retained_contents(rows, None, now) == {b"A1", b"A2", b"A3", b"A4", b"C1", b"D1"}


@on_sync_store
async def test_gc_never_removes_a_chunk_a_retained_version_needs(wstore, clock, tmp_path) -> None:
    e = await wstore.create_engagement("acme", "")
    shared, only_old, only_new = os.urandom(9000), os.urandom(9000), os.urandom(9000)
    c1, s1, r1 = await upload_file(wstore, e.id, shared, only_old)
    await commit(wstore, e.id, "b1", [put("a.bin", None, c1, s1)], {"a.bin": full(c1, r1)}, now=T0)
    c2, s2, r2 = await upload_file(wstore, e.id, shared, only_new)  # shared chunk already stored
    clock.now = T0 + timedelta(days=40)
    await commit(wstore, e.id, "b2", [put("a.bin", 1, c2, s2)], {"a.bin": full(c2, r2)}, now=clock.now)
    orphan_dir = tmp_path / "data" / "chunks" / str(e.id) / "ab"
    orphan_dir.mkdir(parents=True, exist_ok=True)
    orphan = orphan_dir / ("ab" * 32 + ".pack")
    orphan.write_bytes(b"SSPACK1\n")
    os.utime(orphan, (0, 0))

    await wstore.set_retention(e.id, 30, "admin:root")
    clock.now = T0 + timedelta(days=80)
    report = await wstore.gc(e.id, timedelta(hours=1))
    assert (report.manifests_removed, report.chunks_removed, report.packs_removed) == (1, 1, 0)
    assert report.orphan_packs_removed == 1 and not orphan.exists()
    # every chunk of the current version is still readable; the old-only chunk is gone
    got = await wstore.read_chunks(e.id, [r.hash for r in r2])
    assert [len(c.payload) > 0 for c in got] == [True, True]
    assert await wstore.missing_chunks(e.id, [r1[1].hash]) == [r1[1].hash]
    assert await wstore.fsck() == []
    versions = await wstore.history(e.id, "a.bin")
    assert [v.available for v in versions] == [False, True]
    with pytest.raises(NotFound, match="retention"):
        await wstore.restore(e.id, "alice", "s", None, "a.bin", 1, "r", clock.now)
    # a second run finds nothing more; the second upload's pack still holds a live chunk
    again = await wstore.gc(e.id, timedelta(hours=1))
    assert (again.chunks_removed, again.packs_removed) == (0, 0)
