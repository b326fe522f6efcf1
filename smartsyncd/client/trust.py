"""How the client decides to trust a server's TLS certificate.

Policies, each an ``IPolicyForHTTPS`` for ``twisted.web.client.Agent``:

- :class:`PinnedPolicy` (trust on first use): only a leaf certificate whose SHA-256 fingerprint
  equals the pinned one is accepted, checked in OpenSSL's verify callback on every connection.
- :class:`CAPolicy`: the chain must lead to a certificate in a CA file and the host name (or IP)
  must match the certificate (service-identity), as for any HTTPS client;
  :class:`SystemTrustPolicy` does the same with the operating system's trusted roots.

:func:`fetch_fingerprint` performs a bare TLS handshake (no HTTP, nothing secret sent) to show a
user the fingerprint before it is pinned. TLS 1.2 is the lowest version offered.

A policy may carry a :class:`~smartsyncd.client.tlsresume.ResumptionSlot` (``resumption``):
its connections then offer the session ticket kept from the last run, bound to the policy's
``trust_label`` (the pin, or the CA certificates' digest).
"""

from __future__ import annotations

import hashlib
import re
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from smartsyncd.client import osfs
from smartsyncd.client.errors import NetworkError, UsageError
from smartsyncd.client.proxy import proxy_for, tunnels_through
from smartsyncd.client.tlsresume import ResumptionSlot, was_resumed
from smartsyncd.runtime.twistedcompat import client_creator_context

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from smartsyncd.client.reactor import ClientReactor

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
PROBE_TIMEOUT = 15.0


def normalize_fingerprint(s: str) -> str:
    """``"ab:cd..."``, ``"ABCD..."`` or ``"SHA256:..."`` -> ``"AB:CD:..."`` (SHA-256, 32 bytes)."""
    text = s.strip()
    if text.lower().startswith("sha256:") or text.lower().startswith("sha256="):
        text = text[7:]
    hexits = text.replace(":", "").replace(" ", "")
    if not _HEX64.fullmatch(hexits):
        raise UsageError(
            f"{s!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)"
        )
    hexits = hexits.upper()
    return ":".join(hexits[i : i + 2] for i in range(0, 64, 2))


def cert_fingerprint(cert: crypto.X509 | bytes) -> str:
    """SHA-256 fingerprint of a certificate (pyOpenSSL X509 or DER bytes), colon form."""
    x509 = cert if isinstance(cert, crypto.X509) else crypto.load_certificate(
        crypto.FILETYPE_ASN1, cert
    )
    return x509.digest("sha256").decode("ascii").upper()


def _hostname_text(hostname: bytes | str) -> str:
    return hostname.decode("ascii") if isinstance(hostname, bytes) else hostname


# A session remembers the session-id context of the connection that made it, and OpenSSL
# refuses to resume it on a connection with another one. Twisted gives each context a random
# one, so every client context gets this fixed one before its first connection.
CLIENT_SESSION_CONTEXT = b"smartsync-client"


def _base_context() -> SSL.Context:
    # CertificateOptions gives Twisted's vetted cipher list and protocol options.
    context = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2).getContext()
    context.set_session_id(CLIENT_SESSION_CONTEXT)
    return context


