"""Engagement-wide ignore rules (issue 16): the core check of the text as set and of a
commit's puts (no reactor), and the store on SQLite and PostgreSQL (set, show, clear, audited,
enforced at commit, deletes still allowed) and its in-memory twin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_commit_rules import NOW, delete, head_with, put
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    T0,
    backend,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    upload_file,
)
from test_storage import put as store_put

from smartsyncd.core.commit_rules import plan_commit
from smartsyncd.core.errors import BadRequest, InvalidPath, NotFound
from smartsyncd.core.ignore import (
    MAX_RULES_BYTES,
    EngagementRules,
    check_engagement_rules,
    rules_digest,
)
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync

RULES = "# firm-wide\n*.bak\nscratch/\n!keep.bak\n"


def test_a_bad_pattern_is_refused_naming_its_line() -> None:
    with pytest.raises(BadRequest) as caught:
        check_engagement_rules("*.bak\n# fine\n[z-a].txt\n")
    assert "line 3" in caught.value.message and caught.value.details["line"] == 3
    assert check_engagement_rules(RULES) == RULES


def test_rules_over_the_size_limit_are_refused() -> None:
    with pytest.raises(BadRequest, match="limited"):
        check_engagement_rules("a\n" * (MAX_RULES_BYTES // 2 + 1))


def test_engagement_rules_match_as_gitignore_case_sensitively() -> None:
    rules = EngagementRules.parse(RULES)
    assert rules.digest == rules_digest(RULES)
    assert rules.ignores("x.bak") and rules.ignores("a/scratch/n.txt")
    assert not rules.ignores("keep.bak") and not rules.ignores("X.BAK")
    assert not rules.ignores("scratch.txt")


def test_commit_refuses_a_put_of_an_ignored_path_naming_it() -> None:
    rules = EngagementRules.parse(RULES)
    head = head_with()
    with pytest.raises(InvalidPath) as caught:
        plan_commit([put("ok.txt", None, 1), put("old.bak", None, 2)], head, "alice", NOW,
                    ignored=rules.ignores)
    assert caught.value.details["path"] == "old.bak"
    outcomes = plan_commit([put("ok.txt", None, 1)], head, "alice", NOW, ignored=rules.ignores)
    assert [o.status for o in outcomes] == ["applied"]


def test_an_edit_is_refused_but_a_delete_of_a_stored_ignored_file_is_allowed() -> None:
    rules = EngagementRules.parse(RULES)
    head = head_with(("old.bak", 1, 1))  # stored before the rule existed
    with pytest.raises(InvalidPath):
        plan_commit([put("old.bak", 1, 2)], head, "alice", NOW, ignored=rules.ignores)
    [same] = plan_commit([put("old.bak", 1, 1)], head, "alice", NOW, ignored=rules.ignores)
    assert same.status == "unchanged"  # not a change: nothing to refuse
    [gone] = plan_commit([delete("old.bak", 1)], head, "alice", NOW, ignored=rules.ignores)
    assert (gone.status, gone.kind) == ("applied", "delete")


@pytest.fixture
def istore(backend) -> Iterator[SqlServerStore]:  # noqa: F811
    s = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


@on_sync_store
async def test_store_sets_shows_clears_and_audits_rules(istore) -> None:
    e = await istore.create_engagement("acme", "")
    assert await istore.ignore_rules(e.id) is None
    digest = await istore.set_ignore_rules("acme", RULES, actor="local:carol")
    assert digest == rules_digest(RULES)
    rules = await istore.ignore_rules(e.id)
    assert rules is not None and (rules.text, rules.digest) == (RULES, digest)
    with pytest.raises(BadRequest, match="line 1"):
        await istore.set_ignore_rules("acme", "[z-a]\n")
    assert (await istore.ignore_rules(e.id)).text == RULES  # a refused set changes nothing
    assert await istore.set_ignore_rules("acme", None, actor="local:carol") is None
    assert await istore.ignore_rules(e.id) is None
    with pytest.raises(NotFound):
        await istore.set_ignore_rules("nope", RULES)

    events = [r for r in await istore.audit_records(e.id) if r.event == "ignore_rules"]
    assert [(r.actor, r.detail["digest"]) for r in events] == [
        ("local:carol", digest), ("local:carol", None)
    ]
    assert all(r.problem is None for r in await istore.verify_audit("acme"))


@on_sync_store
async def test_store_commit_refuses_ignored_puts_and_allows_their_deletes(istore) -> None:
    e = await istore.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(istore, e.id, b"draft")
    await commit(istore, e.id, "b1", [store_put("old.bak", None, c1, s1)], {"old.bak": full(c1, r1)})
    await istore.set_ignore_rules("acme", RULES)
    c2, s2, r2 = await upload_file(istore, e.id, b"draft 2")
    with pytest.raises(InvalidPath) as caught:
        await commit(istore, e.id, "b2", [store_put("new.bak", None, c2, s2)], {"new.bak": full(c2, r2)})
    assert caught.value.details["path"] == "new.bak"
    assert await istore.head(e.id) == 1  # nothing applied
    result = await commit(istore, e.id, "b3", [ProposedChange("old.bak", "delete", 1)])
    assert [c.status for c in result.results] == ["applied"]
    await istore.set_ignore_rules("acme", None)
    result = await commit(istore, e.id, "b4", [store_put("new.bak", None, c2, s2)], {"new.bak": full(c2, r2)})
    assert [c.status for c in result.results] == ["applied"]


def test_memory_twin_keeps_and_enforces_rules_the_same_way() -> None:
    async def scenario() -> None:
        store = MemoryServerStore()
        e = await store.create_engagement("acme", "")
        with pytest.raises(BadRequest, match="line 2"):
            await store.set_ignore_rules("acme", "ok\n[z-a]\n")
        assert await store.set_ignore_rules("acme", RULES) == rules_digest(RULES)
        c1, s1, r1 = await upload_file(store, e.id, b"draft")
        with pytest.raises(InvalidPath):
            await commit(store, e.id, "b1", [store_put("a.bak", None, c1, s1)], {"a.bak": full(c1, r1)})
        await store.set_ignore_rules("acme", None)
        assert await store.ignore_rules(e.id) is None

    run_sync(scenario())
