"""The engagement's life (issue 20) in the store on both backends, and the deadline timer on
a ``Clock``: post-report commits audited, commits refused past the deadline inside the commit
transaction, the deadline claimed once by several stores, the timer re-armed from the stored
deadline after a restart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    chunk,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    put,
    upload_file,
)
from twisted.internet.task import Clock

from smartsyncd.core.errors import BadRequest, Finalized, QuotaExceeded, Retained
from smartsyncd.core.model import ProposedChange
from smartsyncd.service.deadlines import DeadlineTimer
from smartsyncd.storage.lifecycle import assembly_deadline, deadline_warning
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync


class Now:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def lstore(backend, now) -> Iterator[SqlServerStore]:  # noqa: F811
    s = open_sync_store(str(backend.data_dir), backend.url, now=now)
    try:
        yield s
    finally:
        run_sync(s.close())


def events(store, eid: int, event: str) -> list[dict]:
    return [r.detail | {"actor": r.actor} for r in run_sync(store.audit_records(eid)) if r.event == event]


def test_deadline_arithmetic() -> None:
    assert assembly_deadline(date(2026, 3, 31), 45).isoformat() == "2026-05-16T00:00:00+00:00"
    assert assembly_deadline(T0, 0) == T0
    soon = T0 + timedelta(hours=5)
    assert "in 5 hour(s)" in (deadline_warning(soon, False, 3, T0) or "")
    assert deadline_warning(soon, False, 0, T0) is None  # nothing unsynced: nothing to warn
    assert deadline_warning(soon, True, 3, T0) is None
    assert deadline_warning(T0 + timedelta(days=30), False, 3, T0) is None


@on_sync_store
async def test_post_report_commits_are_audited_and_the_deadline_refuses(lstore, now) -> None:
    e = await lstore.create_engagement("acme", "")
    content, size, refs = await upload_file(lstore, e.id, b"before the report")
    await commit(lstore, e.id, "b1", [put("a.txt", None, content, size)], {"a.txt": full(content, refs)})
    with pytest.raises(BadRequest):
        await lstore.set_report_date(e.id, T0, -1, "admin:root")
    deadline = await lstore.set_report_date(e.id, T0 - timedelta(hours=1), 1, "admin:root")
    assert deadline == T0 + timedelta(hours=23)
    assert not events(lstore, e.id, "post_report_change")

    other, osize, orefs = await upload_file(lstore, e.id, b"after the report")
    now.now = T0 + timedelta(hours=1)
    await commit(lstore, e.id, "b2", [put("a.txt", 1, other, osize)], {"a.txt": full(other, orefs)},
                 now=now.now)
    [audited] = events(lstore, e.id, "post_report_change")
    assert audited["paths"] == ["a.txt"] and audited["first_seq"] == 2 and audited["actor"] == "alice"

    # past the deadline, before any timer ran: refused inside the commit, nothing written
    late = T0 + timedelta(hours=23, seconds=1)
    with pytest.raises(Finalized) as refused:
        await commit(lstore, e.id, "b3", [put("b.txt", None, other, osize)], {"b.txt": full(other, orefs)},
                     now=late)
    assert "assembly deadline" in refused.value.message
    assert await lstore.head(e.id) == 2


@on_sync_store
async def test_the_deadline_is_claimed_once_by_two_stores(lstore, backend, now) -> None:  # noqa: F811
    second = open_sync_store(str(backend.data_dir), backend.url, now=now)
    try:
        e = await lstore.create_engagement("acme", "")
        await lstore.set_report_date(e.id, T0, 0, "admin:root")
        assert await lstore.next_deadline() == T0
        assert await lstore.finalize_due(T0 - timedelta(seconds=1)) == []
        won = await lstore.finalize_due(T0) + await second.finalize_due(T0)
        assert won == ["acme"]
        assert await second.finalize_due(T0 + timedelta(days=1)) == []
        [final] = events(lstore, e.id, "finalize")
        assert final["automatic"] and final["actor"] == "smartsyncd:assembly-deadline"
        assert (await lstore.engagement_status(e.id)).finalized
        assert await lstore.next_deadline() is None

        # an admin may reopen (a documented post-assembly addition): the timer does not refire
        await lstore.reopen(e.id, "admin:root", "add a memo")
        assert await lstore.finalize_due(T0 + timedelta(days=2)) == []
        content, size, refs = await upload_file(lstore, e.id, b"memo")
        await commit(lstore, e.id, "m", [put("memo.txt", None, content, size)],
                     {"memo.txt": full(content, refs)}, now=T0 + timedelta(days=2))
    finally:
        run_sync(second.close())


@on_sync_store
async def test_timer_fires_at_the_deadline_and_rearms_after_a_restart(lstore, now) -> None:
    clock = Clock()
    clock.advance(T0.timestamp())
    e = await lstore.create_engagement("acme", "")
    f = await lstore.create_engagement("beta", "")
    await lstore.set_report_date(e.id, T0, 0, "admin:root")  # due at once
    await lstore.set_report_date(f.id, T0 + timedelta(seconds=30), 0, "admin:root")
    timer = DeadlineTimer(lstore, clock, check_every=3600)
    timer.startService()
    clock.advance(0)
    assert timer.finalized == ["acme"]
    assert [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()] == [30]
    timer.stopService()
    assert clock.getDelayedCalls() == []

    # a restart: the new timer reads the stored deadline and arms itself for it
    restarted = DeadlineTimer(lstore, clock, check_every=3600)
    restarted.startService()
    clock.advance(0)
    assert restarted.finalized == []
    clock.advance(29)
    assert not (await lstore.engagement_status(f.id)).finalized
    clock.advance(1)
    assert restarted.finalized == ["beta"]
    assert (await lstore.engagement_status(f.id)).finalized
    assert [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()] == [3600]
    restarted.stopService()


# ------------------------------------------------------------------- retention, hold, dispose


async def two_versions(store, now: Now, name: str = "acme") -> int:
    """An engagement whose a.bin was replaced 40 days after its first version."""
    e = await store.create_engagement(name, "")
    c1, s1, r1 = await upload_file(store, e.id, os.urandom(5000))
    await commit(store, e.id, "b1", [put("a.bin", None, c1, s1)], {"a.bin": full(c1, r1)}, now=T0)
    c2, s2, r2 = await upload_file(store, e.id, os.urandom(5000))
    await commit(store, e.id, "b2", [put("a.bin", 1, c2, s2)], {"a.bin": full(c2, r2)},
                 now=T0 + timedelta(days=40))
    return e.id


@on_sync_store
async def test_minimum_retention_keeps_versions_from_gc_and_admin(lstore, now) -> None:
    eid = await two_versions(lstore, now)
    lstore.firm_min_retention_days = 60  # the firm's default: longer than the engagement's 30
    await lstore.set_min_retention(eid, 30, "admin:root")
    with pytest.raises(Retained):
        await lstore.set_retention(eid, 10, "admin:root")  # below the minimum: refused
    with pytest.raises(Retained):
        await lstore.set_min_retention(eid, 5, "admin:root")  # a minimum is never shortened
    with pytest.raises(Retained):
        await lstore.set_min_retention(eid, None, "admin:root")
    await lstore.set_retention(eid, 60, "admin:root")
    now.now = T0 + timedelta(days=90)  # replaced 50 days ago: inside the firm's 60
    report = await lstore.gc(eid, timedelta(hours=1))
    assert report.manifests_removed == 0
    assert [v.available for v in await lstore.history(eid, "a.bin")] == [True, True]
    now.now = T0 + timedelta(days=101)
    assert (await lstore.gc(eid, timedelta(hours=1))).manifests_removed == 1


@on_sync_store
async def test_legal_hold_blocks_gc_and_disposal_regardless_of_retention(lstore, now, backend) -> None:  # noqa: F811
    eid = await two_versions(lstore, now)
    await lstore.set_retention(eid, 0, "admin:root")
    await lstore.legal_hold(eid, True, "subpoena 2026-17", "admin:counsel")
    with pytest.raises(BadRequest):
        await lstore.legal_hold(eid, True, "again", "admin:counsel")
    now.now = T0 + timedelta(days=400)
    report = await lstore.gc(eid, timedelta(hours=1))
    assert "legal hold" in (report.skipped or "") and report.manifests_removed == 0
    await lstore.finalize(eid, "admin:root", "signed off", False)
    now.now = T0 + timedelta(days=800)
    with pytest.raises(Retained, match="legal hold"):
        await lstore.dispose(eid, "admin:root")
    status = await lstore.engagement_status(eid)
    assert status.legal_hold == "subpoena 2026-17" and status.disposed_at is None
    await lstore.legal_hold(eid, False, "case closed", "admin:counsel")
    held = events(lstore, eid, "legal_hold_release")
    assert held[0]["held_for"] == "subpoena 2026-17" and held[0]["actor"] == "admin:counsel"


@on_sync_store
async def test_dispose_after_retention_removes_content_and_leaves_a_record(lstore, now, backend) -> None:  # noqa: F811
    eid = await two_versions(lstore, now)
    with pytest.raises(Retained, match="not finalized"):
        await lstore.dispose(eid, "admin:root")
    await lstore.set_min_retention(eid, 365, "admin:root")
    now.now = T0 + timedelta(days=50)
    await lstore.finalize(eid, "admin:root", "signed off", False)
    now.now = T0 + timedelta(days=50 + 364)
    with pytest.raises(Retained, match="retained until"):
        await lstore.dispose(eid, "admin:root")
    packs = list((backend.data_dir / "chunks" / str(eid)).rglob("*.pack"))
    assert packs
    now.now = T0 + timedelta(days=50 + 366)
    record = await lstore.dispose(eid, "admin:dpo")
    assert (record["versions"], record["current_files"], record["contents"]) == (2, 1, 2)
    assert record["logical_bytes"] == 10000 and record["stored_bytes"] > 0
    assert record["disposed_by"] == "admin:dpo" and len(record["versions_digest"]) == 64
    [event] = events(lstore, eid, "dispose")
    assert event["versions_digest"] == record["versions_digest"]
    assert not any(p.exists() for p in packs)
    assert [v.available for v in await lstore.history(eid, "a.bin")] == [False, False]
    assert all(r.problem is None for r in await lstore.verify_audit("acme"))
    with pytest.raises(BadRequest, match="disposed"):
        await lstore.reopen(eid, "admin:root", "oops")
    with pytest.raises(BadRequest, match="already disposed"):
        await lstore.dispose(eid, "admin:root")


# ------------------------------------------------------------------------------------ quotas


@on_sync_store
async def test_engagement_quota_refuses_growth_in_the_commit_and_allows_cleanup(lstore, now) -> None:
    e = await lstore.create_engagement("acme", "")
    await lstore.set_quota("engagement", "acme", 10000, "admin:root")
    c1, s1, r1 = await upload_file(lstore, e.id, os.urandom(6000))
    await commit(lstore, e.id, "b1", [put("a.bin", None, c1, s1)], {"a.bin": full(c1, r1)})
    # the same content at a second path: no byte to store, but 6000 more live bytes
    with pytest.raises(QuotaExceeded) as refused:
        await commit(lstore, e.id, "b2", [put("b.bin", None, c1, s1)])
    err = refused.value
    assert err.status == 507 and err.to_json()["measure"] == "logical bytes"
    assert (err.to_json()["limit"], err.to_json()["used"], err.to_json()["needed"]) == (10000, 6000, 6000)
    assert await lstore.head(e.id) == 1  # nothing written
    # a smaller version of a.bin shrinks the use: allowed
    c2, s2, r2 = await upload_file(lstore, e.id, os.urandom(100))
    await commit(lstore, e.id, "b3", [put("a.bin", 1, c2, s2)], {"a.bin": full(c2, r2)})
    # over quota after the admin lowers it: deletes still go through
    await lstore.set_quota("engagement", "acme", 100, "admin:root")
    await commit(lstore, e.id, "b4", [ProposedChange(path="a.bin", kind="delete", base=2)])
    assert await lstore.head(e.id) == 3
    [(scope, name, limit, logical, stored)] = await lstore.quotas()
    assert (scope, name, limit, logical) == ("engagement", "acme", 100, 0) and stored > 0
    assert [d["bytes"] for d in events(lstore, e.id, "quota")] == [10000, 100]


@on_sync_store
async def test_stored_quota_refuses_before_a_pack_is_written(lstore, now, backend) -> None:  # noqa: F811
    e = await lstore.create_engagement("acme", "")
    await lstore.set_quota("user", "bob", 4000, "admin:root")
    await upload_file(lstore, e.id, os.urandom(3000))  # nobody's: not bob's
    packs = backend.data_dir / "chunks" / str(e.id)
    before = sorted(packs.rglob("*.pack"))
    big = [chunk(os.urandom(5000))]
    with pytest.raises(QuotaExceeded, match="user 'bob'"):
        await lstore.store_chunks(e.id, big, user="bob")
    upload = lstore.open_upload(e.id, user="bob")
    with pytest.raises(QuotaExceeded, match="stored bytes"):
        await upload.append(big)
    await upload.abort()
    assert sorted(packs.rglob("*.pack")) == before  # nothing reached the disk
    assert (await lstore.store_chunks(e.id, [chunk(os.urandom(3000))], user="bob"))[0] == 1
    assert [(s, n, used) for s, n, _, _, used in await lstore.quotas()][0][2] > 3000
    await lstore.set_quota("engagement", "acme", 1, "admin:root")
    with pytest.raises(QuotaExceeded, match="engagement 'acme'"):
        await lstore.store_chunks(e.id, [chunk(os.urandom(10))], user="alice")


@on_sync_store
async def test_user_quota_counts_live_files_they_wrote_in_every_engagement(lstore, now) -> None:
    e = await lstore.create_engagement("acme", "")
    f = await lstore.create_engagement("beta", "")
    await lstore.set_quota("user", "bob", 8000, "admin:root")
    c1, s1, r1 = await upload_file(lstore, e.id, os.urandom(6000))
    await commit(lstore, e.id, "a1", [put("a.bin", None, c1, s1)], {"a.bin": full(c1, r1)}, user="bob")
    c2, s2, r2 = await upload_file(lstore, f.id, os.urandom(6000))
    with pytest.raises(QuotaExceeded, match="user 'bob'"):
        await commit(lstore, f.id, "b1", [put("b.bin", None, c2, s2)], {"b.bin": full(c2, r2)}, user="bob")
    # alice is not limited; when she replaces bob's file, bob's use drops and his commit fits
    await commit(lstore, f.id, "b2", [put("b.bin", None, c2, s2)], {"b.bin": full(c2, r2)}, user="alice")
    c3, s3, r3 = await upload_file(lstore, e.id, os.urandom(10))
    await commit(lstore, e.id, "a2", [put("a.bin", 1, c3, s3)], {"a.bin": full(c3, r3)}, user="alice")
    await commit(lstore, f.id, "b3", [put("c.bin", None, c2, s2)], user="bob")


# ------------------------------------------------------------------------------- read audit


@on_sync_store
async def test_read_events_are_buffered_then_written_in_one_batch(lstore, now) -> None:
    from smartsyncd.web.readaudit import ReadAudit

    e = await lstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(lstore, e.id, b"working paper")
    await commit(lstore, e.id, "b1", [put("a.txt", None, c1, s1)], {"a.txt": full(c1, r1)})
    clock = Clock()
    reads = ReadAudit(lstore, clock.callLater, now)
    reads.note(e.id, "download", "bob", "s-1", "10.0.0.7", content=c1, size=s1)
    reads.note(e.id, "history", "bob", "s-1", "10.0.0.7", path="a.txt", versions=1)
    assert not [r for r in run_sync(lstore.audit_records(e.id)) if r.chain == "read:acme"]
    clock.advance(1)
    got = [r for r in run_sync(lstore.audit_records(e.id)) if r.chain == "read:acme"]
    assert [(r.event, r.actor, r.seq) for r in got] == [("download", "bob", 1), ("history", "bob", 2)]
    assert got[0].detail["versions"] == [{"path": "a.txt", "seq": 1}] and got[0].detail["address"] == "10.0.0.7"
    assert all(r.problem is None for r in await lstore.verify_audit("acme"))
