"""The server's TLS material: the self-signed certificate made on first start, fingerprints,
and the TLS endpoint string the daemon listens on.

A self-signed certificate is an ECDSA P-256 key with subject alternative names for
``localhost``, this host's name, ``127.0.0.1`` and ``::1``. It is valid for ten years: clients
pin its SHA-256 fingerprint on first use, so a short validity would only force everyone to
re-pin. It is a leaf (CA:FALSE), so even a client that installs it as a CA file trusts it for
this server only: it cannot vouch for other certificates. The key is written 0600 from creation (never widened later) and both files are written
crash-safely (temp file, fsync, rename, fsync the folder), key first: a certificate on disk
always has its key.

The minimum protocol is TLS 1.2 (Twisted's ``CertificateOptions`` default); TLS 1.2 offers only
forward-secret AEAD suites (``AEAD_CIPHERS``); ``sslmethod=`` in an endpoint string is refused
by ``config.check_listen``.

The listeners keep TLS sessions (issue 15): a client that kept a session ticket from its last
run resumes with a short handshake (no certificate sent). The tickets are OpenSSL's stateful
TLS 1.3 ones: a short identifier of a session held in the daemon's memory (OpenSSL's session
cache, at most 20,480 sessions), for ``TICKET_LIFETIME``. There is no ticket key to steal or
rotate. A restart or a certificate reload (a new context) forgets them, as does a daemon other
than the one behind the balancer that issued them: a full handshake.

A resumption may skip the key exchange (``psk_ke``: ``SSL_OP_ALLOW_NO_DHE_KEX`` and
``SSL_OP_PREFER_NO_DHE_KEX``) when the client offers that mode: this client does, because its
tickets come from a post-quantum handshake (``client/tlsresume.py`` has the reasoning), and it
saves the 1.1 KB hybrid key share. A client that offers only ``psk_dhe_ke`` (browsers) resumes
with a key exchange as before, and the groups are OpenSSL's defaults, the hybrid
X25519MLKEM768 first. Tickets are single use: OpenSSL drops a stateful session from its cache
when it is resumed only under its early-data anti-replay rule, so the context states 1 byte of
early data (8 bytes more per ticket); the daemon never reads early data, and OpenSSL rejects
it then (a client sends it again after the handshake). So a resumed ticket's secret leaves the
daemon's memory, and only the newest ticket of each client's chain is held.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

from smartsyncd.runtime.twistedcompat import endpoint_tls_context
from smartsyncd.storage.durable import ensure_dir, write_durably

VALIDITY = timedelta(days=3650)


@dataclass(frozen=True)
class CertificateInfo:
    cert_path: str
    key_path: str
    fingerprint: str  # SHA-256, upper-case hex pairs joined by ":"
    created: bool  # made now (first start) rather than loaded


def default_names(hostname: str | None = None) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a self-signed certificate covers."""
    host = (hostname if hostname is not None else socket.gethostname()).strip().lower()
    dns = ["localhost"]
    if host and host != "localhost":
        dns.append(host)
    return dns, ["127.0.0.1", "::1"]


def generate_self_signed(
    dns_names: Sequence[str], ip_addresses: Sequence[str], now: datetime
) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a new self-signed server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = dns_names[-1] if dns_names else "localhost"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartsyncd"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def fingerprint_sha256(cert_pem: bytes) -> str:
    """``AB:CD:...`` SHA-256 fingerprint of the first certificate in ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def ensure_self_signed(
    cert_path: str, key_path: str, *, now: datetime, hostname: str | None = None
) -> CertificateInfo:
    """Load the data folder's certificate, or create it when neither file exists.

    Only one of the two files present is an error (never overwrite a key whose certificate
    clients may have pinned).
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        return load_certificate(cert_path, key_path)
    if have_cert or have_key:
        present, absent = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ValueError(
            f"{present} exists but {absent} does not: restore it, or remove both to make a "
            "new self-signed certificate (clients will have to trust the new one)"
        )
    dns, ips = default_names(hostname)
    cert_pem, key_pem = generate_self_signed(dns, ips, now)
    for folder in {os.path.dirname(os.path.abspath(p)) for p in (cert_path, key_path)}:
        ensure_dir(folder)
    write_durably(key_path, key_pem, mode=0o600)
    write_durably(cert_path, cert_pem, mode=0o644)
    return CertificateInfo(cert_path, key_path, fingerprint_sha256(cert_pem), created=True)


