"""TLS session resumption between runs of the command (issue 15): a short handshake instead of
a full one when the same user syncs the same server again, without giving up post-quantum
protection.

The daemon issues TLS 1.3 session tickets (``service/tls.py``). A :class:`ResumptionSlot`
belongs to one trust policy for one server: it offers the ticket it holds to one new
connection, takes the newest ticket from the connections it saw, and keeps it in a file beside
the settings (``tls-session-<hash of the server URL>.json``, 0600, written atomically).

**Post-quantum protection (harvest now, decrypt later).** A full handshake offers OpenSSL's
default groups, the hybrid X25519MLKEM768 first (a 1.2 KB key share each way). A ticket is kept
only from a full handshake that negotiated a post-quantum group (``SSL_get0_group_name`` names
ML-KEM), or from a resumption of such a ticket: the file says when its chain's full handshake
was (``root``). The resumption secret of such a chain is a symmetric key that no recording of
the traffic reveals, quantum computer or not. A connection that offers the ticket therefore:

- allows ``psk_ke`` (``SSL_OP_ALLOW_NO_DHE_KEX``): the daemon prefers it and resumes with no
  key exchange at all, so the traffic keys come from the ticket's secret alone;
- sends one 32-byte X25519 key share while still listing the post-quantum groups first, so a
  daemon that refuses the ticket (restarted, another daemon, the ticket used already) answers
  with a HelloRetryRequest for X25519MLKEM768 and the handshake becomes a full post-quantum
  one (one round trip more, only then). It never becomes a classical full handshake against a
  server that supports the hybrid: OpenSSL's default groups put the hybrid alone in the first
  preference tuple, so it is chosen over the X25519 share that was sent;
- is watched: a server that resumed only after a HelloRetryRequest wants a key exchange on
  every resumption (HAProxy terminating TLS, an older daemon), so the chain's next offers carry
  the default key shares instead (``dhe`` in the file) and save that round trip; a new chain
  asks again.

(Offering X25519 with ``psk_dhe_ke`` only, idea (a) of the issue, cannot be had from OpenSSL:
its server picks the key-share group before and regardless of whether the ticket is accepted,
so a daemon configured to take the X25519 share on a resumption takes it on a refused ticket
too, a classical full handshake; with the default groups it asks for the hybrid share on every
resumption. Measured in bench/RESULTS.md.)

**Forward secrecy, honestly.** A ``psk_ke`` resumption has no fresh key exchange: whoever holds
the ticket's secret can decrypt the connection that uses it, and the tickets issued on it, and
so on down the chain. What bounds that:

- tickets are single use on both sides: the daemon drops a session from its cache when it is
  resumed (``service/tls.py``), and a slot never offers the same ticket twice; each new ticket's
  secret is derived one way from the connection that issued it, so a stolen ticket reveals no
  earlier connection (a hash chain);
- a chain lasts at most ``CHAIN_SECONDS`` from its full handshake: the ticket is then not
  offered, a full post-quantum handshake starts a new chain with fresh key exchange, and a
  ticket stolen from the file or the daemon's memory stops opening future traffic;
- the file sits beside the bearer token (a ticket is kept only where the token itself is kept
  on disk; a user who keeps the token in the OS keychain gets full handshakes). Whoever can read
  the ticket can read the token, which opens the same files on the server directly.

What is given up against a resumption with (EC)DHE: a thief of the current ticket who also
recorded the traffic can read the rest of its chain (at most ``CHAIN_SECONDS``) without being
on the path; with a key exchange they would have had to be an active man in the middle.

What makes a kept ticket safe to offer, besides:

- it is stored with the *trust identity* it was made under (the server URL and the pinned
  fingerprint, or the CA file and a digest of its certificates), and a ticket kept under any
  other identity is ignored: a resumed handshake skips certificate checks, so a ticket made
  before a re-pin must never be offered after it;
- it is kept no longer than ``KEEP_SECONDS`` (the daemon's ticket lifetime), and OpenSSL
  itself does not offer a ticket older than the lifetime the server stated;
- the pinned policy checks the certificate the resumed session carries against the pin
  anyway (``trust.py``);
- a damaged, foreign, stale or older-format file, or a ticket the server no longer accepts,
  costs only a full handshake. ``smartsync logout`` removes the file.

pyOpenSSL has no public (de)serialisation of sessions; ``i2d_SSL_SESSION``/``d2i_SSL_SESSION``
are called through its cffi bindings (``OpenSSL._util``), with size limits on both sides, as are
``SSL_set1_curves_list``, ``SSL_set_options`` and ``SSL_get0_group_name``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from smartsyncd.client import osfs
from smartsyncd.client.userconfig import write_private_file

KEEP_SECONDS = 8 * 3600  # the daemon's ticket lifetime (service/tls.py TICKET_LIFETIME)
# A chain of resumptions without key exchange gets a full handshake at least this often.
CHAIN_SECONDS = 3600
MAX_SESSION_BYTES = 16 * 1024  # a session with a certificate is about 0.8 KB
_FILE_VERSION = 2  # 1: tickets of handshakes of any group, resumed with (EC)DHE

# OpenSSL's option bits (ssl.h), not exported by pyOpenSSL.
OP_ALLOW_NO_DHE_KEX = 1 << 10
OP_PREFER_NO_DHE_KEX = 1 << 35
# The groups of a connection that offers a ticket: the post-quantum ones listed first (what a
# server that refuses the ticket asks for), one key share only, X25519's 32 bytes ("*").
# "?" skips a group this OpenSSL lacks.
LEAN_GROUPS = (
    b"?X25519MLKEM768:?SecP256r1MLKEM768:?SecP384r1MLKEM1024:*X25519:?secp256r1:?X448:"
    b"?secp384r1:?secp521r1:?ffdhe2048:?ffdhe3072"
)
_SERVER_HELLO = b"SSLv3/TLS read server hello"  # read twice after a HelloRetryRequest
_TICKET = b"SSLv3/TLS read server session ticket"


def session_file(config_dir: Path, url: str) -> Path:
    """Where the ticket for ``url`` is kept."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return config_dir / f"tls-session-{digest}.json"


