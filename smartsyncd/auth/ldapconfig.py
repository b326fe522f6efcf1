"""The ``[ldap]`` configuration section: parsed, validated and turned into ``LdapConfig``.

Bad values raise ``ValueError`` naming the key, so the daemon refuses to start with a clear
message instead of failing at the first sign-in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from smartsyncd.auth.ldapfilter import parse_filter

AD_USER_FILTER = "(&(objectClass=user)(!(objectClass=computer)))"
AD_GROUP_FILTER = "(objectClass=group)"
GROUP_MODES = ("ad-chain", "memberof", "member")

_KEYS = {
    "urls",
    "ca_file",
    "base_dn",
    "bind_dn",
    "bind_password_file",
    "netbios_domain",
    "upn_suffix",
    "user_filter",
    "user_attribute",
    "upn_attribute",
    "group_filter",
    "group_mode",
    "start_tls",
    "allow_insecure",
    "connect_timeout",
    "timeout",
    "refresh_interval",
}
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


@dataclass
class LdapConfig:
    """Where the directory is and how to talk to it. See docs/active-directory.md."""

    urls: list[str]
    base_dn: str
    ca_file: str | None = None
    bind_dn: str | None = None
    bind_password: str | None = field(default=None, repr=False)
    bind_password_file: str | None = None  # where it was read (start-up checks its mode)
    netbios_domain: str | None = None
    upn_suffix: str | None = None
    user_filter: str = AD_USER_FILTER
    user_attribute: str = "sAMAccountName"
    upn_attribute: str = "userPrincipalName"
    group_filter: str = AD_GROUP_FILTER
    group_mode: str = "ad-chain"
    start_tls: bool = True
    allow_insecure: bool = False
    connect_timeout: float = 5.0
    timeout: float = 10.0
    refresh_interval: float = 15.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending key."""
        if not self.urls:
            raise ValueError("[ldap] urls: at least one ldaps:// or ldap:// URL is required")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise ValueError(f"[ldap] urls: {url!r} is not an ldap://host or ldaps://host URL")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError(f"[ldap] urls: bad port in {url!r}") from None
            if parts.path not in ("", "/"):
                raise ValueError(f"[ldap] urls: {url!r}: put the base DN in base_dn, not the URL")
            if parts.scheme == "ldap" and not self.start_tls and not self.allow_insecure:
                raise ValueError(
                    f"[ldap] start_tls: {url!r} without StartTLS would send passwords in clear "
                    "text; use ldaps://, start_tls = yes, or (test labs only) allow_insecure = yes"
                )
        if not self.base_dn.strip():
            raise ValueError("[ldap] base_dn is required (for example DC=firm,DC=example)")
        if self.bind_dn is not None and not self.bind_password:
            raise ValueError("[ldap] bind_password_file: required (and non-empty) with bind_dn")
        if self.group_mode not in GROUP_MODES:
            raise ValueError(f"[ldap] group_mode: {self.group_mode!r} is not one of {GROUP_MODES}")
        for key in ("user_filter", "group_filter"):
            try:
                parse_filter(getattr(self, key))
            except ValueError as e:
                raise ValueError(f"[ldap] {key}: {e}") from None
        for key in ("connect_timeout", "timeout", "refresh_interval"):
            if not getattr(self, key) > 0:
                raise ValueError(f"[ldap] {key}: must be a positive number")

    @classmethod
    def from_section(cls, section: Mapping[str, str], base_dir: str) -> LdapConfig:
        """Build from an ini section; relative file names are resolved against ``base_dir``.

        Reads ``bind_password_file`` (first line, surrounding whitespace stripped).
        """
        unknown = sorted(set(section) - _KEYS)
        if unknown:
            raise ValueError(f"[ldap] unknown key(s): {', '.join(unknown)}")

        def text(key: str) -> str | None:
            value = section.get(key)
            if value is None:
                return None
            value = value.strip()
            return value or None

        def path(key: str) -> str | None:
            value = text(key)
            if value is None:
                return None
            full = os.path.join(base_dir, os.path.expanduser(value))
            if not os.path.isfile(full):
                raise ValueError(f"[ldap] {key}: no such file {full!r}")
            return full

        def flag(key: str, default: bool) -> bool:
            value = text(key)
            if value is None:
                return default
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ValueError(f"[ldap] {key}: {value!r} is not yes/no")

        def number(key: str, default: float) -> float:
            value = text(key)
            if value is None:
                return default
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"[ldap] {key}: {value!r} is not a number") from None

        urls = (text("urls") or "").replace(",", " ").split()
        base_dn = text("base_dn")
        if base_dn is None:
            raise ValueError("[ldap] base_dn is required (for example DC=firm,DC=example)")
        bind_password = None
        password_file = path("bind_password_file")
        if password_file is not None:
            with open(password_file, encoding="utf-8") as f:
                bind_password = f.readline().strip() or None
            if bind_password is None:
                raise ValueError(f"[ldap] bind_password_file: {password_file!r} is empty")
        bind_dn = text("bind_dn")
        if bind_password is not None and bind_dn is None:
            raise ValueError("[ldap] bind_dn: required when bind_password_file is set")
        group_mode = (text("group_mode") or "ad-chain").lower()
        return cls(
            bind_password_file=password_file,
            urls=urls,
            base_dn=base_dn,
            ca_file=path("ca_file"),
            bind_dn=bind_dn,
            bind_password=bind_password,
            netbios_domain=text("netbios_domain"),
            upn_suffix=text("upn_suffix"),
            user_filter=text("user_filter") or AD_USER_FILTER,
            user_attribute=text("user_attribute") or "sAMAccountName",
            upn_attribute=text("upn_attribute") or "userPrincipalName",
            group_filter=text("group_filter") or AD_GROUP_FILTER,
            group_mode=group_mode,
            start_tls=flag("start_tls", True),
            allow_insecure=flag("allow_insecure", False),
            connect_timeout=number("connect_timeout", 5.0),
            timeout=number("timeout", 10.0),
            refresh_interval=number("refresh_interval", 15.0),
        )
