"""TLS bytes of one sync's connection, by kind of handshake (issue 15, post-quantum shares).

    python bench/tls_bytes.py

The daemon's listener context (``service/tls.py``) and the command's pinned trust policy with
its ticket slot (``client/trust.py``, ``client/tlsresume.py``), joined in memory by Twisted's
``iosim`` (real OpenSSL, no socket): each connection shakes hands, the client sends 4 bytes,
the server answers 9, and both close. Prints the bytes each way and the round trips (server
flights before the client's first application data) for a full handshake, a resumption (the
next run, with the ticket the last one kept), and a refused ticket (the daemon restarted).
Runs against whatever ``smartsyncd`` is importable, so ``PYTHONPATH=OLD_TREE`` measures an
older version with the same script. Bytes are deterministic up to a few bytes of encoding.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from OpenSSL import crypto
from OpenSSL._util import ffi, lib
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from smartsyncd.client.tlsresume import ResumptionSlot, session_file, trust_identity
from smartsyncd.client.trust import PinnedPolicy, cert_fingerprint
from smartsyncd.service.tls import generate_self_signed, restrict_ciphers

URL = "https://localhost:8443"


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.transport.write(b"pong:" + data)


class _Ping(Protocol):
    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.transport.write(b"ping")


def daemon_options(pair: tuple[bytes, bytes]) -> CertificateOptions:
    options = CertificateOptions(
        privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, pair[1]),
        certificate=crypto.load_certificate(crypto.FILETYPE_PEM, pair[0]),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    restrict_ciphers(SimpleNamespace(_sslContextFactory=options))
    return options


def one_run(options: CertificateOptions, fingerprint: str, folder: Path) -> dict[str, Any]:
    """A run of the command: read the kept ticket, one connection, keep the newest ticket."""
    policy = PinnedPolicy(fingerprint)
    slot = ResumptionSlot(session_file(folder, URL), trust_identity(URL, policy.trust_label))
    slot.load()
    policy.resumption = slot
    clock = Clock()
    server = TLSMemoryBIOFactory(options, False, Factory.forProtocol(_Echo), clock=clock)
    client = TLSMemoryBIOFactory(
        policy.creatorForNetloc(b"localhost", 8443), True, Factory.forProtocol(_Ping),
        clock=clock,
    )
    client_tls, _, pump = connectedServerAndClient(
        lambda: server.buildProtocol(None), lambda: client.buildProtocol(None),
        clock=clock, greet=False,
    )
    moved = {"up": 0, "down": 0, "flights": 0}

    def counted(receive: Any, way: str) -> Any:
        def count(data: bytes) -> None:
            moved[way] += len(data)
            if way == "down":
                moved["flights"] += 1
            receive(data)
        return count

    pump.serverIO.bufferReceived = counted(pump.serverIO.bufferReceived, "up")
    pump.clientIO.bufferReceived = counted(pump.clientIO.bufferReceived, "down")
    pump.flush()
    connection = client_tls._tlsConnection
    name = lib.SSL_get0_group_name(connection._ssl)
    group = "-" if name == ffi.NULL else ffi.string(name).decode()
    resumed = bool(lib.SSL_session_reused(connection._ssl))
    client_tls.wrappedProtocol.transport.loseConnection()
    pump.flush()
    clock.advance(1)
    slot.save()
    return {**moved, "group": group, "resumed": resumed}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tls-bytes-"))
    pair = generate_self_signed(["localhost"], ["127.0.0.1"], datetime.now(UTC))
    fingerprint = cert_fingerprint(crypto.load_certificate(crypto.FILETYPE_PEM, pair[0]))
    daemon = daemon_options(pair)
    rows = [("full handshake (no ticket)", one_run(daemon, fingerprint, folder))]
    rows.append(("resumed (the next run)", one_run(daemon, fingerprint, folder)))
    rows.append(("resumed again", one_run(daemon, fingerprint, folder)))
    rows.append(("ticket refused (daemon restarted)",
                 one_run(daemon_options(pair), fingerprint, folder)))
    print(f"OpenSSL: {ffi.string(lib.OpenSSL_version(0)).decode()}; smartsyncd from "
          f"{sys.modules['smartsyncd'].__file__}")
    print("| connection | up | down | total | server flights | group | resumed |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['up']:,} B | {r['down']:,} B | {r['up'] + r['down']:,} B | "
              f"{r['flights']} | {r['group']} | {r['resumed']} |")


if __name__ == "__main__":
    main()