@implementer(IOpenSSLClientConnectionCreator)
class _LeafCheckingCreator:
    """Makes client connections whose verify callback judges only the leaf certificate."""

    def __init__(
        self, context: SSL.Context, hostname: str, judge: Callable[[str], bool],
        resumption: ResumptionSlot | None = None,
    ) -> None:
        self._context = context
        self._hostname = hostname
        self._judge = judge  # (fingerprint) -> bool
        self._resumption = resumption

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not (isIPAddress(self._hostname) or isIPv6Address(self._hostname)):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        judge = self._judge

        def verify(conn: SSL.Connection, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
            if depth != 0:
                # The chain does not matter for a pin: the leaf is compared byte for byte.
                return True
            return bool(judge(cert_fingerprint(cert)))

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        if self._resumption is not None:
            self._resumption.prepare(connection, _resumed_leaf_check(judge))
        return connection


def _resumed_leaf_check(judge: Callable[[str], bool]) -> Callable[[SSL.Connection, int, int], None]:
    """An info callback: a resumed handshake runs no verify callback, so the leaf the resumed
    session carries is judged once the handshake is done, and the connection fails if refused."""

    def check(connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE or not was_resumed(connection):
            return
        cert = connection.get_peer_certificate()
        if cert is None or not judge(cert_fingerprint(cert)):
            transport: Any = connection.get_app_data()
            transport.failVerification(Failure(SSL.Error("resumed session: certificate refused")))

    return check


@implementer(IOpenSSLClientConnectionCreator)
class _ResumingCreator:
    """Another creator's connections, offered the kept session ticket."""

    def __init__(self, inner: IOpenSSLClientConnectionCreator, resumption: ResumptionSlot) -> None:
        self._inner = inner
        self._resumption = resumption

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        self._resumption.prepare(connection)
        return connection


@implementer(IPolicyForHTTPS)
class PinnedPolicy:
    """Accept only the server certificate with this SHA-256 fingerprint.

    ``presented`` records the last fingerprint refused, so an error can show what the server
    sent instead.
    """

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = normalize_fingerprint(fingerprint)
        self.presented: str | None = None
        self.resumption: ResumptionSlot | None = None
        self._context = _base_context()

    @property
    def trust_label(self) -> str:
        """How this policy trusts: what a kept session ticket is bound to."""
        return f"pin:{self.fingerprint}"

    def _judge(self, seen: str) -> bool:
        if seen == self.fingerprint:
            return True
        self.presented = seen
        return False

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _LeafCheckingCreator(
            self._context, _hostname_text(hostname), self._judge, self.resumption
        )

    def failure_message(self, url: str) -> str:
        seen = f" (it now presents {self.presented})" if self.presented else ""
        return (
            f"certificate changed: {url} does not present the pinned certificate "
            f"{self.fingerprint}{seen}. If the server's certificate was replaced on purpose, "
            f"confirm the new fingerprint with its administrator and run "
            f"'smartsync login {url} --trust-fingerprint NEW'"
        )


@implementer(IPolicyForHTTPS)
class CAPolicy:
    """Verify the server's chain against the certificates in ``ca_file`` and its host name."""

    def __init__(self, ca_file: str | Path) -> None:
        self.ca_file = str(ca_file)
        try:
            pem = osfs.read_bytes(Path(ca_file))
        except OSError as exc:
            raise UsageError(f"cannot read CA file {ca_file}: {exc.strerror}") from exc
        blocks = re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL
        )
        if not blocks:
            raise UsageError(f"CA file {ca_file} holds no PEM certificate")
        try:
            certs = [Certificate.loadPEM(block) for block in blocks]
        except (crypto.Error, ValueError) as exc:
            raise UsageError(f"CA file {ca_file} holds a damaged certificate") from exc
        self._root = trustRootFromCertificates(certs)
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}
        self._resumable: set[str] = set()  # hosts whose context takes a kept session
        self.resumption: ResumptionSlot | None = None
        self.trust_label = "ca:" + hashlib.sha256(b"\n".join(blocks)).hexdigest()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        host = _hostname_text(hostname)
        creator = self._creators.get(host)
        if creator is None:
            creator = optionsForClientTLS(
                host,
                trustRoot=self._root,
                extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
            )
            context = client_creator_context(creator)
            if context is not None:
                context.set_session_id(CLIENT_SESSION_CONTEXT)
                self._resumable.add(host)
            self._creators[host] = creator
        if self.resumption is not None and host in self._resumable:
            return _ResumingCreator(creator, self.resumption)
        return creator

    def failure_message(self, url: str) -> str:
        return (
            f"certificate not trusted: {url} presents a certificate that does not chain to "
            f"{self.ca_file} or does not name this host"
        )


SYSTEM_TRUST = "system"  # as a CA file name (``--ca-file system`` / ``--system-trust``)
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"


