"""Principal ids: who a grant, session, block or throttle count belongs to, by backend.

A local account and a directory account may have the same name; they are different people, so
everything that decides access keys on an id that names the backend:

- ``local:<name>``: a local account (``users.name``);
- ``ad:<objectSid>``: a directory account with a SID (Active Directory, Samba). The SID stays
  when the account is renamed, so its grants follow it;
- ``ldap:<entryUUID or objectGUID>`` (or ``ldap:dn:<dn>``): a directory without SIDs;
- ``name:<name>``: a user grant made before ids were namespaced (schema 5) to a directory
  account, by name. The account's first sign-in (or session refresh) claims it for its id.

Displays (logs, the change log, ``GET /v1/session``) keep the readable name.
"""

from __future__ import annotations

import re

LOCAL = "local:"
DIRECTORY_SID = "ad:"
DIRECTORY = "ldap:"
PENDING = "name:"

_SID = re.compile(r"S-1-\d+(?:-\d+){1,15}")


def local_principal(name: str) -> str:
    return LOCAL + name


def sid_principal(sid: str) -> str:
    return DIRECTORY_SID + sid


def pending_principal(name: str) -> str:
    return PENDING + name


def is_sid(text: str) -> bool:
    """True for a SID in its text form (``S-1-5-21-...``)."""
    return _SID.fullmatch(text) is not None


def explicit_principal(text: str) -> str | None:
    """``text`` as a principal id when it is written as one (``local:x``, ``ad:S-1-...``, a
    bare SID), else None (a name to resolve)."""
    if is_sid(text):
        return sid_principal(text)
    for prefix in (LOCAL, DIRECTORY, PENDING):
        if text.startswith(prefix) and len(text) > len(prefix):
            return text
    if text.startswith(DIRECTORY_SID) and is_sid(text[len(DIRECTORY_SID):]):
        return text
    return None


def is_local(principal: str) -> bool:
    return principal.startswith(LOCAL)
