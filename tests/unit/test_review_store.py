"""The conflict review queue in the store (storage/conflicts.py, storage/review.py) on SQLite
and PostgreSQL: a commit's conflict copy becomes an item inside the commit transaction, and a
resolution is one commit (change log, audit chain, history keeps the loser) or nothing."""

from __future__ import annotations

import sqlite3

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

from smartsyncd.core.errors import BatchReused, ConflictResolved, ConflictStale, Locked, NotFound
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage import schema
from smartsyncd.storage.api import Grant
from smartsyncd.storage.api import PutManifest as Manifest
from smartsyncd.storage.sqlite import SQLITE


async def conflicted(store):
    """alice writes cash.xlsx (seq 1) and edits it (seq 2); bob's edit of seq 1 conflicts."""
    e = await store.create_engagement("acme", "")
    first, fsize, frefs = await upload_file(store, e.id, b"first " * 50)
    await commit(store, e.id, "a1", [put("WP/cash.xlsx", None, first, fsize)],
                 {"WP/cash.xlsx": full(first, frefs)})
    theirs, tsize, trefs = await upload_file(store, e.id, b"alice's edit " * 40)
    await commit(store, e.id, "a2", [put("WP/cash.xlsx", 1, theirs, tsize)],
                 {"WP/cash.xlsx": full(theirs, trefs)})
    ours, osize, orefs = await upload_file(store, e.id, b"bob's edit " * 40)
    answer = await commit(store, e.id, "b1", [put("WP/cash.xlsx", 1, ours, osize)],
                          {"WP/cash.xlsx": full(ours, orefs)}, user="bob")
    assert answer.results[0].status == "conflict"
    return e.id, (theirs, tsize), (ours, osize), answer.results[0]


@on_sync_store
async def test_a_conflict_becomes_an_item_with_both_authors_and_versions(store) -> None:
    eid, theirs, ours, result = await conflicted(store)
    [item] = await store.list_conflicts(eid, None)
    assert item.id == result.seq == 3
    assert (item.path, item.copy_path) == ("WP/cash.xlsx", result.conflict_path)
    assert (item.theirs.seq, item.theirs.user, item.theirs.content) == (2, "alice", theirs[0])
    assert (item.ours.seq, item.ours.user, item.ours.content, item.ours.size) == (3, "bob", *ours)
    assert (item.path_seq, item.copy_seq, item.copy_live, item.open) == (2, 3, True, True)
    assert item.created_at == T0
    # a member sees the items they wrote a side of; others see none
    assert [i.id for i in await store.list_conflicts(eid, "bob")] == [3]
    assert [i.id for i in await store.list_conflicts(eid, "alice")] == [3]
    assert await store.list_conflicts(eid, "carol") == []


@on_sync_store
async def test_a_refused_commit_leaves_no_item(store) -> None:
    eid, _, ours, _ = await conflicted(store)
    await store.checkout(eid, "WP/cash.xlsx", "alice", "s", None)
    with pytest.raises(Locked):
        await commit(store, eid, "b2", [put("WP/cash.xlsx", 1, ours[0], ours[1])], user="bob")
    assert len(await store.list_conflicts(eid, None)) == 1


