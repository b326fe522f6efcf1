"""Directory sign-in (Active Directory or generic LDAP) through ldaptor.

Flow with a service account: connect (verified TLS) -> bind as ``bind_dn`` -> search the account
by an escaped filter -> check its state (disabled, locked, expired, must change password) ->
bind as the found DN with the user's password -> bind back as the service account -> read
groups (AD in-chain rule, or walking memberOf / member). Without a service account (AD only) the
user's UPN or down-level name is bound first and the search runs as the user; the identity is
the account the directory bound ("Who am I?", or the bind name resolved as AD does), and a typed
name that binds a different account than the one it names is refused.

Servers in ``urls`` are tried in order, but only until the user's password has been sent once:
a sign-in never fans one password out over several domain controllers (lockout counts).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ldaptor.protocols.ldap import ldaperrors
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger

from smartsyncd.auth.identity import BackendUnavailable, Identity, SignInRefused, UnknownUser
from smartsyncd.auth.ldapconfig import LdapConfig
from smartsyncd.auth.ldapconn import DirectoryConnection, DirectoryUnreachable, Entry
from smartsyncd.auth.ldapfilter import (
    BadUserName,
    UserName,
    all_of,
    any_of,
    equals,
    in_chain,
    split_user_name,
    user_search_filter,
)
from smartsyncd.auth.ldapids import (
    account_principal,
    group_id,
    group_name,
    guid_to_str,
    sid_to_str,
)
from smartsyncd.core.principals import DIRECTORY_SID, is_sid

__all__ = ["LdapAuthenticator", "LdapConfig", "GroupNotFound", "sid_to_str", "guid_to_str"]

T = TypeVar("T")

MAX_GROUP_DEPTH = 16
_UF_ACCOUNTDISABLE = 0x2
_UF_LOCKOUT = 0x10
_UF_DONT_EXPIRE_PASSWD = 0x10000
_UF_PASSWORD_EXPIRED = 0x800000
_NEVER = (0, 0x7FFFFFFFFFFFFFFF)
_FILETIME_EPOCH_OFFSET = 11644473600  # seconds from 1601-01-01 to 1970-01-01
_GROUP_ATTRS = ("objectSid", "objectGUID", "entryUUID", "cn", "sAMAccountName", "memberOf")
# AD's bind diagnostic "data XXX" codes, for the log.
_AD_BIND_REASONS = {
    "525": "no such user",
    "52e": "wrong password",
    "530": "not permitted to sign in at this time",
    "531": "not permitted to sign in at this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be changed",
    "775": "account locked",
}


class GroupNotFound(LookupError):
    """``lookup_group`` found no group, or more than one, for the given name."""


def _looks_like_dn(text: str) -> bool:
    return "=" in text and re.match(r"^\s*[A-Za-z][\w-]*\s*=", text) is not None


class LdapAuthenticator:
    """Sign-in backend for Active Directory / LDAP (implements ``auth.identity.Authenticator``)."""

    name = "ldap"
    log = Logger()

    def __init__(self, config: LdapConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        self._trust = None
        if config.ca_file is not None:
            with open(config.ca_file, "rb") as f:
                pem = f.read()
            blocks = re.findall(
                rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL
            )
            if not blocks:
                raise ValueError(f"[ldap] ca_file: no certificate in {config.ca_file!r}")
            self._trust = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
        insecure = [
            url for url in config.urls if url.startswith("ldap://") and not config.start_tls
        ]
        if insecure:
            self.log.warn(
                "INSECURE: directory passwords will cross the network in clear text to {urls} "
                "(allow_insecure = yes, start_tls = no). Use ldaps:// or StartTLS in production.",
                urls=" ".join(insecure),
            )
        self._attrs = [
            config.user_attribute,
            config.upn_attribute,
            "userAccountControl",
            "msDS-User-Account-Control-Computed",
            "lockoutTime",
            "accountExpires",
            "pwdLastSet",
            "pwdAccountLockedTime",
            "memberOf",
            "objectSid",
            "objectGUID",
            "entryUUID",
        ]

    # -- public API -------------------------------------------------------------------------

    async def authenticate(self, user: str, password: str) -> Identity:
        """Verify ``user``/``password`` against the directory and read the groups."""
        if not password:
            # An empty-password simple bind is an unauthenticated bind that "succeeds".
            self._refuse(user, "empty password")
        if "\x00" in password:
            self._refuse(user, "NUL in password")
        name = self._split(user)
        if self._config.bind_dn is None:
            return await self._authenticate_as_user(name, password)
        state = {"password_sent": False}

        async def attempt(conn: DirectoryConnection) -> Identity:
            await self._service_bind(conn)
            entry = await self._find_account(conn, name)
            self._check_state(name.typed, entry)
            state["password_sent"] = True
            await self._user_bind(conn, name.typed, entry.dn, password)
            await self._service_bind(conn)
            return await self._identity(conn, entry)

        return await self._with_server(attempt, lambda: not state["password_sent"])

    async def throttle_key(self, user: str) -> str | None:
        """The account ``user`` names, for counting failed sign-ins: its principal id
        (``ad:<objectSid>``) when the service account finds it, else (no service account) the
        account name the bind would use. None when the directory does not know the name."""
        try:
            name = split_user_name(user, self._config.netbios_domain)
        except BadUserName:
            return None
        cfg = self._config
        if cfg.bind_dn is None:
            account = name.account
            if name.form == "upn":
                local, _, suffix = account.rpartition("@")
                if cfg.upn_suffix and suffix.casefold() == cfg.upn_suffix.casefold():
                    account = local
            return "ldap-name:" + account.casefold()

        async def attempt(conn: DirectoryConnection) -> str:
            await self._service_bind(conn)
            return account_principal(await self._find_account(conn, name))

        try:
            return await self._with_server(attempt)
        except UnknownUser:
            return None

    async def refresh(self, identity: Identity) -> Identity:
        """Re-read the account state and groups with the service account; the account is
        found by its SID when the session has one (a renamed account stays signed in)."""
        if self._config.bind_dn is None:
            raise SignInRefused("no service account (bind_dn) to re-read groups; sign in again")
        name = UserName("plain", identity.user, identity.user)
        sid = identity.principal.removeprefix(DIRECTORY_SID)

        async def attempt(conn: DirectoryConnection) -> Identity:
            await self._service_bind(conn)
            entry = None
            if identity.principal.startswith(DIRECTORY_SID) and is_sid(sid):
                entry = await self._find_by_sid(conn, sid, missing_ok=True)
            if entry is None:  # no SID, or a server that cannot match its text form
                entry = await self._find_account(conn, name)
                if identity.principal.startswith(DIRECTORY_SID) and (
                    account_principal(entry) != identity.principal
                ):
                    raise UnknownUser("the account of that name is another one now")
            self._check_state(identity.user, entry)
            return await self._identity(conn, entry)

        return await self._with_server(attempt)

    async def lookup_user(self, name: str) -> str:
        """The canonical (lower-cased account) name for any accepted user form."""
        return (await self.lookup_principal(name))[1]

    async def lookup_principal(self, name: str) -> tuple[str, str]:
        """(principal id, canonical name) of the account any accepted user form, or a SID
        (``S-1-5-21-...``), names."""
        parsed = None if is_sid(name) else self._split(name)

        async def attempt(conn: DirectoryConnection) -> tuple[str, str]:
            await self._service_bind(conn)
            if parsed is None:
                entry = await self._find_by_sid(conn, name)
                assert entry is not None
            else:
                entry = await self._find_account(conn, parsed)
            return account_principal(entry), self._account_name(entry)

        return await self._with_server(attempt)

    async def _find_by_sid(
        self, conn: DirectoryConnection, sid: str, missing_ok: bool = False
    ) -> Entry | None:
        """The account with objectSid ``sid`` (AD and Samba match the text form)."""
        found = await self._search_accounts(
            conn, all_of(self._config.user_filter, equals("objectSid", sid))
        )
        if len(found) != 1:
            if missing_ok:
                return None
            raise UnknownUser(f"no account with SID {sid} in the directory")
        return found[0]

    async def lookup_group(self, name_or_dn: str) -> tuple[str, str]:
        """Resolve a group name (cn or sAMAccountName) or DN to (stable id, display name)."""
        wanted = name_or_dn.strip()
        if not wanted:
            raise GroupNotFound("empty group name")
        cfg = self._config

        async def attempt(conn: DirectoryConnection) -> tuple[str, str]:
            await self._service_bind(conn)
            if _looks_like_dn(wanted):
                found = await conn.search(wanted, cfg.group_filter, _GROUP_ATTRS, scope="base")
            else:
                found = await conn.search(
                    cfg.base_dn,
                    all_of(
                        cfg.group_filter,
                        any_of(equals("cn", wanted), equals("sAMAccountName", wanted)),
                    ),
                    _GROUP_ATTRS,
                )
            if not found:
                raise GroupNotFound(f"no group {wanted!r} in the directory")
            if len(found) > 1:
                dns = "; ".join(e.dn for e in found)
                raise GroupNotFound(f"{wanted!r} names several groups ({dns}); give the DN")
            return group_id(found[0]), group_name(found[0])

        return await self._with_server(attempt)

    # -- servers ----------------------------------------------------------------------------

    async def _with_server(
        self,
        attempt: Callable[[DirectoryConnection], Awaitable[T]],
        may_fail_over: Callable[[], bool] = lambda: True,
    ) -> T:
        """Run ``attempt`` on the first server that answers; the next server is tried only on
        an unreachable/untrusted server and only while ``may_fail_over()`` holds."""
        cfg = self._config
        problems: list[str] = []
        for url in cfg.urls:
            try:
                conn = await DirectoryConnection.open(
                    self._reactor,
                    url,
                    self._tls_for,
                    cfg.start_tls,
                    cfg.connect_timeout,
                    cfg.timeout,
                )
            except DirectoryUnreachable as e:
                self.log.warn("directory server unavailable: {problem}", problem=str(e))
                problems.append(str(e))
                continue
            try:
                return await attempt(conn)
            except DirectoryUnreachable as e:
                self.log.warn("directory server failed: {problem}", problem=str(e))
                problems.append(str(e))
                if not may_fail_over():
                    break
            finally:
                conn.close()
        raise BackendUnavailable("no directory server usable: " + " | ".join(problems))

    def _tls_for(self, host: str) -> Any:
        if self._trust is None:
            return optionsForClientTLS(host)
        return optionsForClientTLS(host, trustRoot=self._trust)

    # -- steps ------------------------------------------------------------------------------

    def _refuse(self, user: str, reason: str) -> None:
        self.log.info("directory sign-in refused for {user!r}: {reason}", user=user, reason=reason)
        raise SignInRefused(reason)

    def _split(self, user: str) -> UserName:
        try:
            return split_user_name(user, self._config.netbios_domain)
        except BadUserName as e:
            self.log.info(
                "directory sign-in: {user!r} is not ours: {reason}", user=user, reason=str(e)
            )
            raise UnknownUser(str(e)) from None

    async def _service_bind(self, conn: DirectoryConnection) -> None:
        cfg = self._config
        if cfg.bind_dn is None:
            return
        try:
            await conn.bind(cfg.bind_dn, cfg.bind_password or "")
        except ldaperrors.LDAPException as e:
            # A configuration problem: every server would refuse it the same way, and trying
            # them all would only add to the service account's bad-password count.
            self.log.error(
                "the directory refused the service account {bind_dn}: {error}",
                bind_dn=cfg.bind_dn,
                error=_ldap_message(e),
            )
            raise BackendUnavailable(f"service account bind refused by {conn.url}") from None

    async def _search_accounts(
        self, conn: DirectoryConnection, text: str, base: str | None = None
    ) -> list[Entry]:
        """Accounts matching ``text`` under ``base_dn`` (or exactly the entry ``base``)."""
        try:
            if base is not None:
                return await conn.search(base, text, self._attrs, scope="base")
            return await conn.search(self._config.base_dn, text, self._attrs)
        except ldaperrors.LDAPException as e:
            raise DirectoryUnreachable(
                f"{conn.url}: account search failed: {_ldap_message(e)}"
            ) from None

    async def _find_account(self, conn: DirectoryConnection, name: UserName) -> Entry:
        cfg = self._config
        text = user_search_filter(
            name, cfg.user_filter, cfg.user_attribute, cfg.upn_attribute, cfg.upn_suffix
        )
        found = await self._search_accounts(conn, text)
        if not found:
            self.log.info("directory sign-in: no account {user!r}", user=name.typed)
            raise UnknownUser("no such account in the directory")
        if len(found) > 1:
            self._refuse(name.typed, f"{len(found)} accounts match")
        return found[0]

    def _check_state(self, user: str, entry: Entry) -> None:
        now = self._reactor.seconds()
        uac = entry.integer("userAccountControl") or 0
        computed = entry.integer("msDS-User-Account-Control-Computed")
        if uac & _UF_ACCOUNTDISABLE:
            self._refuse(user, "account disabled")
        if computed is not None:
            # AD computes this with the lockout duration applied; lockoutTime alone stays set
            # until the next successful sign-in.
            if computed & _UF_LOCKOUT:
                self._refuse(user, "account locked")
            if computed & _UF_PASSWORD_EXPIRED:
                self._refuse(user, "password expired")
        elif (entry.integer("lockoutTime") or 0) > 0:
            self._refuse(user, "account locked")
        if entry.values("pwdAccountLockedTime"):
            self._refuse(user, "account locked")
        expires = entry.integer("accountExpires")
        if expires is not None and expires not in _NEVER:
            if expires / 1e7 - _FILETIME_EPOCH_OFFSET <= now:
                self._refuse(user, "account expired")
        if entry.integer("pwdLastSet") == 0 and not uac & _UF_DONT_EXPIRE_PASSWD:
            self._refuse(user, "password must be changed first")

    async def _user_bind(
        self, conn: DirectoryConnection, user: str, dn: str, password: str
    ) -> None:
        try:
            await conn.bind(dn, password)
        except ldaperrors.LDAPInvalidCredentials as e:
            self._refuse(user, "bind refused: " + _ad_reason(e))
        except ldaperrors.LDAPException as e:
            self._refuse(user, "bind refused: " + _ldap_message(e))

    async def _authenticate_as_user(self, name: UserName, password: str) -> Identity:
        """AD without a service account: bind as the UPN / down-level name, search as the user."""
        cfg = self._config
        if name.form == "plain":
            if cfg.upn_suffix:
                bind_name = f"{name.account}@{cfg.upn_suffix}"
            elif cfg.netbios_domain:
                bind_name = f"{cfg.netbios_domain}\\{name.account}"
            else:
                raise BackendUnavailable("no bind_dn, upn_suffix or netbios_domain configured")
        else:
            bind_name = name.typed
        state = {"password_sent": False}

        async def attempt(conn: DirectoryConnection) -> Identity:
            state["password_sent"] = True
            try:
                await conn.bind(bind_name, password)
            except ldaperrors.LDAPInvalidCredentials as e:
                if _ad_code(e) == "525":
                    raise UnknownUser("no such account in the directory") from None
                self._refuse(name.typed, "bind refused: " + _ad_reason(e))
            except ldaperrors.LDAPException as e:
                self._refuse(name.typed, "bind refused: " + _ldap_message(e))
            entry = await self._bound_account(conn, name, bind_name)
            self._check_state(name.typed, entry)
            return await self._identity(conn, entry)

        return await self._with_server(attempt, lambda: not state["password_sent"])

    async def _bound_account(
        self, conn: DirectoryConnection, name: UserName, bind_name: str
    ) -> Entry:
        """The account the directory actually bound, which must be one the typed name names.

        ``bob@upn_suffix`` may be the explicit UPN of another person than the account
        ``sAMAccountName=bob`` (e-mail style UPNs): the identity is taken from the bound account
        and a name that binds someone other than the account it names is refused.
        """
        cfg = self._config
        bound: list[Entry] = []
        authz = await conn.who_am_i()
        if authz is not None and authz.startswith("dn:") and len(authz) > 3:
            bound = await self._search_accounts(conn, cfg.user_filter, base=authz[3:])
        elif authz is not None and authz.startswith("u:") and "\\" in authz:
            domain, _, account = authz[2:].partition("\\")
            if cfg.netbios_domain and domain.casefold() == cfg.netbios_domain.casefold():
                bound = await self._search_accounts(
                    conn, all_of(cfg.user_filter, equals(cfg.user_attribute, account))
                )
            else:
                self._refuse(name.typed, f"bound as {authz!r}, not an account of this domain")
        else:
            # No "Who am I?" (Samba): resolve the bind name the way AD does, the explicit UPN
            # first, then the down-level or implicit (sAMAccountName@domain) name.
            if "\\" in bind_name:
                account = bind_name.partition("\\")[2]
                bound = await self._search_accounts(
                    conn, all_of(cfg.user_filter, equals(cfg.user_attribute, account))
                )
            else:
                bound = await self._search_accounts(
                    conn, all_of(cfg.user_filter, equals(cfg.upn_attribute, bind_name))
                )
                if not bound:
                    account = bind_name.rpartition("@")[0]
                    bound = await self._search_accounts(
                        conn, all_of(cfg.user_filter, equals(cfg.user_attribute, account))
                    )
        if len(bound) != 1:
            self._refuse(name.typed, f"cannot tell which account {bind_name!r} bound")
        text = user_search_filter(
            name, cfg.user_filter, cfg.user_attribute, cfg.upn_attribute, cfg.upn_suffix
        )
        named = {e.dn.casefold() for e in await self._search_accounts(conn, text)}
        if bound[0].dn.casefold() not in named:
            self._refuse(
                name.typed,
                f"{bind_name!r} bound {bound[0].dn!r}, which is not the account the name names",
            )
        return bound[0]

    # -- identity and groups ----------------------------------------------------------------

    def _account_name(self, entry: Entry) -> str:
        account = entry.text(self._config.user_attribute)
        if not account:
            raise DirectoryUnreachable(f"account {entry.dn} has no {self._config.user_attribute}")
        return account.lower()

    async def _identity(self, conn: DirectoryConnection, entry: Entry) -> Identity:
        try:
            groups = await self._groups(conn, entry)
        except ldaperrors.LDAPException as e:
            raise DirectoryUnreachable(
                f"{conn.url}: group search failed: {_ldap_message(e)}"
            ) from None
        names = {group_id(g): group_name(g) for g in groups}
        identity = Identity(
            user=self._account_name(entry),
            groups=frozenset(names),
            backend=self.name,
            group_names=names,
            principal=account_principal(entry),
        )
        self.log.info(
            "directory sign-in for {user} with {count} groups", user=identity.user, count=len(names)
        )
        return identity

    async def _groups(self, conn: DirectoryConnection, user: Entry) -> list[Entry]:
        cfg = self._config
        if cfg.group_mode == "ad-chain":
            return await conn.search(
                cfg.base_dn, all_of(cfg.group_filter, in_chain("member", user.dn)), _GROUP_ATTRS
            )
        if cfg.group_mode == "memberof":
            return await self._walk_member_of(conn, user)
        return await self._walk_member(conn, user)

    async def _walk_member_of(self, conn: DirectoryConnection, user: Entry) -> list[Entry]:
        """Follow memberOf upwards, breadth first; cycles stop at seen DNs, depth is capped."""
        seen: set[str] = set()
        found: list[Entry] = []
        frontier = user.texts("memberOf")
        for _level in range(MAX_GROUP_DEPTH):
            next_frontier: list[str] = []
            for dn in frontier:
                key = dn.lower()
                if key in seen:
                    continue
                seen.add(key)
                for group in await conn.search(dn, self._config.group_filter, _GROUP_ATTRS, "base"):
                    found.append(group)
                    next_frontier.extend(group.texts("memberOf"))
            frontier = next_frontier
            if not frontier:
                return found
        self.log.warn(
            "group nesting deeper than {depth} levels under {dn}; stopped there",
            depth=MAX_GROUP_DEPTH,
            dn=user.dn,
        )
        return found

    async def _walk_member(self, conn: DirectoryConnection, user: Entry) -> list[Entry]:
        """Search groups listing the DN as member/uniqueMember, level by level."""
        cfg = self._config
        seen: set[str] = {user.dn.lower()}
        found: list[Entry] = []
        frontier = [user.dn]
        for _level in range(MAX_GROUP_DEPTH):
            next_frontier: list[str] = []
            for dn in frontier:
                text = all_of(
                    cfg.group_filter, any_of(equals("member", dn), equals("uniqueMember", dn))
                )
                for group in await conn.search(cfg.base_dn, text, _GROUP_ATTRS):
                    if group.dn.lower() not in seen:
                        seen.add(group.dn.lower())
                        found.append(group)
                        next_frontier.append(group.dn)
            frontier = next_frontier
            if not frontier:
                return found
        self.log.warn(
            "group nesting deeper than {depth} levels under {dn}; stopped there",
            depth=MAX_GROUP_DEPTH,
            dn=user.dn,
        )
        return found


def _ldap_message(e: ldaperrors.LDAPException) -> str:
    message = getattr(e, "message", None)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"{type(e).__name__}: {message or ''}".strip()


def _ad_code(e: ldaperrors.LDAPException) -> str | None:
    match = re.search(r"data ([0-9a-fA-F]{3,4})", _ldap_message(e))
    return match.group(1).lower() if match else None


def _ad_reason(e: ldaperrors.LDAPException) -> str:
    code = _ad_code(e)
    return _AD_BIND_REASONS.get(code or "", _ldap_message(e))
