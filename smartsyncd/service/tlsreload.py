"""SIGHUP: the listener's TLS certificate and key, reloaded from their files (issue 17).

A renewed certificate (or a replaced self-signed pair) no longer needs a restart, which would
cut every open long-poll and upload. ``reload_listener_certificate`` runs as a step of the
``ReloadService`` (``service/reload.py``):

1. on a thread: read both files once, parse them and check the key is the certificate's
   (``tls.read_tls_pair``: the same checks and messages as at start), then load the pair into
   a scratch OpenSSL context and ``check_privatekey`` there, as the listener would;
2. on the reactor thread: have the listening endpoint's ``CertificateOptions`` make a new
   context with that same certificate and key (and the daemon's cipher list), and hand it to
   every new connection from then on (``twistedcompat.renew_endpoint_context``: pyOpenSSL
   refuses to change a context connections were made from). The reactor is the only thread
   that makes connections, so no handshake sees a half-changed listener.

A pair that does not parse or match raises before the live context is touched: the listener
keeps presenting the old certificate, and the reload line says why. Connections already open
keep the certificate they were made with. Only the leaf certificate is loaded, as at start
(the ``ssl:`` endpoint reads the leaf from ``certKey``; an ``extraCertChain`` stays as it was).
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL, crypto

from smartsyncd.runtime.twistedcompat import renew_endpoint_context
from smartsyncd.service.tls import CertificateInfo, read_tls_pair, restrict_context_ciphers
from smartsyncd.web.pool import RunBlocking


@dataclass(frozen=True)
class LoadedPair:
    info: CertificateInfo
    certificate: crypto.X509
    key: crypto.PKey


def load_pair(cert_path: str, key_path: str) -> LoadedPair:
    """Read and check the pair (blocking: run it on a thread); ``ValueError`` saying why."""
    pair = read_tls_pair(cert_path, key_path)
    certificate = crypto.X509.from_cryptography(pair.certificate)
    key = crypto.PKey.from_cryptography_key(pair.key)  # type: ignore[arg-type]
    scratch = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        scratch.use_certificate(certificate)
        scratch.use_privatekey(key)
        scratch.check_privatekey()
    except SSL.Error as e:
        raise ValueError(f"OpenSSL refuses {cert_path} with {key_path}: {e}") from None
    return LoadedPair(pair.info, certificate, key)


def install(endpoint: object, pair: LoadedPair) -> None:
    """Make ``endpoint`` present ``pair`` on the connections it accepts from now on."""
    renew_endpoint_context(endpoint, pair.certificate, pair.key, restrict_context_ciphers)


async def reload_listener_certificate(
    endpoint: object, current: CertificateInfo, run_blocking: RunBlocking
) -> tuple[CertificateInfo, bool]:
    """Reload ``current``'s files into ``endpoint``'s TLS context; returns the new info and
    whether the fingerprint changed. Raises (nothing changed) when the pair is refused."""
    pair: LoadedPair = await run_blocking(load_pair, current.cert_path, current.key_path)
    install(endpoint, pair)
    return pair.info, pair.info.fingerprint != current.fingerprint
