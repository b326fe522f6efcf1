"""TLS session resumption between runs (issue 15): the daemon's listener keeps sessions, a
``ResumptionSlot`` keeps the newest one in a 0600 file, and the next run's connection resumes
with it, but never under another trust, after it expired, or from a damaged file; and never
at the cost of post-quantum protection: a full handshake negotiates the hybrid group, only its
tickets are kept, a resumption sends no key share of it, and a refused ticket ends in a hybrid
handshake, never a classical one.

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
from typing import Any, NamedTuple

import pytest
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from smartsyncd.client.tlsresume import (
    CHAIN_SECONDS,
    KEEP_SECONDS,
    ResumptionSlot,
    negotiated_group,
    session_file,
    session_from_bytes,
    trust_identity,
    was_resumed,
)
from smartsyncd.client.trust import CAPolicy, PinnedPolicy, cert_fingerprint
from smartsyncd.service.tls import generate_self_signed, restrict_ciphers

URL = "https://localhost:8443"
HYBRID = "X25519MLKEM768"
# ML-KEM-768's encapsulation key (client to server) and ciphertext (server to client): a
# connection that moved fewer bytes than these one way carried no hybrid key share that way.
MLKEM_SHARE_UP, MLKEM_SHARE_DOWN = 1184, 1088


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


class Shake(NamedTuple):
    """One connection as the client saw it."""

    ping: _Ping
    resumed: bool
    up: int  # bytes client to server, the whole connection
    down: int
    group: str | None  # the client's negotiated_group


class _Server:
    """The daemon's listener context, as ``service/server.py`` makes it.

    ``sessions=False``: no session cache (tickets that cannot be resumed); ``key_exchange``:
    sessions kept, but a resumption always runs a key exchange (the daemon before issue 15's
    post-quantum work, or a TLS-terminating proxy); ``groups``: the server's groups."""

    def __init__(
        self, *, sessions: bool = True, key_exchange: bool = False, groups: bytes | None = None,
        pair: tuple[bytes, bytes] | None = None,
    ) -> None:
        cert_pem, key_pem = pair or generate_self_signed(
            ["localhost"], ["127.0.0.1"], datetime.now(UTC)
        )
        self.pair = (cert_pem, key_pem)
        self.cert = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)
        self.cert_pem = cert_pem
        options = CertificateOptions(
            privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem),
            certificate=self.cert,
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        self.endpoint = SimpleNamespace(_sslContextFactory=options)
        context = options.getContext()
        if key_exchange:
            context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        elif sessions:
            restrict_ciphers(self.endpoint)  # what the daemon does to its listener
        if groups is not None:
            assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
        self.options = options
        self.fingerprint = cert_fingerprint(self.cert)

    def restarted(self) -> _Server:
        """The same certificate in a new process: none of the sessions."""
        return _Server(pair=self.pair)

    def connect(self, policy: PinnedPolicy | CAPolicy) -> Shake:
        """One connection: the client pings, the server answers."""
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
        moved = {"up": 0, "down": 0}

        def counted(receive: Any, way: str) -> Any:
            def count(data: bytes) -> None:
                moved[way] += len(data)
                receive(data)
            return count

        pump.serverIO.bufferReceived = counted(pump.serverIO.bufferReceived, "up")
        pump.clientIO.bufferReceived = counted(pump.clientIO.bufferReceived, "down")
        ping: _Ping = client_tls.wrappedProtocol
        pump.flush()
        connection = client_tls._tlsConnection  # None once the connection failed
        resumed = connection is not None and was_resumed(connection)
        group = None if connection is None else negotiated_group(connection)
        ping.transport.loseConnection()  # a TLS close, as the command's pool does at exit
        pump.flush()
        clock.advance(1)
        assert not clock.getDelayedCalls()
        return Shake(ping, resumed, moved["up"], moved["down"], group)


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
    ping, resumed = server.connect(first)[:2]
    assert ping.received == b"pong:ping" and not resumed
    assert first.resumption is not None
    first.resumption.save()
    kept = session_file(tmp_path, URL)
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600

    second = _pinned(server, tmp_path)  # a new run: a new policy, the slot read from the file
    ping, resumed = server.connect(second)[:2]
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
    ping, resumed = other.connect(repinned)[:2]
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
    ping, _ = server.connect(forged)[:2]
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
    assert CHAIN_SECONDS < KEEP_SECONDS
    assert record["expires"] == clock[0] + CHAIN_SECONDS and record["root"] == clock[0]
    clock[0] += CHAIN_SECONDS + 1
    later = _pinned(server, tmp_path, clock)
    assert server.connect(later)[1] is False
    assert later.resumption is not None and later.resumption.offered == 0


