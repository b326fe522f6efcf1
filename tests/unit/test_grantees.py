"""Grants by an engagement admin (issue 17): name resolution shared with smartsync-admin, and
the delegated check the store runs inside the grant's transaction (memory and SQLite stores)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from smartsyncd.auth.grantees import GranteeResolver, NoSuchUser, delegated_check, matching_grants
from smartsyncd.core.errors import Forbidden, LastAdmin, NotFound
from smartsyncd.storage.api import Grant
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_sqlite_store, run_sync

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: Any, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryServerStore(now=lambda: T0)
        return
    s = open_sync_sqlite_store(str(tmp_path / "data"), now=lambda: T0)
    try:
        yield s
    finally:
        run_sync(s.close())


class FakeDirectory:
    """A directory with one account and one group (the resolver's collaborator, not under test)."""

    async def lookup_principal(self, name: str) -> tuple[str, str]:
        if name.lower() in ("firm\\alice", "alice", "s-1-5-21-7-1101"):
            return "ad:S-1-5-21-7-1101", "alice"
        raise LookupError(f"no account {name}")

    async def lookup_group(self, name_or_dn: str) -> tuple[str, str]:
        if name_or_dn.casefold() == "audit team":
            return "S-1-5-21-7-2001", "Audit Team"
        raise LookupError(f"no group {name_or_dn}")


def test_users_resolve_like_the_admin_tool(store: Any) -> None:
    async def body() -> None:
        await store.add_user("bob", None)
        local = GranteeResolver(store, None)
        assert await local.user("bob") == ("local:bob", "bob")
        assert await local.user("local:zed") == ("local:zed", "zed")
        assert await local.user("S-1-5-21-7-9") == ("ad:S-1-5-21-7-9", "ad:S-1-5-21-7-9")
        with pytest.raises(NoSuchUser):
            await local.user("alice")
        assert await local.group("partners") == ("partners", "partners")

        firm = GranteeResolver(store, FakeDirectory())
        assert await firm.user("bob") == ("local:bob", "bob")  # a local account first
        assert await firm.user("FIRM\\alice") == ("ad:S-1-5-21-7-1101", "alice")
        with pytest.raises(NotFound, match="not found in the directory"):
            await firm.user("nobody")
        assert await firm.grant("acme", "group", "audit team", "reader") == Grant(
            "acme", "group", "S-1-5-21-7-2001", "Audit Team", "reader")
        with pytest.raises(NotFound, match="directory lookup failed"):
            await firm.group("No Such Group")

    run_sync(body())


def test_matching_grants_by_id_or_name() -> None:
    grants = [Grant("e", "user", "local:bob", "bob", "editor"),
              Grant("e", "group", "S-1-5-21-7-2001", "Audit Team", "reader")]
    assert matching_grants(grants, "user", "bob") == grants[:1]
    assert matching_grants(grants, "user", "local:bob") == grants[:1]
    assert matching_grants(grants, "group", "audit team") == grants[1:]
    assert matching_grants(grants, "group", "bob") == []


def test_the_delegated_check_runs_in_the_grant_change(store: Any) -> None:
    async def body() -> None:
        await store.create_engagement("acme", "A")
        await store.grant(Grant("acme", "user", "local:carol", "carol", "admin"))
        await store.grant(Grant("acme", "user", "local:dave", "dave", "editor"))
        check = delegated_check("admin", "acme")
        before = await store.list_grants("acme")

        # the last admin can neither go nor step down; nothing changes
        with pytest.raises(LastAdmin):
            await store.revoke("acme", "user", "local:carol", "carol", check)
        with pytest.raises(LastAdmin):
            await store.grant(Grant("acme", "user", "local:carol", "carol", "editor"), "carol", check)
        assert await store.list_grants("acme") == before

        # an editor's check refuses any change (it may not manage)
        with pytest.raises(Forbidden):
            await store.grant(Grant("acme", "user", "local:erin", "erin", "reader"), "dave",
                              delegated_check("editor", "acme"))
        assert await store.list_grants("acme") == before

        # a second admin: now carol may step down
        await store.grant(Grant("acme", "user", "local:dave", "dave", "admin"), "carol", check)
        assert await store.revoke("acme", "user", "local:carol", "carol", check) is True
        assert await store.role_for("acme", "local:carol", []) is None

        # a group's admin grant counts as an admin
        await store.grant(Grant("acme", "group", "partners", "partners", "admin"), "dave", check)
        assert await store.revoke("acme", "user", "local:dave", "dave", check) is True
        with pytest.raises(LastAdmin):
            await store.revoke("acme", "group", "partners", "dave", check)

    run_sync(body())


def test_grant_changes_name_their_actor_in_the_audit_chain(tmp_path: Any) -> None:
    store = open_sync_sqlite_store(str(tmp_path / "data"), now=lambda: T0)

    async def body() -> None:
        eng = await store.create_engagement("acme", "A")
        await store.grant(Grant("acme", "user", "local:carol", "carol", "admin"))
        check = delegated_check("admin", "acme")
        await store.grant(Grant("acme", "user", "local:erin", "erin", "reader"), "carol", check)
        await store.revoke("acme", "user", "local:erin", "carol", check)
        with pytest.raises(LastAdmin):
            await store.revoke("acme", "user", "local:carol", "carol", check)
        trail = [(r.event, r.actor, r.detail.get("principal"))
                 for r in await store.audit_records(eng.id) if r.chain == "eng:acme"]
        assert trail == [
            ("grant", "smartsync-admin", "local:carol"),
            ("grant", "carol", "local:erin"),
            ("revoke", "carol", "local:erin"),  # the refused revoke left no event
        ]
        assert all(r.problem is None for r in await store.verify_audit("acme"))

    try:
        run_sync(body())
    finally:
        run_sync(store.close())
