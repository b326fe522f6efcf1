"""Roles: what each allows, and how several grants combine."""

from __future__ import annotations

import pytest

from smartsyncd.auth.acl import ROLE_ALLOWS, allows, max_role, role_rank


def test_role_allows_table() -> None:
    assert ROLE_ALLOWS["reader"] == {"read"}
    assert ROLE_ALLOWS["editor"] == {"read", "write"}
    assert ROLE_ALLOWS["reviewer"] == {"read", "write", "review"}
    assert ROLE_ALLOWS["admin"] == {"read", "write", "review", "admin"}


@pytest.mark.parametrize(
    ("role", "read", "write", "review", "admin"),
    [
        (None, False, False, False, False),
        ("reader", True, False, False, False),
        ("editor", True, True, False, False),
        ("reviewer", True, True, True, False),
        ("admin", True, True, True, True),
    ],
)
def test_allows(role, read, write, review, admin) -> None:
    assert allows(role, "read") is read
    assert allows(role, "write") is write
    assert allows(role, "review") is review
    assert allows(role, "admin") is admin


def test_unknown_operation_is_an_error_not_a_yes() -> None:
    with pytest.raises(ValueError):
        allows("admin", "delete_everything")


def test_rank_and_max_role() -> None:
    ranks = [role_rank(r) for r in (None, "reader", "editor", "reviewer", "admin")]
    assert ranks == [0, 1, 2, 3, 4]
    assert max_role(["reviewer", "editor"]) == "reviewer"
    assert max_role(["reviewer", "admin"]) == "admin"
    assert max_role([]) is None
    assert max_role([None, None]) is None
    assert max_role(["reader", None, "editor", "reader"]) == "editor"
    assert max_role(["admin", "reader"]) == "admin"
    with pytest.raises(ValueError):
        role_rank("owner")  # type: ignore[arg-type]
