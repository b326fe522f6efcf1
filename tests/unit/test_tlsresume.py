"""TLS session resumption between runs (issue 15): the daemon's listener keeps sessions, a
``ResumptionSlot`` keeps the newest one in a 0600 file, and the next run's connection resumes
with it, but never under another trust, after it expired, or from a damaged file.

Real OpenSSL handshakes through Twisted's ``TLSMemoryBIOProtocol`` on both sides, joined by
``iosim`` pumps: no reactor, no socket. The server side is the daemon's: an ``ssl:``-style
``CertificateOptions`` given the listener's settings (``restrict_ciphers``)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from OpenSSL import crypto
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from smartsyncd.client.tlsresume import (
    KEEP_SECONDS,
    ResumptionSlot,
    session_file,
    session_from_bytes,
    trust_identity,
    was_resumed,
)
from smartsyncd.client.trust import CAPolicy, PinnedPolicy, cert_fingerprint
from smartsyncd.service.tls import generate_self_signed, restrict_ciphers

URL = "https://localhost:8443"


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.transport.write(b"pong:" + data)


class _Ping(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: object = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.received += data

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted's name
        self.lost = reason


class _Server:
    """The daemon's listener context, as ``service/server.py`` makes it."""

    def __init__(self, *, sessions: bool = True) -> None:
        cert_pem, key_pem = generate_self_signed(["localhost"], ["127.0.0.1"], datetime.now(UTC))
        self.cert = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)
        self.cert_pem = cert_pem
        options = CertificateOptions(
            privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem),
            certificate=self.cert,
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        self.endpoint = SimpleNamespace(_sslContextFactory=options)
        if sessions:
            restrict_ciphers(self.endpoint)  # what the daemon does to its listener
        self.options = options
        self.fingerprint = cert_fingerprint(self.cert)

    def connect(self, policy: PinnedPolicy | CAPolicy) -> tuple[_Ping, bool]:
        """One connection: the client pings, the server answers; (client protocol, resumed)."""
        clock = Clock()  # TLS coalesces small writes on the next turn of its clock
        server_factory = TLSMemoryBIOFactory(
            self.options, False, Factory.forProtocol(_Echo), clock=clock
        )
        client_factory = TLSMemoryBIOFactory(
            policy.creatorForNetloc(b"localhost", 8443), True, Factory.forProtocol(_Ping),
            clock=clock,
        )
        client_tls, server_tls, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
            greet=False,
        )
        ping: _Ping = client_tls.wrappedProtocol
        pump.flush()
        connection = client_tls._tlsConnection  # None once the connection failed
        resumed = connection is not None and was_resumed(connection)
        ping.transport.loseConnection()  # a TLS close, as the command's pool does at exit
        pump.flush()
        clock.advance(1)
        assert not clock.getDelayedCalls()
        return ping, resumed


def _slot(tmp_path: Path, label: str, clock: list[float] | None = None) -> ResumptionSlot:
    now = clock if clock is not None else [1_000_000.0]
    slot = ResumptionSlot(
        session_file(tmp_path, URL), trust_identity(URL, label), clock=lambda: now[0]
    )
    slot.load()
    return slot


def _pinned(server: _Server, tmp_path: Path, clock: list[float] | None = None) -> PinnedPolicy:
    policy = PinnedPolicy(server.fingerprint)
    policy.resumption = _slot(tmp_path, policy.trust_label, clock)
    return policy


def test_the_next_run_resumes_with_the_ticket_the_last_one_kept(tmp_path: Path) -> None:
    server = _Server()
    first = _pinned(server, tmp_path)
    ping, resumed = server.connect(first)
    assert ping.received == b"pong:ping" and not resumed
    assert first.resumption is not None
    first.resumption.save()
    kept = session_file(tmp_path, URL)
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600

    second = _pinned(server, tmp_path)  # a new run: a new policy, the slot read from the file
    ping, resumed = server.connect(second)
    assert ping.received == b"pong:ping" and resumed
    assert second.resumption is not None and second.resumption.offered == 1


def test_a_connection_in_the_same_run_resumes_too(tmp_path: Path) -> None:
    server = _Server()
    policy = _pinned(server, tmp_path)
    assert server.connect(policy)[1] is False
    assert server.connect(policy)[1] is True
    assert server.connect(policy)[1] is True  # the ticket issued on a resumption is kept too


