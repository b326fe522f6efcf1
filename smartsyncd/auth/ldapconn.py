"""One connection to one directory server: TCP, verified TLS (LDAPS or StartTLS), bind, search.

Every step has a timeout on the injected reactor. Any failure to reach or trust the server
raises ``DirectoryUnreachable`` (the caller may try the next server); LDAP result codes raise
ldaptor's ``LDAPException`` subclasses. StartTLS never falls back to clear text, and nothing is
sent after StartTLS/LDAPS until the TLS handshake (certificate and host name check) completed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from smartsyncd.auth.ldapfilter import parse_filter

T = TypeVar("T")

WHO_AM_I_OID = "1.3.6.1.4.1.4203.1.11.3"


class DirectoryUnreachable(Exception):
    """The server could not be reached, trusted or did not answer in time."""


@dataclass
class Entry:
    """A search result: its DN and attributes (lower-cased names -> raw values)."""

    dn: str
    attributes: dict[str, list[bytes]] = field(default_factory=dict)

    def values(self, name: str) -> list[bytes]:
        return self.attributes.get(name.lower(), [])

    def texts(self, name: str) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self.values(name)]

    def text(self, name: str) -> str | None:
        found = self.texts(name)
        return found[0] if found else None

    def integer(self, name: str) -> int | None:
        value = self.text(name)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


@implementer(IHandshakeListener)
class _Client(LDAPClient):
    """ldaptor's client, told when the TLS handshake finished (or the connection died)."""

    def __init__(self) -> None:
        super().__init__()
        self._handshake_done = False
        self._lost: Failure | None = None
        self._waiters: list[Deferred[None]] = []

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._lost = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(reason)

    def wait_handshake(self) -> Deferred[None]:
        if self._handshake_done:
            return defer.succeed(None)
        if self._lost is not None:
            return defer.fail(self._lost)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


def _host_port(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or (636 if scheme == "ldaps" else 389)
    return scheme, host, port


class DirectoryConnection:
    """An open, TLS-verified (unless explicitly insecure) connection to one server."""

    def __init__(self, client: _Client, reactor: Any, timeout: float, url: str) -> None:
        self._client = client
        self._reactor = reactor
        self._timeout = timeout
        self.url = url

    @classmethod
    async def open(
        cls,
        reactor: Any,
        url: str,
        tls_for: Callable[[str], IOpenSSLClientConnectionCreator],
        start_tls: bool,
        connect_timeout: float,
        timeout: float,
    ) -> DirectoryConnection:
        """Connect to ``url``; for ldaps:// or (ldap:// and start_tls) finish a verified TLS
        handshake before returning. Raise ``DirectoryUnreachable`` otherwise."""
        scheme, host, port = _host_port(url)
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        if scheme == "ldaps":
            endpoint = wrapClientTLS(tls_for(host), endpoint)
        connecting = connectProtocol(endpoint, _Client())
        connecting.addTimeout(connect_timeout, reactor)
        try:
            client = await connecting
        except Exception as e:
            raise DirectoryUnreachable(f"{url}: cannot connect: {_describe(e)}") from None
        conn = cls(client, reactor, timeout, url)
        try:
            if scheme == "ldap" and start_tls:
                await conn._start_tls(tls_for(host))
            if scheme == "ldaps" or start_tls:
                await conn._guard(client.wait_handshake(), "TLS handshake")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _start_tls(self, creator: IOpenSSLClientConnectionCreator) -> None:
        request = pureldap.LDAPStartTLSRequest()
        response = await self._guard(self._client.send(request), "StartTLS")
        if response.resultCode != ldaperrors.Success.resultCode:
            raise DirectoryUnreachable(
                f"{self.url}: StartTLS refused by the server (result {response.resultCode}); "
                "not falling back to clear text"
            )
        if response.responseName not in (None, b"", pureldap.LDAPStartTLSResponse.oid):
            raise DirectoryUnreachable(f"{self.url}: unexpected StartTLS response name")
        self._client.transport.startTLS(creator)

    async def _guard(self, d: Deferred[T], what: str) -> T:
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except ldaperrors.LDAPException:
            raise
        except Exception as e:
            self.close()
            raise DirectoryUnreachable(f"{self.url}: {what} failed: {_describe(e)}") from None

    async def bind(self, name: str, password: str) -> None:
        """Simple bind; raise ldaptor's LDAPException (e.g. LDAPInvalidCredentials) if refused."""
        if not self._client.connected:
            raise DirectoryUnreachable(f"{self.url}: connection lost")
        request = pureldap.LDAPBindRequest(dn=name, auth=password)
        response = await self._guard(self._client.send(request), "bind")
        if response.resultCode != ldaperrors.Success.resultCode:
            raise ldaperrors.get(response.resultCode, response.errorMessage)

    async def who_am_i(self) -> str | None:
        """The authorization id of the bound user (RFC 4532 "Who am I?", e.g. ``u:FIRM\\bob``
        or ``dn:CN=...``), or None when the server does not offer the operation."""
        if not self._client.connected:
            raise DirectoryUnreachable(f"{self.url}: connection lost")
        request = pureldap.LDAPExtendedRequest(requestName=WHO_AM_I_OID)
        response = await self._guard(self._client.send(request), "who-am-i")
        if response.resultCode != ldaperrors.Success.resultCode:
            return None
        value = getattr(response, "response", None)
        if not value:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    async def search(
        self,
        base: str,
        filter_text: str,
        attributes: Sequence[str],
        scope: str = "sub",
    ) -> list[Entry]:
        """Search ``base`` (scope "sub" or "base"); a missing base object gives no entries."""
        if not self._client.connected:
            raise DirectoryUnreachable(f"{self.url}: connection lost")
        request = pureldap.LDAPSearchRequest(
            baseObject=base,
            scope=pureldap.LDAP_SCOPE_baseObject
            if scope == "base"
            else pureldap.LDAP_SCOPE_wholeSubtree,
            filter=parse_filter(filter_text),
            attributes=list(attributes),
            timeLimit=max(1, int(self._timeout)),
        )
        entries: list[Entry] = []
        done: Deferred[Any] = Deferred()

        def handler(message: Any) -> bool:
            if isinstance(message, pureldap.LDAPSearchResultEntry):
                entries.append(_entry(message))
                return False
            if isinstance(message, pureldap.LDAPSearchResultDone):
                if not done.called:
                    done.callback(message)
                return True
            return False  # references (AD referrals to other partitions): ignored

        def lost(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        self._client.send_multiResponse(request, handler).addErrback(lost)
        result = await self._guard(done, "search")
        if result.resultCode == ldaperrors.LDAPNoSuchObject.resultCode:
            return []
        if result.resultCode != ldaperrors.Success.resultCode:
            raise ldaperrors.get(result.resultCode, result.errorMessage)
        return entries

    def close(self) -> None:
        transport = self._client.transport
        if transport is not None and self._client.connected:
            transport.abortConnection()


def _entry(message: Any) -> Entry:
    dn = message.objectName
    entry = Entry(dn.decode("utf-8") if isinstance(dn, bytes) else str(dn))
    for name, values in message.attributes:
        key = (name.decode("ascii") if isinstance(name, bytes) else str(name)).lower()
        entry.attributes.setdefault(key, []).extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values
        )
    return entry


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."
