"""Single sign-on with HTTP Negotiate (SPNEGO/Kerberos, RFC 4559) against Active Directory.

``accept_token`` (blocking: it reads the keytab and writes the replay cache; run it off the
reactor) validates one SPNEGO or raw Kerberos token with python-gssapi and the service keytab,
and returns the client principal and the mutual-authentication reply token. Only a complete,
one-leg Kerberos exchange for the configured service is accepted (NTLM needs several legs and
proves nothing about AD groups). Replays are refused by the GSSAPI replay cache, a file that
every daemon on the host shares. ``NegotiateSignIn`` maps ``account@REALM`` to the AD account through the directory
backend with its service account (state and groups exactly as for a password sign-in: the
backend's ``refresh``), and opens the usual session. Every refusal is logged with its reason
and answered with one 401; nothing is written to the session table.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from smartsyncd.auth.identity import (
    Authenticator,
    BackendUnavailable,
    Identity,
    SignInRefused,
)
from smartsyncd.auth.kerberosconfig import KerberosConfig
from smartsyncd.auth.sessions import SessionManager, _loggable
from smartsyncd.core.errors import AuthFailed, Unavailable
from smartsyncd.storage.api import SessionRecord

__all__ = ["AcceptedTicket", "KerberosConfig", "NegotiateSignIn", "TicketRefused", "accept_token"]

# Twisted refuses request headers over 16 KiB in total, so a longer token never arrives anyway.
MAX_TOKEN_CHARS = 16 * 1024
_KRB5_OID = "1.2.840.113554.1.2.2"
_FAILED = "single sign-on failed"


class TicketRefused(Exception):
    """The token is not a valid ticket for this service; ``reason`` is for the log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AcceptedTicket:
    principal: str  # e.g. dora@FIRM.EXAMPLE
    reply: bytes | None  # the AP-REP to send back (mutual authentication)


def decode_token(text: str) -> bytes:
    """The bytes of a base64 Negotiate token (TicketRefused if malformed or too long)."""
    text = text.strip()
    if not text:
        raise TicketRefused("empty Negotiate token")
    if len(text) > MAX_TOKEN_CHARS:
        raise TicketRefused(f"Negotiate token longer than {MAX_TOKEN_CHARS} characters")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TicketRefused("malformed Negotiate token (not base64)") from None


# Refusals whose reason also says what to do, by GSSAPI minor status (the krb5 com_err code,
# unsigned) and by the library's message for it: through SPNEGO, MIT's mechglue replaces the
# krb5 code with a number of its own, different per process (100005 measured).
_EXPIRED_REASON = (
    "ticket expired (KRB5KRB_AP_ERR_TKT_EXPIRED): the user needs a new one (kinit, or log on to"
    " the domain again)"
)
_KNOWN_MINOR = {0x96C73A20: _EXPIRED_REASON}  # KRB5KRB_AP_ERR_TKT_EXPIRED
_KNOWN_MESSAGE = {"ticket expired": _EXPIRED_REASON}  # MIT's and Heimdal's text for that code


def _gss_reason(error: Exception) -> str:
    """The useful part of a GSSAPI error ("Request is a replay", "Clock skew too great"...)."""
    known = _KNOWN_MINOR.get(getattr(error, "min_code", None) or 0)
    if known is not None:
        return known
    text = str(error)
    major, _, minor = text.partition(", Minor (")
    minor = minor.split("): ", 1)[-1].strip()
    if minor and minor != "Unknown error":
        return _KNOWN_MESSAGE.get(minor.casefold(), minor)
    major = major.split("): ", 1)[-1].strip().rstrip(".")
    return f"not a valid token ({major or type(error).__name__})"


def _credentials(config: KerberosConfig) -> Any:
    import gssapi
    from gssapi.exceptions import GSSError

    store: dict[Any, Any] = {"keytab": config.keytab}
    if config.replay_cache is not None:
        store["rcache"] = config.replay_cache
    name = None
    if config.service is not None:
        name = gssapi.Name(config.service, gssapi.NameType.hostbased_service)
    try:
        return gssapi.Credentials(name=name, usage="accept", store=store)
    except GSSError as e:
        # the keytab is missing, unreadable or has no key for the service: the daemon's fault
        raise BackendUnavailable(f"cannot use keytab {config.keytab}: {_gss_reason(e)}") from None


def check_keytab(config: KerberosConfig) -> str:
    """At start-up (blocking): the keytab is readable and holds the service's key, else a
    ``ValueError`` that stops the daemon with the reason. Returns a line for the log."""
    if not os.path.isfile(config.keytab):
        raise ValueError(f"[kerberos] keytab {config.keytab} does not exist")
    try:
        import gssapi  # noqa: F401  (an optional dependency: the 'sso' extra)
    except ImportError:
        raise ValueError(
            "[kerberos] needs python-gssapi: pip install 'smartsyncd[sso]' (it builds against "
            "libkrb5-dev on Debian)"
        ) from None
    try:
        _credentials(config)
    except BackendUnavailable as e:
        raise ValueError(f"[kerberos] {e}") from None
    return (
        f"accepting Kerberos tickets for {config.service or 'any principal of the keytab'}"
        f" from {config.keytab}, users of realm {config.realm}"
    )


