"""Stable ids of directory entries: SIDs and GUIDs in text form, group ids, account principals.

A group is granted by its stable id (objectSid, else objectGUID/entryUUID, else its DN); an
account is a principal ``ad:<objectSid>`` (``core.principals``), else ``ldap:<uuid>`` or
``ldap:dn:<dn>`` on a directory without SIDs. Nothing here does I/O.
"""

from __future__ import annotations

import struct
import uuid

from smartsyncd.auth.ldapconn import Entry
from smartsyncd.core.principals import DIRECTORY, sid_principal


def sid_to_str(raw: bytes) -> str:
    """Binary objectSid -> ``S-1-5-21-...``; a value already in text form is returned as is."""
    if raw[:4] == b"S-1-":
        return raw.decode("ascii")
    if len(raw) < 8:
        raise ValueError("objectSid too short")
    revision, count = raw[0], raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    if len(raw) != 8 + 4 * count:
        raise ValueError("objectSid length does not match its sub-authority count")
    subs = struct.unpack(f"<{count}I", raw[8:])
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])


def guid_to_str(raw: bytes) -> str:
    """Binary objectGUID (little-endian fields, as AD stores it) -> canonical UUID text."""
    if len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))
    return raw.decode("ascii").lower()


def group_id(entry: Entry) -> str:
    for name, convert in (
        ("objectSid", sid_to_str),
        ("objectGUID", guid_to_str),
        ("entryUUID", lambda v: v.decode("ascii").lower()),
    ):
        values = entry.values(name)
        if values:
            try:
                return convert(values[0])
            except (ValueError, UnicodeDecodeError):
                continue
    return entry.dn


def group_name(entry: Entry) -> str:
    return entry.text("cn") or entry.text("sAMAccountName") or entry.dn


def account_principal(entry: Entry) -> str:
    """The principal id of a directory account: ``ad:<SID>`` when it has one."""
    sids = entry.values("objectSid")
    if sids:
        try:
            return sid_principal(sid_to_str(sids[0]))
        except (ValueError, UnicodeDecodeError):
            pass
    other = group_id(entry)  # objectGUID / entryUUID, else the DN
    if other == entry.dn:
        return DIRECTORY + "dn:" + entry.dn.casefold()
    return DIRECTORY + other
