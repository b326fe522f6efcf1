"""Who may use the admin status page: ``[admin] users`` and ``[admin] groups`` (issue 17).

``users`` are local accounts (``local:<name>``: a directory account of the same name is not an
admin by name). ``groups`` are directory groups, each given as a SID (``S-1-5-21-...``), a name
or a DN; names and DNs are looked up once through the directory backend's service account
(``LdapAuthenticator.lookup_group``) and the id kept, because sessions carry group ids only. A
group that cannot be looked up (directory down, no such group) admits nobody until a later
look-up succeeds: the page then refuses rather than guessing. Nobody is an admin when both
lists are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.logger import Logger

from smartsyncd.core.principals import is_local
from smartsyncd.storage.api import SessionRecord

log = Logger(namespace="smartsyncd.auth")


class GroupDirectory(Protocol):
    """Resolves a group name or DN to its stable id (``auth.ldap.LdapAuthenticator``)."""

    async def lookup_group(self, name_or_dn: str) -> tuple[str, str]: ...


def is_sid(text: str) -> bool:
    return text.upper().startswith("S-1-")


class AdminPolicy:
    """Decides whether a session belongs to a status-page admin."""

    def __init__(self, users: Sequence[str], groups: Sequence[str],
                 directory: GroupDirectory | None = None) -> None:
        self._principals = frozenset(f"local:{u}" for u in users)
        self._group_ids = {g.upper() for g in groups if is_sid(g)}
        self._unresolved = [g for g in groups if not is_sid(g)]
        self._directory = directory

    @property
    def configured(self) -> bool:
        return bool(self._principals or self._group_ids or self._unresolved)

    async def allows(self, session: SessionRecord) -> bool:
        """True for a configured local admin or a member of a configured group."""
        if is_local(session.principal) and session.principal in self._principals:
            return True
        if not session.groups:
            return False
        await self._resolve()
        return any(g.upper() in self._group_ids for g in session.groups)

    async def _resolve(self) -> None:
        if not self._unresolved or self._directory is None:
            return
        still: list[str] = []
        for name in self._unresolved:
            try:
                group_id, _ = await self._directory.lookup_group(name)
            except Exception as e:  # noqa: BLE001 - directory down or no such group: retry later
                log.warn("admin group {group} not resolved: {error}", group=name, error=str(e))
                still.append(name)
                continue
            self._group_ids.add(group_id.upper())
        self._unresolved = still