def accept_token(config: KerberosConfig, token: bytes) -> AcceptedTicket:
    """Validate ``token`` with the keytab (blocking). Raises ``TicketRefused``."""
    import gssapi
    from gssapi.exceptions import GSSError

    # Fresh credentials for every token: a replay against a reused credential handle went
    # undetected when measured here (MIT krb5 1.20), one opened per token consults the cache.
    context = gssapi.SecurityContext(creds=_credentials(config), usage="accept")
    try:
        reply = context.step(token)
        # python-gssapi raises a failed step's error on the next access (SPNEGO's reject)
        complete, mech = context.complete, context.mech
        principal, target = str(context.initiator_name), str(context.target_name or "")
    except GSSError as e:
        raise TicketRefused(_gss_reason(e)) from None
    except (ValueError, TypeError) as e:  # garbage the library could not even parse
        raise TicketRefused(f"malformed token: {e}") from None
    if not complete:
        raise TicketRefused(
            "the exchange needs more round trips (NTLM?); only Kerberos tickets are accepted"
        )
    if mech is None or mech.dotted_form != _KRB5_OID:
        raise TicketRefused("not a Kerberos ticket (only Kerberos is accepted)")
    if config.service is not None:
        wanted = config.service.replace("@", "/", 1).casefold()
        if target.rpartition("@")[0].casefold() != wanted:
            raise TicketRefused(f"ticket is for {target!r}, not for {config.service}")
    return AcceptedTicket(principal, reply)


def split_principal(principal: str, realm: str) -> str:
    """The account name of a user principal of ``realm`` (TicketRefused for anything else)."""
    primary, at, principal_realm = principal.rpartition("@")
    if not at or not primary:
        raise TicketRefused(f"principal {principal!r} has no realm")
    if principal_realm != realm:
        raise TicketRefused(f"principal {principal!r} is from realm {principal_realm!r}, not {realm}")
    if "/" in primary or "\\" in primary or "@" in primary:
        raise TicketRefused(f"principal {principal!r} is not a user principal")
    if primary.endswith("$"):
        raise TicketRefused(f"principal {principal!r} is a computer account")
    return primary


class NegotiateSignIn:
    """Kerberos tickets -> AD accounts -> sessions."""

    log = Logger()

    def __init__(
        self,
        config: KerberosConfig,
        sessions: SessionManager,
        directory: Authenticator,
        run_blocking: Callable[..., Awaitable[Any]],
    ) -> None:
        self.config = config
        self._sessions = sessions
        self._directory = directory
        self._run_blocking = run_blocking

    def _refuse(self, key: str, address: str, reason: str) -> AuthFailed:
        self._sessions.limiter.record_failure(key, address)
        self.log.info(
            "single sign-on refused from {address}: {reason}",
            address=_loggable(address),
            reason=_loggable(reason),
        )
        return AuthFailed(_FAILED)

    async def sign_in(
        self, token_text: str, address: str
    ) -> tuple[str, SessionRecord, bytes | None]:
        """Validate the base64 token, map its principal, open a session.

        Returns the session token, its record and the reply token for ``WWW-Authenticate``.
        Raises ``AuthFailed`` (401), ``RateLimited`` or ``Unavailable`` (keytab or directory).
        """
        key = "negotiate@" + address  # failures are counted per address: no user name yet
        self._sessions.limiter.check(key, address)
        try:
            accepted = await self._run_blocking(accept_token, self.config, decode_token(token_text))
            account = split_principal(accepted.principal, self.config.realm)
        except TicketRefused as e:
            raise self._refuse(key, address, e.reason) from None
        except BackendUnavailable as e:
            self.log.error("single sign-on unavailable: {error}", error=str(e))
            raise Unavailable("single sign-on is unavailable on this server") from None
        try:
            # the same read of account state and groups as a directory sign-in
            identity = await self._directory.refresh(Identity(user=account, backend="ldap"))
        except SignInRefused as e:
            raise self._refuse(
                key, address, f"principal {accepted.principal}: {e.reason}"
            ) from None
        except BackendUnavailable as e:
            self.log.warn("single sign-on: directory unavailable: {error}", error=str(e))
            raise Unavailable("sign-in backend unavailable: " + self._directory.name) from None
        self._sessions.limiter.record_success(key, address)
        token, record = await self._sessions.open_session(identity, self._directory.name, address)
        self.log.info(
            "single sign-on {user} as {principal} (session {session})",
            user=identity.user, principal=accepted.principal, session=record.id,
        )
        return token, record, accepted.reply