def test_a_ticket_kept_under_another_pin_is_not_offered(tmp_path: Path) -> None:
    server = _Server()
    first = _pinned(server, tmp_path)
    server.connect(first)
    assert first.resumption is not None
    first.resumption.save()
    other = _Server()  # the certificate was replaced and the user re-pinned
    repinned = _pinned(other, tmp_path)
    ping, resumed = other.connect(repinned)
    assert ping.received == b"pong:ping" and not resumed
    assert repinned.resumption is not None and repinned.resumption.offered == 0


def test_a_resumed_session_whose_certificate_is_not_the_pin_is_refused(tmp_path: Path) -> None:
    """A ticket file forged with the right identity: the verify callback does not run on a
    resumption, so the pinned policy checks the certificate the session carries."""
    server = _Server()
    genuine = _pinned(server, tmp_path)
    server.connect(genuine)
    assert genuine.resumption is not None
    genuine.resumption.save()
    forged = PinnedPolicy("AB" * 32)
    forged.resumption = ResumptionSlot(
        session_file(tmp_path, URL), trust_identity(URL, genuine.trust_label),
        clock=lambda: 1_000_000.0,
    )
    forged.resumption.load()
    ping, _ = server.connect(forged)
    assert ping.received == b""
    assert ping.lost is not None
    assert forged.presented == server.fingerprint


def test_an_expired_ticket_is_not_offered(tmp_path: Path) -> None:
    server = _Server()
    clock = [1_000_000.0]
    first = _pinned(server, tmp_path, clock)
    server.connect(first)
    assert first.resumption is not None
    first.resumption.save()
    record = json.loads(session_file(tmp_path, URL).read_bytes())
    assert record["expires"] == clock[0] + KEEP_SECONDS
    clock[0] += KEEP_SECONDS + 1
    later = _pinned(server, tmp_path, clock)
    assert server.connect(later)[1] is False
    assert later.resumption is not None and later.resumption.offered == 0


@pytest.mark.parametrize("content", [
    b"", b"not json", b'{"version": 1}', b"\xff" * 70_000,
    b'{"version": 1, "identity": "X", "expires": 9e99, "session": "AAAA"}',
])
def test_a_damaged_file_means_a_full_handshake(tmp_path: Path, content: bytes) -> None:
    server = _Server()
    label = PinnedPolicy(server.fingerprint).trust_label
    if b"identity" in content:
        content = content.replace(b'"X"', json.dumps(trust_identity(URL, label)).encode())
    session_file(tmp_path, URL).write_bytes(content)
    policy = _pinned(server, tmp_path)
    ping, resumed = server.connect(policy)
    assert ping.received == b"pong:ping" and not resumed


def test_session_bytes_that_are_not_a_session_are_refused() -> None:
    context = CertificateOptions().getContext()
    for data in (b"", b"\x30\x03\x02\x01\x01", b"garbage" * 10, b"\x00" * 20_000):
        with pytest.raises(ValueError):
            session_from_bytes(data, context)


def test_a_server_without_tickets_still_connects(tmp_path: Path) -> None:
    """An older daemon (no session cache): nothing to resume, every run a full handshake."""
    server = _Server(sessions=False)
    first = _pinned(server, tmp_path)
    server.connect(first)
    assert first.resumption is not None
    first.resumption.save()
    second = _pinned(server, tmp_path)
    ping, resumed = server.connect(second)
    assert ping.received == b"pong:ping" and not resumed


def test_a_ca_policy_resumes_and_binds_the_ticket_to_its_certificates(tmp_path: Path) -> None:
    server = _Server()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(server.cert_pem)
    first = CAPolicy(ca_file)
    first.resumption = _slot(tmp_path, first.trust_label)
    assert server.connect(first)[1] is False
    first.resumption.save()
    again = CAPolicy(ca_file)
    again.resumption = _slot(tmp_path, again.trust_label)
    assert server.connect(again)[1] is True
    other = _Server()
    ca_file.write_bytes(other.cert_pem)  # another CA file: the ticket is not offered
    changed = CAPolicy(ca_file)
    changed.resumption = _slot(tmp_path, changed.trust_label)
    assert changed.trust_label != first.trust_label
    assert changed.resumption.offered == 0 and changed.resumption.record() is None


def test_forget_removes_the_file(tmp_path: Path) -> None:
    server = _Server()
    policy = _pinned(server, tmp_path)
    server.connect(policy)
    assert policy.resumption is not None
    policy.resumption.save()
    assert session_file(tmp_path, URL).exists()
    policy.resumption.forget()
    assert not session_file(tmp_path, URL).exists()
    assert policy.resumption.record() is None

