"""Wipe orders in the store (storage/wipes.py) on SQLite and PostgreSQL: the order abandons
the copy and is audited with the admin's name, the look-up by engagement or by copy alone, the
report keyed by the copy's secret and idempotent; and migration numbers with gaps."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta

import pytest
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    on_sync_store,
    pg_cluster,
)

from smartsyncd.core.errors import BadRequest, CopyAbandoned, NotFound
from smartsyncd.storage import schema
from smartsyncd.storage.api import SessionRecord
from smartsyncd.storage.sqlite import SQLITE
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.storage.wipes import wipes_of
from smartsyncd.testing.syncpool import open_sync_store, run_sync

KEY = "ab" * 32
KEY_HASH = hashlib.sha256(bytes.fromhex(KEY)).hexdigest()


@pytest.fixture
def wstore(backend) -> Iterator[SqlServerStore]:  # noqa: F811
    s = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


async def copy_of_bob(store: SqlServerStore, key_hash: str | None = KEY_HASH) -> int:
    e = await store.create_engagement("acme", "")
    await store.create_session(SessionRecord("s-b", "th-b", "bob", (), "local", T0, T0 + timedelta(days=1), T0))
    await store.register_copy(e.id, "copy-b", "bob", "laptop-7", "s-b", key_hash)
    return e.id


@on_sync_store
async def test_an_order_abandons_the_copy_and_is_audited_once(wstore) -> None:
    eid = await copy_of_bob(wstore)
    wipes = wipes_of(wstore)
    order = await wipes.order_wipe(eid, "copy-b", "admin:carol")
    assert (order.engagement, order.copy_id, order.user, order.ordered_by) == ("acme", "copy-b", "bob", "admin:carol")
    assert order.reported_at is None
    assert await wstore.get_session("th-b") is None  # its session ended
    with pytest.raises(CopyAbandoned):
        await wstore.report_copy(eid, "copy-b", "bob", "laptop-7", None, 0, None)
    with pytest.raises(BadRequest, match="already ordered wiped by admin:carol"):
        await wipes.order_wipe(eid, "copy-b", "admin:dave")
    with pytest.raises(NotFound):
        await wipes.order_wipe(eid, "no-such-copy", "admin:carol")
    events = [(r.event, r.actor) for r in await wstore.audit_records(eid)]
    assert events[-2:] == [("copy_abandon", "admin:carol"), ("copy_wipe_order", "admin:carol")]


@on_sync_store
async def test_an_abandoned_copy_can_still_be_ordered_wiped(wstore) -> None:
    eid = await copy_of_bob(wstore)
    await wstore.abandon_copy(eid, "copy-b", "admin:carol")
    order = await wipes_of(wstore).order_wipe(eid, "copy-b", "admin:dave")
    assert order.ordered_by == "admin:dave"
    events = [r.event for r in await wstore.audit_records(eid)]
    assert events.count("copy_abandon") == 1 and events[-1] == "copy_wipe_order"


@on_sync_store
async def test_the_look_up_names_the_engagement_or_any_for_a_sign_in(wstore) -> None:
    eid = await copy_of_bob(wstore)
    other = await wstore.create_engagement("other", "")
    wipes = wipes_of(wstore)
    assert await wipes.wipe_order("acme", "copy-b") is None
    await wipes.order_wipe(eid, "copy-b", "admin:carol")
    assert (await wipes.wipe_order("acme", "copy-b")).copy_id == "copy-b"  # type: ignore[union-attr]
    assert await wipes.wipe_order(other.name, "copy-b") is None  # another engagement: no order
    assert (await wipes.wipe_order(None, "copy-b")).engagement == "acme"  # type: ignore[union-attr]
    assert await wipes.wipe_order(None, "copy-c") is None


@on_sync_store
async def test_the_report_needs_the_copys_secret_and_is_idempotent(wstore) -> None:
    eid = await copy_of_bob(wstore)
    wipes = wipes_of(wstore)
    with pytest.raises(NotFound):  # no order yet: the same answer as a wrong key
        await wipes.report_wipe("acme", "copy-b", KEY, "laptop-7", 3, "10.0.0.9")
    await wipes.order_wipe(eid, "copy-b", "admin:carol")
    with pytest.raises(NotFound):
        await wipes.report_wipe("acme", "copy-b", "cd" * 32, "laptop-7", 3, "10.0.0.9")
    with pytest.raises(BadRequest):
        await wipes.report_wipe("acme", "copy-b", "not hex", "laptop-7", 3, None)
    with pytest.raises(BadRequest):
        await wipes.report_wipe("acme", "copy-b", KEY, "laptop-7", -1, None)
    first = await wipes.report_wipe("acme", "copy-b", KEY, "laptop-7", 3, "10.0.0.9")
    assert (first.reported_host, first.files_removed) == ("laptop-7", 3) and first.reported_at == T0
    again = await wipes.report_wipe("acme", "copy-b", KEY, "elsewhere", 99, "10.0.0.10")
    assert again == first  # the first report stands
    reports = [r for r in await wstore.audit_records(eid) if r.event == "copy_wipe_report"]
    assert len(reports) == 1 and reports[0].actor == "bob"
    assert reports[0].detail == {"copy": "copy-b", "host": "laptop-7", "address": "10.0.0.9", "files_removed": 3}


@on_sync_store
async def test_a_copy_keeps_the_first_secret_it_named(wstore) -> None:
    eid = await copy_of_bob(wstore, key_hash=None)  # registered before it had a secret
    await wstore.report_copy(eid, "copy-b", "bob", "laptop-7", None, 0, None, KEY_HASH)
    await wstore.report_copy(eid, "copy-b", "bob", "laptop-7", None, 0, None, "ee" * 32)  # ignored
    await wipes_of(wstore).order_wipe(eid, "copy-b", "admin:carol")
    reported = await wipes_of(wstore).report_wipe("acme", "copy-b", KEY, "laptop-7", 0, None)
    assert reported.reported_at is not None


def test_a_migration_below_the_highest_applied_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Branches draw numbers at once (10-16): a database that got a later one first still gets 11."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    dialect = SQLITE
    top = schema.LATEST_VERSION + 1
    later = [*schema.MIGRATIONS, (top, ["CREATE TABLE later_one (x INTEGER)"])]
    monkeypatch.setattr(schema, "MIGRATIONS", [m for m in later if m[0] != 11])
    monkeypatch.setattr(schema, "LATEST_VERSION", top)
    assert schema.migrate(conn, dialect) == top
    assert not dialect.table_exists(conn, "copy_wipes")
    monkeypatch.setattr(schema, "MIGRATIONS", sorted(later, key=lambda m: m[0]))
    assert schema.migrate(conn, dialect) == top
    assert dialect.table_exists(conn, "copy_wipes")
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == sorted(v for v, _ in later)  # every number once, 11 among them
