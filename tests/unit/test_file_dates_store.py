"""File dates and the read-only attribute in the store (issue 16), on SQLite and PostgreSQL:
each version keeps its own; the change feed, snapshot, history and export answer them; a
restore brings back the old version's; a date alone never makes a version; the change chain
covers them; records without them read and hash as before."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    upload_file,
)

from smartsyncd.core import commit_rules
from smartsyncd.core.audit import change_fields
from smartsyncd.core.errors import BadRequest
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync

MARCH_15 = int(datetime(2025, 3, 15, 9, 30, 12, 345678, tzinfo=UTC).timestamp()) * 10**9 + 123
APRIL_2 = int(datetime(2025, 4, 2, 16, 0, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture
def dstore(backend) -> Iterator[SqlServerStore]:  # noqa: F811
    s = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


def dated(path: str, base: int | None, content: str, size: int, mtime_ns: int | None,
          readonly: bool | None = None) -> ProposedChange:
    return ProposedChange(path, "put", base, content, size, mtime_ns=mtime_ns, readonly=readonly)


@on_sync_store
async def test_each_version_keeps_its_date_in_feed_snapshot_history_and_export(dstore) -> None:
    e = await dstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(dstore, e.id, b"report v1")
    c2, s2, r2 = await upload_file(dstore, e.id, b"report v2!")
    await commit(dstore, e.id, "b1", [dated("WP/report.docx", None, c1, s1, MARCH_15, True)],
                 {"WP/report.docx": full(c1, r1)}, now=T0)
    await commit(dstore, e.id, "b2", [dated("WP/report.docx", 1, c2, s2, APRIL_2, False)],
                 {"WP/report.docx": full(c2, r2)}, now=T0 + timedelta(hours=1))

    _, log = await dstore.changes_since(e.id, 0, 100)
    assert [(c.mtime_ns, c.readonly) for c in log] == [(MARCH_15, True), (APRIL_2, False)]
    _, files = await dstore.snapshot(e.id)
    assert [(f.path, f.mtime_ns, f.readonly) for f in files] == [("WP/report.docx", APRIL_2, False)]
    versions = await dstore.history(e.id, "WP/report.docx")
    assert [(v.number, v.mtime_ns, v.readonly) for v in versions] == [(1, MARCH_15, True), (2, APRIL_2, False)]
    _, exported = await dstore.export_at(e.id, T0 + timedelta(minutes=5))
    assert [(f.content, f.mtime_ns, f.readonly) for f in exported] == [(c1, MARCH_15, True)]

    # a restore of version 1 brings back its date and attribute with its content
    result = await dstore.restore(e.id, "bob", "s", None, "WP/report.docx", 1, "r1", T0 + timedelta(hours=2))
    restored = result.changes[0]
    assert (restored.content, restored.mtime_ns, restored.readonly) == (c1, MARCH_15, True)
    _, files = await dstore.snapshot(e.id)
    assert [(f.seq, f.mtime_ns, f.readonly) for f in files] == [(3, MARCH_15, True)]
    # the chain covers the dates and still verifies
    assert [r.problem for r in await dstore.verify_audit("acme")] == [None, None]


@on_sync_store
async def test_a_new_date_alone_makes_no_version(dstore) -> None:
    e = await dstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(dstore, e.id, b"same bytes")
    await commit(dstore, e.id, "b1", [dated("a.txt", None, c1, s1, MARCH_15)], {"a.txt": full(c1, r1)})
    touched = await commit(dstore, e.id, "b2", [dated("a.txt", 1, c1, s1, APRIL_2, True)])
    assert touched.results[0].status == "unchanged" and touched.head == 1
    _, files = await dstore.snapshot(e.id)
    assert [(f.seq, f.mtime_ns, f.readonly) for f in files] == [(1, MARCH_15, None)]


@on_sync_store
async def test_versions_without_dates_read_as_unknown(dstore) -> None:
    e = await dstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(dstore, e.id, b"from an old client")
    await commit(dstore, e.id, "b1", [ProposedChange("old.txt", "put", None, c1, s1)], {"old.txt": full(c1, r1)})
    _, log = await dstore.changes_since(e.id, 0, 100)
    _, files = await dstore.snapshot(e.id)
    versions = await dstore.history(e.id, "old.txt")
    assert (log[0].mtime_ns, log[0].readonly) == (None, None)
    assert (files[0].mtime_ns, versions[0].mtime_ns, versions[0].readonly) == (None, None, None)


@on_sync_store
async def test_a_changed_date_breaks_the_chain(dstore, backend) -> None:  # noqa: F811
    e = await dstore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(dstore, e.id, b"evidence")
    await commit(dstore, e.id, "b1", [dated("a.txt", None, c1, s1, MARCH_15)], {"a.txt": full(c1, r1)})
    backend.raw("UPDATE changes SET mtime_ns = ? WHERE engagement_id = ? AND seq = 1", (APRIL_2, e.id))
    assert "record 1: contents do not match" in (await dstore.verify_audit("acme"))[0].problem


@pytest.mark.parametrize(
    ("mtime_ns", "readonly"),
    [(-1, None), (2**63, None), (1.5, None), (True, None), ("2025-03-15", None), (None, "yes"), (None, 1)],
)
def test_commit_rules_refuse_nonsense_dates(mtime_ns: object, readonly: object) -> None:
    change = ProposedChange("a.txt", "put", None, "ab" * 32, 3, mtime_ns=mtime_ns, readonly=readonly)  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        commit_rules.validate_batch([change])


def test_records_and_batches_without_dates_hash_as_before() -> None:
    fields = change_fields(1, "a.txt", "put", "ab" * 32, 3, None, "alice", None, "t", None, "b")
    assert fields == [1, "a.txt", "put", "ab" * 32, 3, None, "alice", None, "t", None, "b"]
    plain = ProposedChange("a.txt", "put", None, "ab" * 32, 3)
    # the digest a batch from an older client was stored with (a retry must still match it)
    rows = json.dumps([["a.txt", "put", None, "ab" * 32, 3]], separators=(",", ":"))
    assert commit_rules.batch_digest([plain]) == hashlib.sha256(rows.encode()).hexdigest()
    assert commit_rules.batch_digest([plain]) != commit_rules.batch_digest([dated("a.txt", None, "ab" * 32, 3, 5)])
