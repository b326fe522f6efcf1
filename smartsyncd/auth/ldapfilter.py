"""LDAP search filters built safely: RFC 4515 value escaping and the user-name forms we accept.

Every value that comes from outside (a user name, a DN read back from the directory) goes through
``escape_filter_value`` before it is put into a filter string; filter strings are then parsed
into ldaptor filter objects with ``parse_filter``. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from ldaptor import ldapfilter
from ldaptor.protocols import pureldap

# RFC 4515 section 3: these must be written as \XX in an assertion value.
_SPECIAL = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\x00": r"\00"}


def escape_filter_value(value: str) -> str:
    """Escape ``value`` for use as an assertion value inside an LDAP filter (RFC 4515).

    Backslash, ``*``, ``(``, ``)`` and NUL become ``\\5c``, ``\\2a``, ``\\28``, ``\\29`` and
    ``\\00``; other control characters are written as ``\\XX`` too (ldaptor's filter parser
    would otherwise expand a tab into spaces). Everything else, non-ASCII included, is kept.
    """
    return "".join(
        _SPECIAL.get(ch) or (f"\\{ord(ch):02x}" if ord(ch) < 0x20 or ch == "\x7f" else ch)
        for ch in value
    )


def parse_filter(text: str) -> pureldap.LDAPFilter:
    """Parse an RFC 4515 filter string into an ldaptor filter object (ValueError if malformed)."""
    try:
        return ldapfilter.parseFilter(text)
    except ldapfilter.InvalidLDAPFilter as e:
        raise ValueError(f"invalid LDAP filter {text!r}: {e}") from None


def equals(attribute: str, value: str) -> str:
    """``(attribute=value)`` with the value escaped."""
    return f"({attribute}={escape_filter_value(value)})"


def all_of(*parts: str) -> str:
    """``(&part1part2...)``; parts are already-built filters."""
    return "(&" + "".join(parts) + ")"


def any_of(*parts: str) -> str:
    """``(|part1part2...)``; parts are already-built filters."""
    return "(|" + "".join(parts) + ")"


def in_chain(attribute: str, dn: str) -> str:
    """AD's LDAP_MATCHING_RULE_IN_CHAIN: entries whose ``attribute`` reaches ``dn`` transitively."""
    return f"({attribute}:1.2.840.113556.1.4.1941:={escape_filter_value(dn)})"


class BadUserName(ValueError):
    """The typed name is not a form this directory accepts (wrong domain, empty, NUL...)."""


@dataclass(frozen=True)
class UserName:
    """A sign-in name split into its form.

    ``form`` is "upn" (``alice@firm.example``), "downlevel" (``FIRM\\alice``) or "plain"
    (``alice``); ``account`` is the part that names the account (the whole UPN, or the name
    without the domain).
    """

    form: str
    account: str
    typed: str


def split_user_name(typed: str, netbios_domain: str | None) -> UserName:
    """Classify a typed user name; raise ``BadUserName`` for names no account can have.

    ``FIRM\\alice`` is only accepted when FIRM equals the configured NetBIOS domain (case
    insensitive). NUL and control characters are refused outright.
    """
    name = typed.strip()
    if not name:
        raise BadUserName("empty user name")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        raise BadUserName("control character in user name")
    if "\\" in name:
        domain, _, account = name.partition("\\")
        if not netbios_domain:
            raise BadUserName("down-level name but no netbios_domain configured")
        if domain.casefold() != netbios_domain.casefold():
            raise BadUserName(f"domain {domain!r} is not {netbios_domain!r}")
        if not account or "\\" in account or "@" in account:
            raise BadUserName("malformed down-level name")
        return UserName("downlevel", account, name)
    if "@" in name:
        local, _, suffix = name.rpartition("@")
        if not local or not suffix:
            raise BadUserName("malformed user principal name")
        return UserName("upn", name, name)
    return UserName("plain", name, name)


def user_search_filter(
    name: UserName,
    base_filter: str,
    user_attribute: str,
    upn_attribute: str,
    upn_suffix: str | None,
) -> str:
    """The filter that finds exactly the account ``name`` names (values escaped).

    A UPN whose suffix is the configured ``upn_suffix`` also matches the account name before
    the ``@`` (AD's implicit UPN, for accounts created without a userPrincipalName).
    """
    if name.form == "upn":
        local, _, suffix = name.account.rpartition("@")
        who = equals(upn_attribute, name.account)
        if upn_suffix and suffix.casefold() == upn_suffix.casefold():
            who = any_of(who, equals(user_attribute, local))
    else:
        who = equals(user_attribute, name.account)
    return all_of(base_filter, who)
