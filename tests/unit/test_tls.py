"""Self-signed certificate creation, fingerprints and the TLS endpoint string."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from smartsyncd.service.tls import (
    default_names,
    endpoint_tls_files,
    ensure_self_signed,
    fingerprint_sha256,
    generate_self_signed,
    load_certificate,
    tls_endpoint_string,
)

NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)


def test_generated_certificate_names_and_constraints() -> None:
    dns, ips = default_names("Auditbox")
    assert dns == ["localhost", "auditbox"]
    assert ips == ["127.0.0.1", "::1"]
    cert_pem, key_pem = generate_self_signed(dns, ips, NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "auditbox"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - NOW >= timedelta(days=3649)
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert b"PRIVATE KEY" in key_pem


def test_localhost_as_host_name_is_not_listed_twice() -> None:
    assert default_names("localhost")[0] == ["localhost"]


def test_fingerprint_matches_openssl() -> None:
    cert_pem, _ = generate_self_signed(["localhost"], ["127.0.0.1"], NOW)
    expected = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem).digest("sha256").decode()
    assert fingerprint_sha256(cert_pem) == expected
    assert len(expected.split(":")) == 32


def test_first_start_creates_then_later_starts_load(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    made = ensure_self_signed(str(cert), str(key), now=NOW, hostname="box")
    assert made.created
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert made.fingerprint == fingerprint_sha256(cert.read_bytes())
    assert [p.name for p in (tmp_path / "tls").iterdir() if p.name.startswith(".")] == []

    again = ensure_self_signed(str(cert), str(key), now=NOW + timedelta(days=1))
    assert not again.created
    assert again.fingerprint == made.fingerprint


@pytest.mark.parametrize("keep", ["cert.pem", "key.pem"])
def test_a_lone_certificate_or_key_is_never_replaced(tmp_path: Path, keep: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed(str(cert), str(key), now=NOW)
    survivor = tmp_path / keep
    before = survivor.read_bytes()
    (key if keep == "cert.pem" else cert).unlink()
    with pytest.raises(ValueError, match="exists but"):
        ensure_self_signed(str(cert), str(key), now=NOW)
    assert survivor.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [keep]


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    a = ensure_self_signed(str(tmp_path / "a.pem"), str(tmp_path / "a.key"), now=NOW)
    b = ensure_self_signed(str(tmp_path / "b.pem"), str(tmp_path / "b.key"), now=NOW)
    with pytest.raises(ValueError, match="is not the key"):
        load_certificate(a.cert_path, b.key_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        load_certificate(str(tmp_path / "junk.pem"), a.key_path)
    with pytest.raises(ValueError, match="cannot read"):
        load_certificate(str(tmp_path / "absent.pem"), a.key_path)


def test_endpoint_string_gets_the_files_filled_in_with_escaping() -> None:
    filled = tls_endpoint_string("ssl:8443:interface=127.0.0.1", "/d:x/cert.pem", "/d:x/key.pem")
    assert filled == (
        "ssl:8443:interface=127.0.0.1:privateKey=/d\\:x/key.pem:certKey=/d\\:x/cert.pem"
    )
    assert endpoint_tls_files(filled) == ("/d:x/cert.pem", "/d:x/key.pem")


def test_endpoint_string_naming_its_own_files_is_kept() -> None:
    own = "ssl:443:privateKey=/etc/k.pem:certKey=/etc/c.pem"
    assert tls_endpoint_string(own, "/data/cert.pem", "/data/key.pem") == own
    assert endpoint_tls_files(own) == ("/etc/c.pem", "/etc/k.pem")
    assert endpoint_tls_files("ssl:443:privateKey=/etc/both.pem") == (
        "/etc/both.pem",
        "/etc/both.pem",
    )
    assert endpoint_tls_files("ssl:443") is None