def trust_identity(url: str, trust: str) -> str:
    """What a kept ticket is bound to: the server and how it was trusted (``pin:FP`` or
    ``ca:DIGEST``)."""
    return hashlib.sha256(f"{url}\0{trust}".encode()).hexdigest()


def session_to_bytes(session: SSL.Session) -> bytes:
    """The DER form of a pyOpenSSL session (``ValueError`` if it cannot be encoded)."""
    size = _lib.i2d_SSL_SESSION(session._session, _ffi.NULL)
    if size <= 0 or size > MAX_SESSION_BYTES:
        raise ValueError(f"cannot encode this TLS session ({size} bytes)")
    buffer = _ffi.new("unsigned char[]", size)
    cursor = _ffi.new("unsigned char **", buffer)
    if _lib.i2d_SSL_SESSION(session._session, cursor) != size:
        raise ValueError("cannot encode this TLS session")
    return bytes(_ffi.buffer(buffer, size))


def session_from_bytes(data: bytes, context: SSL.Context) -> SSL.Session:
    """A session for connections made from ``context``, from its DER form (``ValueError`` if
    the bytes are not a session)."""
    if not data or len(data) > MAX_SESSION_BYTES:
        raise ValueError("not a TLS session")
    source = _ffi.from_buffer(data)
    cursor = _ffi.new("unsigned char **", source)
    pointer = _lib.d2i_SSL_SESSION(
        _ffi.NULL, _ffi.cast("const unsigned char **", cursor), len(data)
    )
    if pointer == _ffi.NULL:
        _lib.ERR_clear_error()
        raise ValueError("not a TLS session")
    session = SSL.Session.__new__(SSL.Session)
    session._session = _ffi.gc(pointer, _lib.SSL_SESSION_free)
    # pyOpenSSL only sets a session on connections of the context it came from
    session._context = context
    return session


def was_resumed(connection: SSL.Connection) -> bool:
    """Whether the handshake of ``connection`` resumed a session (no certificate was sent)."""
    return bool(_lib.SSL_session_reused(connection._ssl))


def negotiated_group(connection: SSL.Connection) -> str | None:
    """The key exchange group of ``connection`` (on a resumption without key exchange, the
    group of the session it resumed), or None."""
    name = _lib.SSL_get0_group_name(connection._ssl)
    return None if name == _ffi.NULL else _ffi.string(name).decode("ascii", "replace")


def is_post_quantum(group: str | None) -> bool:
    """Whether a group name is a post-quantum one (ML-KEM, alone or in a hybrid)."""
    return group is not None and "MLKEM" in group.upper()


def _handshake_finished(connection: SSL.Connection) -> bool:
    return connection.get_finished() is not None and connection.get_peer_finished() is not None


InfoCallback = Callable[[SSL.Connection, int, int], None]


