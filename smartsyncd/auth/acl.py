"""Roles and what they allow: ``reader`` reads, ``editor`` also writes, ``reviewer`` also
resolves conflict items (docs/workflow.md, "Conflict review"), ``admin`` also manages."""

from __future__ import annotations

from collections.abc import Iterable

from smartsyncd.core.model import ROLES, Role

OPERATIONS: frozenset[str] = frozenset({"read", "write", "review", "admin"})

ROLE_ALLOWS: dict[Role, frozenset[str]] = {
    "reader": frozenset({"read"}),
    "editor": frozenset({"read", "write"}),
    "reviewer": frozenset({"read", "write", "review"}),
    "admin": frozenset({"read", "write", "review", "admin"}),
}


def allows(role: Role | None, operation: str) -> bool:
    """True when ``role`` may perform ``operation``; no role allows nothing.

    An unknown operation is a programming error (ValueError), never a silent yes or no.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    if role is None:
        return False
    return operation in ROLE_ALLOWS.get(role, frozenset())


def role_rank(role: Role | None) -> int:
    """0 for no role, then 1 reader, 2 editor, 3 reviewer, 4 admin."""
    if role is None:
        return 0
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return ROLES.index(role) + 1


def max_role(roles: Iterable[Role | None]) -> Role | None:
    """The strongest of ``roles`` (a user's own grant and their groups' grants), or None."""
    best: Role | None = None
    for role in roles:
        if role_rank(role) > role_rank(best):
            best = role
    return best