def load_certificate(cert_path: str, key_path: str) -> CertificateInfo:
    """Check that the files parse and the key matches the certificate."""
    return read_tls_pair(cert_path, key_path).info


@dataclass(frozen=True)
class TlsPair:
    """A certificate and its key as read (once) from their files, checked to match."""

    info: CertificateInfo
    certificate: x509.Certificate
    key: PrivateKeyTypes


def read_tls_pair(cert_path: str, key_path: str) -> TlsPair:
    """Read both files once; ``ValueError`` saying why when they do not parse or match."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ValueError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_path} is not an unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ValueError(f"{key_path} is not the key of the certificate {cert_path}")
    info = CertificateInfo(cert_path, key_path, fingerprint_sha256(cert_pem), created=False)
    return TlsPair(info, cert, key)


def _endpoint_args(listen: str) -> list[str]:
    """Split an endpoint string on unescaped colons (Twisted's escaping: backslash)."""
    parts, current, escaped = [], "", False
    for ch in listen:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def endpoint_tls_files(listen: str) -> tuple[str, str] | None:
    """The ``(certKey, privateKey)`` an ``ssl:`` string names, or None if it names neither."""
    named = {}
    for arg in _endpoint_args(listen)[1:]:
        key, sep, value = arg.partition("=")
        if sep and key in ("privateKey", "certKey"):
            named[key] = value
    if not named:
        return None
    key_file = named.get("privateKey", "server.pem")
    return named.get("certKey", key_file), key_file


def tls_endpoint_string(listen: str, cert_path: str, key_path: str) -> str:
    """``listen`` with the certificate and key filled in when it names none."""
    if endpoint_tls_files(listen) is not None:
        return listen
    return (
        f"{listen}:privateKey={quoteStringArgument(key_path)}"
        f":certKey={quoteStringArgument(cert_path)}"
    )


# TLS 1.2 suites the daemon offers: forward-secret AEAD only (no CBC-SHA1, no RSA key
# exchange). TLS 1.3 suites are all AEAD and are not affected by this list.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


# How long a session ticket may be used (a working day).
TICKET_LIFETIME = 8 * 3600


def restrict_ciphers(endpoint: object) -> None:
    """Limit a listening ``ssl:`` endpoint to ``AEAD_CIPHERS`` (the endpoint string has no
    cipher option; its ``CertificateOptions`` keeps one context for every connection)."""
    context = endpoint_tls_context(endpoint)
    if context is not None:
        restrict_context_ciphers(context)


# OpenSSL's option bits (ssl.h), not exported by pyOpenSSL.
OP_ALLOW_NO_DHE_KEX = 1 << 10
OP_PREFER_NO_DHE_KEX = 1 << 35
# Early data stated in each ticket: not read, only there to make tickets single use.
TICKET_EARLY_DATA = 1


def restrict_context_ciphers(context: SSL.Context) -> None:
    """Limit TLS 1.2 on ``context`` to ``AEAD_CIPHERS``, and keep sessions for resumption
    for ``TICKET_LIFETIME``, each resumed once, without key exchange if the client asks."""
    context.set_cipher_list(AEAD_CIPHERS.encode("ascii"))
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_timeout(TICKET_LIFETIME)
    context.set_options(OP_ALLOW_NO_DHE_KEX | OP_PREFER_NO_DHE_KEX)
    _lib.SSL_CTX_set_max_early_data(context._context, TICKET_EARLY_DATA)


def server_tls_options(cert_path: str, key_path: str) -> CertificateOptions:
    """TLS 1.2+ server options for in-process listeners (tests, embedding)."""
    from twisted.internet.ssl import PrivateCertificate

    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    private = PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    return CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS),
    )
