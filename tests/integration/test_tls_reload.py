"""Issue 17: SIGHUP reloads the TLS certificate and key into the running daemon's listener.

Real daemon, real TLS: the pair in the data folder is replaced, SIGHUP is sent, and new
connections are polled (with a deadline) until they present the new certificate. A pair that
does not parse or match is refused: the listener keeps the certificate it had, and the log
says why.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smartsyncd.service.tls import default_names, generate_self_signed
from tests.integration.daemon import Daemon, running_daemon

DEADLINE_S = 20.0


def presented_fingerprint(port: int) -> str:
    """The SHA-256 fingerprint of the certificate a new TLS connection is offered."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read the certificate, we trust nothing
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` beside ``path`` and rename it over (as an operator's renewal would)."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.chmod(temp, mode)
    os.replace(temp, path)


def hup_and_wait_for(d: Daemon, text: str) -> str:
    """SIGHUP, then poll the log until ``text`` appears in what was logged after it."""
    assert d.process is not None
    before = len(d.log_text())
    d.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + DEADLINE_S
    while text not in d.log_text()[before:]:
        assert d.process.poll() is None, "SIGHUP ended the daemon:\n" + d.log_text()
        assert time.monotonic() < deadline, f"no {text!r} after SIGHUP:\n" + d.log_text()
        time.sleep(0.05)
    return d.log_text()[before:]


def test_sighup_loads_a_new_certificate_and_refuses_a_broken_pair(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        old = d.fingerprint
        assert presented_fingerprint(d.port) == old

        dns, ips = default_names()
        cert_pem, key_pem = generate_self_signed(dns, ips, datetime.now(UTC))
        replace(d.key_path, key_pem, 0o600)
        replace(d.cert_path, cert_pem, 0o644)
        new = d.fingerprint
        assert new != old

        logged = hup_and_wait_for(d, "reload tls certificate: ")
        deadline = time.monotonic() + DEADLINE_S
        while presented_fingerprint(d.port) != new:
            assert time.monotonic() < deadline, "the old certificate is still presented"
            time.sleep(0.05)
        assert f"reload tls certificate: loaded {d.cert_path}; SHA-256 fingerprint {new}" in logged
        assert f"TLS certificate SHA-256 fingerprint: {new}" in logged
        assert d.request("GET", "/healthz")[0] == 200  # a client trusting only the new one

        # A key that is not the certificate's: refused, the new certificate stays.
        other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        replace(d.key_path, other_key, 0o600)
        logged = hup_and_wait_for(d, "reload tls certificate failed: ")
        assert f"{d.key_path} is not the key of the certificate {d.cert_path}" in logged
        assert presented_fingerprint(d.port) == new
        assert d.request("GET", "/healthz")[0] == 200

        # A certificate file that does not parse: refused too.
        replace(d.key_path, key_pem, 0o600)
        replace(d.cert_path, b"-----BEGIN CERTIFICATE-----\nnot base64\n", 0o644)
        logged = hup_and_wait_for(d, "reload tls certificate failed: ")
        assert f"{d.cert_path} is not a PEM certificate" in logged
        assert presented_fingerprint(d.port) == new
        assert d.running