@pytest.mark.parametrize("content", [
    b"", b"not json", b'{"version": 1}', b"\xff" * 70_000,
    b'{"version": 1, "identity": "X", "expires": 9e99, "session": "AAAA"}',
    b'{"version": 2, "identity": "X", "expires": 9e99, "root": 1e6, "session": "AAAA"}',
    b'{"version": 2, "identity": "X", "expires": 9e99, "root": 9e99, "session": "AAAA"}',
    b'{"version": 2, "identity": "X", "expires": 9e99, "root": "1e6", "session": "AAAA"}',
])
def test_a_damaged_file_means_a_full_handshake(tmp_path: Path, content: bytes) -> None:
    server = _Server()
    label = PinnedPolicy(server.fingerprint).trust_label
    if b"identity" in content:
        content = content.replace(b'"X"', json.dumps(trust_identity(URL, label)).encode())
    session_file(tmp_path, URL).write_bytes(content)
    policy = _pinned(server, tmp_path)
    ping, resumed = server.connect(policy)[:2]
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
    ping, resumed = server.connect(second)[:2]
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



def _saved_run(server: _Server, tmp_path: Path, clock: list[float] | None = None) -> Shake:
    """One run of the command: read the file, connect once, keep the newest ticket."""
    policy = _pinned(server, tmp_path, clock)
    shake = server.connect(policy)
    assert policy.resumption is not None
    policy.resumption.save()
    return shake


def test_a_full_handshake_is_hybrid_and_a_resumption_sends_no_hybrid_share(
    tmp_path: Path,
) -> None:
    server = _Server()
    full = _saved_run(server, tmp_path)
    assert full.ping.received == b"pong:ping" and not full.resumed
    assert full.group == HYBRID
    assert full.up > MLKEM_SHARE_UP and full.down > MLKEM_SHARE_DOWN
    for _ in range(3):  # each resumption's new ticket is kept and resumed in turn
        resumed = _saved_run(server, tmp_path)
        assert resumed.ping.received == b"pong:ping" and resumed.resumed
        # no ML-KEM share either way (the PSK carries the post-quantum secret), and no
        # certificate: about a quarter of the full handshake's bytes
        assert resumed.up < MLKEM_SHARE_UP and resumed.down < MLKEM_SHARE_DOWN, resumed
        assert resumed.up + resumed.down < (full.up + full.down) / 3


def test_a_refused_ticket_ends_in_a_hybrid_handshake(tmp_path: Path) -> None:
    """The daemon restarted (or another one answers): the X25519-only offer is answered with
    a HelloRetryRequest for the hybrid, never with a classical handshake; its ticket is kept
    and the next run resumes."""
    server = _Server()
    _saved_run(server, tmp_path)
    restarted = server.restarted()
    policy = _pinned(restarted, tmp_path)
    refused = restarted.connect(policy)
    assert policy.resumption is not None and policy.resumption.offered == 1
    assert refused.ping.received == b"pong:ping" and not refused.resumed
    assert refused.group == HYBRID
    assert refused.up > MLKEM_SHARE_UP and refused.down > MLKEM_SHARE_DOWN
    policy.resumption.save()
    assert _saved_run(restarted, tmp_path).resumed


def test_a_ticket_from_a_classical_handshake_is_not_kept(tmp_path: Path) -> None:
    server = _Server(groups=b"X25519:secp256r1")  # a server without post-quantum groups
    policy = _pinned(server, tmp_path)
    shake = server.connect(policy)
    assert shake.ping.received == b"pong:ping" and shake.group == "x25519"
    assert policy.resumption is not None
    assert policy.resumption.record() is None and policy.resumption.refused_classical == 1
    policy.resumption.save()
    assert not session_file(tmp_path, URL).exists()
    assert not _saved_run(server, tmp_path).resumed


