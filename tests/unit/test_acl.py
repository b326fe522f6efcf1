"""Roles: what each allows, and how several grants combine."""

from __future__ import annotations

import pytest

from smartsyncd.auth.acl import ROLE_ALLOWS, allows, max_role, role_rank


def test_role_allows_table() -> None:
    assert ROLE_ALLOWS["reader"] == {"read"}
    assert ROLE_ALLOWS["editor"] == {"read", "write"}
    assert ROLE_ALLOWS["admin"] == {"read", "write", "admin"}


@pytest.mark.parametrize(
    ("role", "read", "write", "admin"),
    [
        (None, False, False, False),
        ("reader", True, False, False),
        ("editor", True, True, False),
        ("admin", True, True, True),
    ],
)
def test_allows(role, read, write, admin) -> None:
    assert allows(role, "read") is read
    assert allows(role, "write") is write
    assert allows(role, "admin") is admin


def test_unknown_operation_is_an_error_not_a_yes() -> None:
    with pytest.raises(ValueError):
        allows("admin", "delete_everything")


def test_rank_and_max_role() -> None:
    assert [role_rank(r) for r in (None, "reader", "editor", "admin")] == [0, 1, 2, 3]
    assert max_role([]) is None
    assert max_role([None, None]) is None
    assert max_role(["reader", None, "editor", "reader"]) == "editor"
    assert max_role(["admin", "reader"]) == "admin"
    with pytest.raises(ValueError):
        role_rank("owner")  # type: ignore[arg-type]


# -- engagement admins (issue 17) ----------------------------------------------------------------


def test_least_role_names_what_a_refusal_misses() -> None:
    from smartsyncd.auth.acl import least_role

    assert [least_role(op) for op in ("read", "write", "admin")] == ["reader", "editor", "admin"]
    with pytest.raises(ValueError):
        least_role("delete_everything")


@pytest.mark.parametrize(
    ("actor", "current", "new", "ok"),
    [
        ("admin", None, "reader", True),
        ("admin", "reader", "admin", True),  # up to one's own role
        ("admin", "admin", None, True),
        ("admin", "editor", "reader", True),
        ("editor", None, "reader", False),  # only a role that may manage
        ("editor", "reader", None, False),
        ("reader", None, "reader", False),
    ],
)
def test_may_assign(actor, current, new, ok) -> None:
    from smartsyncd.auth.acl import may_assign

    assert may_assign(actor, current, new) is ok


def test_may_assign_never_above_ones_own_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a role ranked above admin (none exists yet), an admin could neither give it nor
    touch a grant of it: the rank comparison, not the role names, decides."""
    from smartsyncd.auth import acl

    monkeypatch.setattr(acl, "ROLES", ("reader", "editor", "admin", "owner"))
    monkeypatch.setitem(acl.ROLE_ALLOWS, "owner", frozenset({"read", "write", "admin"}))  # type: ignore[index]
    assert acl.may_assign("admin", None, "owner") is False  # type: ignore[arg-type]
    assert acl.may_assign("admin", "owner", "reader") is False  # type: ignore[arg-type]
    assert acl.may_assign("owner", "admin", "owner") is True  # type: ignore[arg-type]


def test_keeps_an_admin() -> None:
    from smartsyncd.auth.acl import keeps_an_admin

    assert keeps_an_admin(["reader", "admin"]) is True
    assert keeps_an_admin(["reader", "editor"]) is False
    assert keeps_an_admin([]) is False
