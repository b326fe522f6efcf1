"""TLS trust against a real Twisted TLS server on loopback: the fingerprint probe, pinning, and
CA verification with host-name checks (moved from tests/unit, which runs no reactor; the checks
that need no connection stay in tests/unit/test_trust.py)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.errors import NetworkError, TrustError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import (
    CAPolicy,
    PinnedPolicy,
    cert_fingerprint,
    fetch_fingerprint,
)

pytestmark = pytest.mark.integration


def make_cert(tmp: Path, name: str, sans: list[x509.GeneralName]) -> tuple[Path, Path, str]:
    """A self-signed server certificate like the daemon's; returns (cert, key, fingerprint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp / f"{name}.cert.pem"
    key_path = tmp / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return cert_path, key_path, ":".join(fp[i : i + 2] for i in range(0, 64, 2))


LOCAL_SANS: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
]


class Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setHeader(b"content-type", b"application/json")
        return b'{"server": "smartsyncd", "protocol": [1]}'


class TLSServer:
    def __init__(self, port: Any, resource: Hello, fingerprint: str, cert: Path) -> None:
        self.port = port
        self.resource = resource
        self.fingerprint = fingerprint
        self.cert = cert
        self.url = f"https://127.0.0.1:{port.getHost().port}"


async def listen(cert: Path, key: Path, fingerprint: str) -> TLSServer:
    resource = Hello()
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    port = await endpoint.listen(Site(resource))
    return TLSServer(port, resource, fingerprint, cert)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TLSServer]:
    cert, key, fp = make_cert(tmp_path, "good", LOCAL_SANS)
    srv = pytest_twisted.blockon(Deferred.fromCoroutine(listen(cert, key, fp)))
    yield srv
    pytest_twisted.blockon(srv.port.stopListening())


@pytest.fixture
def other_cert(tmp_path: Path) -> tuple[Path, Path, str]:
    return make_cert(tmp_path, "other", LOCAL_SANS)


def api(url: str, policy: Any) -> ServerAPI:
    return ServerAPI(
        url, reactor=reactor, policy=policy, max_attempts=2, backoff=Backoff(initial=0.001)
    )


@pytest_twisted.ensureDeferred
async def test_probe_returns_leaf_fingerprint_and_sends_no_request(server: TLSServer) -> None:
    fp = await fetch_fingerprint(reactor, server.url)
    assert fp == server.fingerprint
    assert fp == cert_fingerprint(
        x509.load_pem_x509_certificate(server.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    assert server.resource.hits == 0


@pytest_twisted.ensureDeferred
async def test_probe_of_closed_port_is_network_error(tmp_path: Path) -> None:
    cert, key, fp = make_cert(tmp_path, "gone", LOCAL_SANS)
    srv = await listen(cert, key, fp)
    url = srv.url
    await srv.port.stopListening()
    with pytest.raises(NetworkError, match="cannot reach"):
        await fetch_fingerprint(reactor, url)


@pytest_twisted.ensureDeferred
async def test_pinned_policy_accepts_the_pinned_cert(server: TLSServer) -> None:
    client = api(server.url, PinnedPolicy(server.fingerprint))
    try:
        info = await client.info()
    finally:
        await client.close()
    assert info["server"] == "smartsyncd"
    assert server.resource.hits == 1


@pytest_twisted.ensureDeferred
async def test_pinned_policy_refuses_a_different_cert(
    server: TLSServer, other_cert: tuple[Path, Path, str]
) -> None:
    policy = PinnedPolicy(other_cert[2])
    client = api(server.url, policy)
    try:
        with pytest.raises(TrustError, match="certificate changed") as caught:
            await client.info()
    finally:
        await client.close()
    assert caught.value.presented == server.fingerprint
    assert caught.value.exit_code == 4
    assert server.resource.hits == 0  # the request never reached the application
    assert client.requests == 1  # a trust failure is not retried


@pytest_twisted.ensureDeferred
async def test_pin_is_checked_on_every_connection(tmp_path: Path) -> None:
    """A server that swaps its certificate behind the same port is refused on reconnect."""
    cert, key, fp = make_cert(tmp_path, "first", LOCAL_SANS)
    first = await listen(cert, key, fp)
    port_number = first.port.getHost().port
    client = api(first.url, PinnedPolicy(fp))
    try:
        await client.info()
        await client.close()  # drop the pooled connection
        await first.port.stopListening()
        cert2, key2, _ = make_cert(tmp_path, "second", LOCAL_SANS)
        endpoint = serverFromString(
            reactor,
            f"ssl:{port_number}:interface=127.0.0.1:privateKey={key2}:certKey={cert2}",
        )
        second = await endpoint.listen(Site(Hello()))
        try:
            with pytest.raises(TrustError, match="certificate changed"):
                await client.info()
        finally:
            await second.stopListening()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_ca_policy_accepts_cert_from_ca_file(server: TLSServer) -> None:
    client = api(server.url, CAPolicy(server.cert))
    try:
        info = await client.info()
    finally:
        await client.close()
    assert info["protocol"] == [1]


@pytest_twisted.ensureDeferred
async def test_ca_policy_verifies_host_name(tmp_path: Path) -> None:
    # The certificate chains to the CA file but names another host, not 127.0.0.1.
    cert, key, fp = make_cert(tmp_path, "elsewhere", [x509.DNSName("files.example")])
    srv = await listen(cert, key, fp)
    client = api(srv.url, CAPolicy(cert))
    try:
        with pytest.raises(TrustError, match="not trusted"):
            await client.info()
    finally:
        await client.close()
        await srv.port.stopListening()
    assert srv.resource.hits == 0


@pytest_twisted.ensureDeferred
async def test_ca_policy_refuses_cert_not_in_ca_file(
    server: TLSServer, other_cert: tuple[Path, Path, str]
) -> None:
    client = api(server.url, CAPolicy(other_cert[0]))
    try:
        with pytest.raises(TrustError):
            await client.info()
    finally:
        await client.close()
    assert server.resource.hits == 0
