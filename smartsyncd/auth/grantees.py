"""Who a grant names, and what an engagement admin may do to an engagement's grants (issue 17).

``GranteeResolver`` turns a user or group given by a person into the principal id the grants
table keys on (``core/principals.py``): an explicit id (``local:alice``, ``ad:S-1-5-21-...``, a
bare SID), a local account, else the directory's account or group. ``smartsync-admin grant``
and the engagement admin's ``POST .../grants`` both resolve through it, and both revoke the
grants ``matching_grants`` finds (the stored id or the display name).

``delegated_check`` is the ``GrantCheck`` of a grant change made by an engagement admin over
HTTP: the store runs it inside the change's transaction (``storage/accounts.py``), so the rules
(``acl.may_assign``, ``acl.keeps_an_admin``) see the grants as they are when the change lands.
``smartsync-admin`` on the server passes no check: it may do anything, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from smartsyncd.auth.acl import keeps_an_admin, may_assign
from smartsyncd.core.errors import Forbidden, LastAdmin, NotFound, SyncError
from smartsyncd.core.model import Role
from smartsyncd.core.principals import DIRECTORY_SID, LOCAL, explicit_principal, local_principal
from smartsyncd.storage.api import Grant, GrantCheck, PrincipalKind, UserStore


class Directory(Protocol):
    """The directory lookups a grant needs (``auth.ldap.LdapAuthenticator`` has them)."""

    async def lookup_principal(self, name: str) -> tuple[str, str]: ...
    async def lookup_group(self, name_or_dn: str) -> tuple[str, str]: ...


class NoSuchUser(NotFound):
    """No local account of that name and no directory to look in (``user``)."""


class GranteeResolver:
    """(principal id, display name) of a user or group, over local accounts and the directory."""

    def __init__(self, users: UserStore, directory: Directory | None) -> None:
        self._users = users
        self._directory = directory

    async def user(self, name: str) -> tuple[str, str]:
        """An explicit id, a local account, else the directory account (``FIRM\\alice`` names
        the directory one when both exist). ``NotFound`` when none is found."""
        explicit = explicit_principal(name)
        if explicit is not None and explicit.startswith(LOCAL):
            return explicit, explicit[len(LOCAL):]
        if explicit is None and await self._users.get_user(name) is not None:
            return local_principal(name), name
        directory = self._directory
        if explicit is not None and (directory is None or not explicit.startswith(DIRECTORY_SID)):
            return explicit, explicit  # an id needs no lookup: shown as itself
        if directory is None:
            raise NoSuchUser(f"unknown user {name!r}", user=name)
        try:
            return await directory.lookup_principal(
                explicit[len(DIRECTORY_SID):] if explicit is not None else name
            )
        except Exception as e:  # noqa: BLE001 - any directory failure is one refusal
            if explicit is not None:
                return explicit, explicit
            raise NotFound(f"user {name!r} not found in the directory: {describe(e)}", user=name) from None

    async def group(self, name: str) -> tuple[str, str]:
        """The directory group's stable id and name; without a directory, the name itself."""
        if self._directory is None:
            return name, name
        try:
            return await self._directory.lookup_group(name)
        except Exception as e:  # noqa: BLE001 - any directory failure is one refusal
            raise NotFound(f"group {name!r}: directory lookup failed: {describe(e)}", group=name) from None

    async def grant(self, engagement: str, kind: PrincipalKind, name: str, role: Role) -> Grant:
        """The grant of ``role`` to the user or group ``name`` (resolved)."""
        principal, display = await (self.user(name) if kind == "user" else self.group(name))
        return Grant(engagement, kind, principal, display, role)


def matching_grants(grants: Sequence[Grant], kind: PrincipalKind, wanted: str) -> list[Grant]:
    """The grants of ``kind`` whose stored id or display name is ``wanted`` (so a directory
    group needs no lookup to be revoked)."""
    ids = {wanted, "local:" + wanted, "ad:" + wanted}
    return [
        g for g in grants
        if g.kind == kind and (g.principal in ids or g.display_name.casefold() == wanted.casefold())
    ]


def delegated_check(actor_role: Role, engagement: str) -> GrantCheck:
    """The rules of a grant change by an engagement member with ``actor_role``: no grant above
    their own role given or changed, and at least one admin grant left on the engagement."""

    def check(before: Sequence[Grant], after: Sequence[Grant]) -> None:
        old = {(g.kind, g.principal): g.role for g in before}
        new = {(g.kind, g.principal): g.role for g in after}
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key) and not may_assign(actor_role, old.get(key), new.get(key)):
                raise Forbidden(
                    f"role {actor_role!r} may not give, change or take away a role above its own"
                    f" ({key[0]} {key[1]}: {old.get(key)} -> {new.get(key)})",
                    role=actor_role,
                )
        if not keeps_an_admin(g.role for g in after):
            raise LastAdmin(
                f"that would leave engagement {engagement!r} without an admin; grant another"
                " admin first (only smartsync-admin on the server may remove the last one)",
                engagement=engagement,
            )

    return check


def describe(error: BaseException) -> str:
    """One line for a directory failure."""
    if isinstance(error, SyncError):
        return error.message
    reason = getattr(error, "reason", None)
    return str(reason or error) or type(error).__name__
