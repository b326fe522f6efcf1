"""The ``[kerberos]`` configuration section (single sign-on, docs/active-directory.md).

Parsed without importing python-gssapi, so a daemon without ``[kerberos]`` never needs it. Bad
values raise ``ValueError`` naming the key; the daemon refuses to start with that message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEYS = {"keytab", "service", "realm", "replay_cache"}
# GSSAPI host-based service name: service@host.name
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True)
class KerberosConfig:
    """Where the service keys are and which tickets to accept.

    ``service`` (``HTTP@sync.firm.example``) restricts acceptance to that principal's keys;
    without it any key in the keytab is accepted. ``realm`` is the only realm whose users are
    signed in (default: the ``[ldap] upn_suffix`` upper-cased). ``replay_cache`` is a file
    (shared by every daemon on the host; the library's default is used when unset).
    """

    keytab: str
    realm: str
    service: str | None = None
    replay_cache: str | None = None

    @classmethod
    def from_section(
        cls, section: Mapping[str, str], base: str, default_realm: str | None
    ) -> KerberosConfig:
        unknown = set(section) - _KEYS
        if unknown:
            raise ValueError(f"[kerberos] unknown key(s): {', '.join(sorted(unknown))}")
        values = {k: v.strip() for k, v in section.items() if v.strip()}
        keytab = values.get("keytab")
        if keytab is None:
            raise ValueError("[kerberos] keytab: the service's keytab file is required")
        service = values.get("service")
        if service is not None and not _SERVICE.fullmatch(service):
            raise ValueError(
                f"[kerberos] service: {service!r} is not a host-based name such as"
                " HTTP@sync.firm.example"
            )
        realm = values.get("realm") or (default_realm or "").upper() or None
        if realm is None:
            raise ValueError("[kerberos] realm: set it (or [ldap] upn_suffix) to the AD realm")
        if not _REALM.fullmatch(realm):
            raise ValueError(f"[kerberos] realm: {realm!r} is not a realm name")
        cache = values.get("replay_cache")
        if cache is not None and ":" not in cache:
            cache = "file2:" + os.path.join(base, cache)
        return cls(
            keytab=os.path.join(base, keytab), realm=realm, service=service, replay_cache=cache
        )