@on_sync_store
async def test_resolve_ours_commits_the_copy_over_the_file_and_keeps_the_loser(store) -> None:
    eid, theirs, ours, result = await conflicted(store)
    item, answer = await store.resolve_conflict(eid, 3, "ours", "rita", "s9", "r1", (2, 3))
    assert answer.head == 5 and [r.status for r in answer.results] == ["applied", "applied"]
    head, files = await store.snapshot(eid)
    live = {f.path: f.content for f in files if f.content is not None}
    assert live == {"WP/cash.xlsx": ours[0]}  # the copy is gone from the head
    assert (item.resolution, item.resolved_by, item.resolved_seq, item.open) == ("ours", "rita", 5, False)
    # both losers stay in history: alice's version of the file and the copy's content
    versions = await store.history(eid, "WP/cash.xlsx")
    assert [v.content for v in versions] == [versions[0].content, theirs[0], ours[0]]
    copy_versions = await store.history(eid, result.conflict_path)
    assert [(v.kind, v.content) for v in copy_versions] == [("put", ours[0]), ("delete", None)]
    _, log = await store.changes_since(eid, 3, 100)
    assert [(c.path, c.kind, c.user) for c in log] == [
        ("WP/cash.xlsx", "put", "rita"), (result.conflict_path, "delete", "rita")
    ]
    audit = [r for r in await store.audit_records(eid) if r.event == "conflict_resolve"]
    assert len(audit) == 1 and audit[0].actor == "rita"
    assert audit[0].detail["choice"] == "ours" and audit[0].detail["ours"]["user"] == "bob"
    assert await store.list_conflicts(eid, None) == []
    [done] = await store.list_conflicts(eid, None, include_resolved=True)
    assert done.resolution == "ours"
    assert [r.problem for r in await store.verify_audit("acme")] == [None, None]


@on_sync_store
async def test_resolve_theirs_deletes_only_the_copy(store) -> None:
    eid, theirs, _, result = await conflicted(store)
    _, answer = await store.resolve_conflict(eid, 3, "theirs", "rita", None, "r1", (2, 3))
    assert answer.head == 4
    _, files = await store.snapshot(eid)
    assert {f.path: f.content for f in files if f.content} == {"WP/cash.xlsx": theirs[0]}


@on_sync_store
async def test_resolve_merged_uploads_a_new_version(store) -> None:
    eid, _, _, _ = await conflicted(store)
    merged, msize, mrefs = await upload_file(store, eid, b"both edits " * 60)
    _, answer = await store.resolve_conflict(
        eid, 3, "merged", "rita", None, "r1", (2, 3), (merged, msize), Manifest(merged, mrefs)
    )
    assert [r.status for r in answer.results] == ["applied", "applied"]
    _, files = await store.snapshot(eid)
    assert {f.path: f.content for f in files if f.content} == {"WP/cash.xlsx": merged}


@on_sync_store
async def test_stale_resolved_and_unknown_items_change_nothing(store) -> None:
    eid, _, ours, _ = await conflicted(store)
    head = (await store.snapshot(eid))[0]
    with pytest.raises(ConflictStale) as stale:
        await store.resolve_conflict(eid, 3, "ours", "rita", None, "r1", (1, 3))
    assert stale.value.details["path_seq"] == 2
    with pytest.raises(NotFound):
        await store.resolve_conflict(eid, 99, "ours", "rita", None, "r1", (2, 3))
    assert (await store.snapshot(eid))[0] == head
    await store.resolve_conflict(eid, 3, "theirs", "rita", None, "r1", (2, 3))
    # the same request again (a retry) answers as the first did, changing nothing
    again_item, again = await store.resolve_conflict(eid, 3, "theirs", "rita", None, "r1", (2, 3))
    assert again.head == head + 1 and again.replayed and again_item.resolution == "theirs"
    with pytest.raises(ConflictResolved):
        await store.resolve_conflict(eid, 3, "ours", "rita", None, "r2", (2, 4))
    with pytest.raises(ConflictResolved):  # another reviewer's retry of nothing they did
        await store.resolve_conflict(eid, 3, "theirs", "sam", None, "r1", (2, 3))
    with pytest.raises(BatchReused):  # the batch key of a commit is not a resolution's
        await commit(store, eid, "r1", [ProposedChange("x", "delete", 1)], user="rita")
    assert (await store.snapshot(eid))[0] == head + 1


@on_sync_store
async def test_a_lock_on_the_file_refuses_the_resolution_whole(store) -> None:
    eid, _, _, _ = await conflicted(store)
    await store.checkout(eid, "WP", "alice", "s", None)
    with pytest.raises(Locked):
        await store.resolve_conflict(eid, 3, "ours", "rita", None, "r1", (2, 3))
    [item] = await store.list_conflicts(eid, None)
    assert item.open