def test_a_ticket_is_used_once(tmp_path: Path) -> None:
    """The daemon drops a resumed session, so a copy of a used ticket (a file restored from a
    backup, a thief's copy) resumes nothing; and a slot never offers its ticket twice."""
    server = _Server()
    _saved_run(server, tmp_path)
    copied = session_file(tmp_path, URL).read_bytes()
    assert _saved_run(server, tmp_path).resumed
    session_file(tmp_path, URL).write_bytes(copied)
    replayed = _saved_run(server, tmp_path)
    assert not replayed.resumed and replayed.group == HYBRID
    policy = _pinned(server, tmp_path)
    assert server.connect(policy).resumed
    assert policy.resumption is not None and policy.resumption.offered == 1


def test_a_used_ticket_without_a_new_one_is_removed(tmp_path: Path) -> None:
    server = _Server()
    _saved_run(server, tmp_path)
    policy = _pinned(server, tmp_path)
    connection = SSL.Connection(policy._context, None)
    assert policy.resumption is not None
    policy.resumption.prepare(connection)  # offered, then the run ends before the handshake
    assert policy.resumption.offered == 1
    policy.resumption.save()
    assert not session_file(tmp_path, URL).exists()


def test_a_chain_of_resumptions_ends_after_chain_seconds(tmp_path: Path) -> None:
    server = _Server()
    clock = [1_000_000.0]
    assert not _saved_run(server, tmp_path, clock).resumed
    step = CHAIN_SECONDS / 4
    for _ in range(3):
        clock[0] += step
        assert _saved_run(server, tmp_path, clock).resumed
    clock[0] += step + 1  # each ticket is fresh, but the chain's full handshake is not
    fresh = _saved_run(server, tmp_path, clock)
    assert not fresh.resumed and fresh.group == HYBRID
    assert json.loads(session_file(tmp_path, URL).read_bytes())["root"] == clock[0]


def test_a_server_that_resumes_only_with_key_exchange_gets_full_shares(tmp_path: Path) -> None:
    """A server that asked for another key share to resume (a TLS-terminating proxy, an older
    daemon) is offered the default key shares from then on: no retry round trip."""
    server = _Server(key_exchange=True)
    assert not _saved_run(server, tmp_path).resumed
    retried = _saved_run(server, tmp_path)  # X25519 offered, the hybrid asked for
    assert retried.resumed and retried.group == HYBRID
    assert json.loads(session_file(tmp_path, URL).read_bytes())["dhe"] is True
    again = _saved_run(server, tmp_path)
    assert again.resumed and again.group == HYBRID
    assert again.up > MLKEM_SHARE_UP and again.down > MLKEM_SHARE_DOWN
    assert again.up < retried.up  # one ClientHello, not two
    clock = [9_000_000.0]  # the chain ends: a full handshake, and the server is asked again
    assert not _saved_run(server, tmp_path, clock).resumed
    assert json.loads(session_file(tmp_path, URL).read_bytes())["dhe"] is False


def test_the_daemon_never_reads_early_data(tmp_path: Path) -> None:
    """Tickets state 1 byte of early data (only to make them single use): a client that sends
    some anyway has it dropped, and the connection carries on with what it sends after."""
    server = _Server()
    _saved_run(server, tmp_path)
    policy = _pinned(server, tmp_path)
    assert policy.resumption is not None
    client = SSL.Connection(policy._context, None)
    policy.resumption.prepare(client)
    client.set_connect_state()
    daemon = SSL.Connection(server.options.getContext(), None)
    daemon.set_accept_state()
    written = _ffi.new("size_t *")
    assert _lib.SSL_write_early_data(client._ssl, b"X", 1, written) == 1 and written[0] == 1

    def move(source: SSL.Connection, sink: SSL.Connection) -> None:
        while True:
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                return

    for _ in range(3):
        for side in (client, daemon):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        move(client, daemon)
        move(daemon, client)
    assert was_resumed(client)
    client.send(b"after")
    move(client, daemon)
    assert daemon.recv(100) == b"after"