class _Watch:
    """What one connection's handshake did, seen through its info callback."""

    def __init__(self, offered_root: float | None, then: InfoCallback | None) -> None:
        self.offered_root = offered_root  # the chain's start, if a ticket was offered
        self.then = then
        self.server_hellos = 0
        self.tickets = 0

    def __call__(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_CONNECT_LOOP:
            state = connection.get_state_string()
            if state == _SERVER_HELLO:
                self.server_hellos += 1
            elif state == _TICKET:
                self.tickets += 1
        if self.then is not None:
            self.then(connection, where, ret)


class ResumptionSlot:
    """The ticket one trust policy offers to one server, in memory and in its file."""

    def __init__(
        self, path: Path | None, identity: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.identity = identity
        self._clock = clock
        self._kept: bytes | None = None  # the DER session to offer, if any
        self._expires = 0.0  # when the kept ticket stops being offered
        self._root = 0.0  # when the kept ticket's chain had its full handshake
        self._dhe = False  # the server resumes only with a key exchange: offer full shares
        self._spent = False  # the ticket of the file was offered (single use)
        self._latest: SSL.Connection | None = None  # the newest connection, for its ticket
        self._watch: _Watch | None = None
        self.offered = 0
        self.resumed = 0
        self.refused_classical = 0  # full handshakes whose group was not post-quantum

    def load(self) -> None:
        """Read the kept ticket, if its file is present, ours, readable and fresh (blocking: a
        small file read). Anything else leaves the slot empty: a full handshake follows."""
        if self.path is None:
            return
        try:
            raw = osfs.read_small_file(self.path, 4 * MAX_SESSION_BYTES)
        except (OSError, ValueError):
            return
        self._kept = self._parse(raw)

    def _parse(self, raw: bytes) -> bytes | None:
        try:
            record: Any = json.loads(raw)
            if not isinstance(record, dict) or record.get("version") != _FILE_VERSION:
                return None
            if record.get("identity") != self.identity:
                return None
            self._dhe = record.get("dhe") is True
            expires, root = record.get("expires"), record.get("root")
            if not isinstance(expires, (int, float)) or not isinstance(root, (int, float)):
                return None
            now = self._clock()
            if expires <= now or root > now or root + CHAIN_SECONDS <= now:
                return None
            session = base64.b64decode(str(record.get("session", "")), validate=True)
        except ValueError:
            return None
        if not 0 < len(session) <= MAX_SESSION_BYTES:
            return None
        self._expires, self._root = float(expires), float(root)
        return session

    def prepare(self, connection: SSL.Connection, then: InfoCallback | None = None) -> None:
        """Offer the ticket to a connection about to shake hands (once: tickets are single
        use), and watch it for a newer one. ``then`` is the connection's own info callback,
        called after the slot's. Never raises: a ticket that cannot be used means a full
        handshake."""
        self._take_ticket()
        offered_root = None
        if self._kept is not None and self._fresh():
            try:
                connection.set_session(session_from_bytes(self._kept, connection.get_context()))
            except (ValueError, SSL.Error):
                pass
            else:
                offered_root = self._root
                self._lean(connection)
                self.offered += 1
            self._kept = None
            self._spent = True
        self._watch = _Watch(offered_root, then)
        connection.set_info_callback(self._watch)
        self._latest = connection

    def _fresh(self) -> bool:
        now = self._clock()
        return self._expires > now and self._root + CHAIN_SECONDS > now

    def _lean(self, connection: SSL.Connection) -> None:
        """Allow a resumption without key exchange; send only an X25519 share unless this
        server resumes only with a key exchange (then a full set avoids its retry request)."""
        _lib.SSL_set_options(connection._ssl, OP_ALLOW_NO_DHE_KEX)
        if not self._dhe and _lib.SSL_set1_curves_list(connection._ssl, LEAN_GROUPS) != 1:
            _lib.ERR_clear_error()  # an OpenSSL without this syntax: its default shares

    def _take_ticket(self) -> None:
        """Keep the ticket of the newest connection whose handshake finished, if it is rooted
        in a post-quantum handshake and the server sent one."""
        connection, watch = self._latest, self._watch
        if connection is None or watch is None or not _handshake_finished(connection):
            return
        self._latest = self._watch = None
        now = self._clock()
        if was_resumed(connection):
            self.resumed += 1
            if watch.server_hellos > 1:  # resumed only after asking for another key share
                self._dhe = True
            root = watch.offered_root
        elif is_post_quantum(negotiated_group(connection)):
            root = now
            self._dhe = False  # a new chain asks the server again (it may have changed)
        else:
            self.refused_classical += 1
            return
        session = connection.get_session()
        if root is None or watch.tickets == 0 or session is None:
            return
        try:
            self._kept = session_to_bytes(session)
        except ValueError:
            return
        self._root = root
        self._expires = min(now + KEEP_SECONDS, root + CHAIN_SECONDS)

    def record(self) -> bytes | None:
        """The file's bytes for the ticket held now, or None (nothing to keep)."""
        self._take_ticket()
        if self._kept is None or not self._fresh():
            return None
        return json.dumps({
            "version": _FILE_VERSION,
            "identity": self.identity,
            "expires": self._expires,
            "root": self._root,
            "dhe": self._dhe,
            "session": base64.b64encode(self._kept).decode("ascii"),
        }).encode()

    def save(self) -> None:
        """Keep the newest ticket in the file, or remove a file whose ticket was offered
        (blocking: a small durable write). A failure only costs the next run a full
        handshake, so it is not an error."""
        record = self.record()
        if self.path is None:
            return
        try:
            if record is not None:
                write_private_file(self.path, record)
            elif self._spent:
                osfs.unlink(self.path, missing_ok=True)
        except OSError:
            pass

    def forget(self) -> None:
        """Drop the ticket here and on disk (sign-out)."""
        self._kept = None
        self._latest = self._watch = None
        if self.path is not None:
            osfs.unlink(self.path, missing_ok=True)