@on_sync_store
async def test_reviewer_is_a_role_the_store_grants(store) -> None:
    e = await store.create_engagement("acme", "")
    await store.grant(Grant("acme", "user", "local:rita", "rita", "reviewer"))
    assert await store.role_for("acme", "local:rita", ()) == "reviewer"
    await store.grant(Grant("acme", "user", "local:rita", "rita", "editor"))
    assert await store.role_for("acme", "local:rita", ()) == "editor"
    assert e.id


def test_schema_10_keeps_grants_and_allows_the_reviewer_role(tmp_path, monkeypatch) -> None:
    conn = sqlite3.connect(tmp_path / "metadata.sqlite3", isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:9])
    monkeypatch.setattr(schema, "LATEST_VERSION", 9)
    assert schema.migrate(conn, SQLITE) == 9
    at = "2026-03-01T09:00:00.000000+00:00"
    conn.execute(f"INSERT INTO engagements (name, title, created_at, head) VALUES ('acme', '', '{at}', 0)")
    conn.execute("INSERT INTO grants VALUES (1, 'user', 'local:carl', 'carl', 'editor')")
    conn.execute("INSERT INTO grants VALUES (1, 'group', 'S-1-5-21-1', 'Audit', 'admin')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO grants VALUES (1, 'user', 'local:rita', 'rita', 'reviewer')")
    monkeypatch.undo()
    assert schema.migrate(conn, SQLITE) == schema.LATEST_VERSION >= 10
    conn.execute("INSERT INTO grants VALUES (1, 'user', 'local:rita', 'rita', 'reviewer')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO grants VALUES (1, 'user', 'local:otto', 'otto', 'owner')")
    rows = conn.execute("SELECT kind, principal, role FROM grants ORDER BY principal").fetchall()
    assert rows == [("group", "S-1-5-21-1", "admin"), ("user", "local:carl", "editor"),
                    ("user", "local:rita", "reviewer")]
    assert conn.execute("SELECT COUNT(*) FROM conflicts").fetchone() == (0,)
    # the index the role look-ups use came back with the new table
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"grants_principal", "conflicts_open"} <= names
    conn.close()


@on_sync_store
async def test_a_conflict_copy_a_client_made_becomes_an_item(store) -> None:
    """A pulled version hit bob's unpushed edit: his client kept the edit as a conflict copy and
    pushes it as a new file. Only a new file named as a copy of a live file makes an item."""
    e = await store.create_engagement("acme", "")
    theirs, tsize, trefs = await upload_file(store, e.id, b"alice's version")
    await commit(store, e.id, "a1", [put("WP/cash.xlsx", None, theirs, tsize)],
                 {"WP/cash.xlsx": full(theirs, trefs)})
    ours, osize, orefs = await upload_file(store, e.id, b"bob's local edit")
    copy = "WP/cash (conflict bob 2026-11-26 1530).xlsx"
    stray = "WP/gone (conflict bob 2026-11-26 1530).xlsx"  # of no live file: no item
    await commit(store, e.id, "b1", [put(copy, None, ours, osize), put(stray, None, ours, osize)],
                 {copy: full(ours, orefs)}, user="bob")
    [item] = await store.list_conflicts(e.id, None)
    assert (item.id, item.path, item.copy_path) == (2, "WP/cash.xlsx", copy)
    assert (item.theirs.seq, item.theirs.user, item.ours.user, item.ours.content) == (1, "alice", "bob", ours)
    await store.resolve_conflict(e.id, 2, "theirs", "rita", None, "r1", (1, 2))
    # the copy put again at its tombstone (an edit kept by bob's client) is no new item
    await commit(store, e.id, "b2", [put(copy, None, ours, osize)], user="bob")
    assert await store.list_conflicts(e.id, None) == []
