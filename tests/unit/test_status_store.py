"""The status page's one read of the store (storage/statusview.py) on SQLite and PostgreSQL:
every engagement's head, live size, stored bytes, last change, state, quota, active check-outs
and copies, and the ``limit`` with its "more" flag."""

from __future__ import annotations

from datetime import timedelta

from test_storage import T0, backend, on_sync_store, pg_cluster  # noqa: F401 - fixtures
from test_workflow_store import clock, engagement_with_file, wstore  # noqa: F401 - fixtures

from smartsyncd.storage.lifecycle_store import lifecycle_of


@on_sync_store
async def test_the_overview_reads_every_engagement(wstore, clock) -> None:  # noqa: F811
    eid, _content, size = await engagement_with_file(wstore, "acme")
    await wstore.create_engagement("beta", "<b>Beta</b> & co")
    await wstore.checkout(eid, "Old", "bob", "s2", timedelta(hours=1))
    clock.now = T0 + timedelta(hours=2)  # bob's check-out has expired: not listed
    await wstore.checkout(eid, "WP", "alice", "s1", None)
    await wstore.register_copy(eid, "copy-1", "alice", "laptop-7", None)
    await wstore.set_retention(eid, 30, "admin:test")
    await lifecycle_of(wstore).set_quota("engagement", "acme", 1 << 20, "admin:test")

    overview = await wstore.status_overview(10)
    assert not overview.more
    acme, beta = overview.engagements
    assert (acme.name, acme.head, acme.files, acme.live_bytes) == ("acme", 1, 1, size)
    # the same measures the quota checks use (storage/quotas.py)
    [(_, _, _, logical, stored)] = await lifecycle_of(wstore).quotas()
    assert (acme.live_bytes, acme.stored_bytes) == (logical, stored) and stored > 0
    assert acme.last_change == T0  # the commit's time
    assert acme.quota_bytes == 1 << 20
    assert acme.status.retention_days == 30 and not acme.status.finalized
    assert [(lock.path, lock.holder) for lock in acme.locks] == [("WP", "alice")]
    assert [(c.copy_id, c.host) for c in acme.copies] == [("copy-1", "laptop-7")]
    assert (beta.title, beta.head, beta.files, beta.live_bytes, beta.stored_bytes) == (
        "<b>Beta</b> & co", 0, 0, 0, 0)
    assert (beta.last_change, beta.quota_bytes, beta.locks, beta.copies) == (None, None, (), ())

    first = await wstore.status_overview(1)
    assert first.more and [e.name for e in first.engagements] == ["acme"]