class SystemTrustPolicy(CAPolicy):
    """Verify against the operating system's trusted roots and the host name: a certificate from
    the firm's own CA (deployed to laptops by policy) or a public CA renews without any laptop
    noticing. Windows: the machine's and user's ROOT and CA stores; macOS: the system keychains;
    elsewhere OpenSSL's default paths (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured).

    Twisted speaks TLS through pyOpenSSL, which truststore cannot serve (it verifies through
    Python's ``ssl`` module), so the roots are loaded into OpenSSL instead: revocation and
    per-user trust overrides of the system are not consulted."""

    def __init__(self, roots: Callable[[], list[Certificate]] | None = None) -> None:
        self.ca_file = SYSTEM_TRUST
        if roots is None and sys.platform not in ("win32", "darwin"):
            self._root = platformTrust()
        else:
            certs = (roots or system_roots)()
            if not certs:
                raise UsageError("no trusted root certificates were found on this system")
            self._root = trustRootFromCertificates(certs)
        self._creators = {}
        self._resumable = set()
        self.resumption = None
        self.trust_label = SYSTEM_TRUST

    def failure_message(self, url: str) -> str:
        return (
            f"certificate not trusted: {url} presents a certificate that no root trusted by "
            f"this system vouches for, or that does not name this host"
        )


def system_roots() -> list[Certificate]:
    """The operating system's trusted root certificates (Windows and macOS)."""
    if sys.platform == "win32":
        found = []
        for store in ("ROOT", "CA"):
            for der, encoding, usage in ssl.enum_certificates(store):
                trusted = usage is True or (isinstance(usage, set) and _SERVER_AUTH in usage)
                if encoding == "x509_asn" and trusted:
                    found.append(Certificate.load(der, crypto.FILETYPE_ASN1))
        return found
    if sys.platform == "darwin":
        keychains = ["/System/Library/Keychains/SystemRootCertificates.keychain",
                     "/Library/Keychains/System.keychain"]
        pem = subprocess.run(["/usr/bin/security", "find-certificate", "-a", "-p", *keychains],
                             capture_output=True, check=False).stdout
        return [Certificate.loadPEM(block) for block in re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)]
    return []


def ca_policy(ca_file: str | Path) -> CAPolicy:
    """``CAPolicy`` for a CA file, or the system's roots for ``system``."""
    return SystemTrustPolicy() if str(ca_file) == SYSTEM_TRUST else CAPolicy(ca_file)


TrustPolicy = PinnedPolicy | CAPolicy


@implementer(IHandshakeListener)
class _Probe(Protocol):
    def __init__(self) -> None:
        self.result: defer.Deferred[str] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        cert = transport.getPeerCertificate()
        if not self.result.called:
            if cert is None:
                self.result.errback(NetworkError("server sent no certificate"))
            else:
                self.result.callback(cert_fingerprint(cert))
        transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if not self.result.called:
            self.result.errback(reason)


def split_url(url: str) -> tuple[str, int]:
    """Host and port of an ``https://`` URL (port 443 by default)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise UsageError(f"server URL must look like https://HOST[:PORT], not {url!r}")
    try:
        return parts.hostname, parts.port or 443
    except ValueError as exc:
        raise UsageError(f"bad port in server URL {url!r}") from exc


async def fetch_fingerprint(
    reactor: ClientReactor, url: str, timeout: float = PROBE_TIMEOUT, *, proxy: str | None = None
) -> str:
    """Connect with TLS, accept any certificate, return its SHA-256 fingerprint; send nothing.
    ``proxy`` as for ``ServerAPI`` (None: the system's setting)."""
    host, port = split_url(url)
    creator = _LeafCheckingCreator(_base_context(), host, lambda fp: True)
    tunnel = proxy_for(url, proxy)
    tcp: IStreamClientEndpoint = (
        HostnameEndpoint(reactor, host, port, timeout=timeout) if tunnel is None
        else tunnels_through(reactor, tunnel)(host, port)
    )
    endpoint = wrapClientTLS(creator, tcp)
    probe = _Probe()
    connecting = connectProtocol(endpoint, probe)
    timed_out = False

    def on_timeout() -> None:
        nonlocal timed_out
        timed_out = True
        if not connecting.called:
            connecting.cancel()
        elif probe.transport is not None:
            transport: Any = probe.transport
            transport.abortConnection()

    timer = reactor.callLater(timeout, on_timeout)
    try:
        await connecting
        return await probe.result
    except NetworkError:
        raise
    except Exception as exc:
        why = "timed out" if timed_out else _reason(exc)
        raise NetworkError(f"cannot reach {url}: {why}") from exc
    finally:
        if timer.active():
            timer.cancel()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
