"""Roles and what they allow: ``reader`` reads, ``editor`` also writes, ``admin`` also manages."""

from __future__ import annotations

from collections.abc import Iterable

from smartsyncd.core.model import ROLES, Role

OPERATIONS: frozenset[str] = frozenset({"read", "write", "admin"})

ROLE_ALLOWS: dict[Role, frozenset[str]] = {
    "reader": frozenset({"read"}),
    "editor": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
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
    """0 for no role, then 1 reader, 2 editor, 3 admin."""
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


# -- engagement admins managing grants (issue 17) ------------------------------------------------


def least_role(operation: str) -> Role:
    """The weakest role that allows ``operation``: what a refusal names as missing."""
    for role in ROLES:
        if allows(role, operation):
            return role
    raise ValueError(f"no role allows {operation!r}")  # pragma: no cover - every one is allowed


def may_assign(actor: Role, current: Role | None, new: Role | None) -> bool:
    """May someone with role ``actor`` change a grant from ``current`` to ``new`` (None: no
    grant)? Never above their own role, and never touching a grant above their own role."""
    return allows(actor, "admin") and max(role_rank(current), role_rank(new)) <= role_rank(actor)


def keeps_an_admin(roles: Iterable[Role]) -> bool:
    """True when the grants left (their roles) still include one that may manage."""
    return any(allows(role, "admin") for role in roles)
