"""TLS session resumption between runs of the command (issue 15): a short handshake instead of
a full one when the same user syncs the same server again.

The daemon issues TLS 1.3 session tickets (``service/tls.py``). A :class:`ResumptionSlot`
belongs to one trust policy for one server: it offers the ticket it holds to each new
connection, takes the newest ticket from the connections it saw, and keeps it in a file beside
the settings (``tls-session-<hash of the server URL>.json``, 0600, written atomically).

What makes a kept ticket safe to offer:

- it is stored with the *trust identity* it was made under (the server URL and the pinned
  fingerprint, or the CA file and a digest of its certificates), and a ticket kept under any
  other identity is ignored: a resumed handshake skips certificate checks, so a ticket made
  before a re-pin must never be offered after it;
- it is kept no longer than ``KEEP_SECONDS`` (the daemon's ticket lifetime), and OpenSSL
  itself does not offer a ticket older than the lifetime the server stated;
- the pinned policy checks the certificate the resumed session carries against the pin
  anyway (``trust.py``);
- a damaged, foreign or stale file, or a ticket the server no longer accepts (restarted,
  certificate reloaded, another daemon behind the balancer) costs only a full handshake.

The ticket lets its holder speak as this server to this laptop until it expires, so it is kept
only where the session token itself is kept on disk: a user who keeps the token in the OS
keychain gets full handshakes. ``smartsync logout`` removes the file.

pyOpenSSL has no public (de)serialisation of sessions; ``i2d_SSL_SESSION``/``d2i_SSL_SESSION``
are called through its cffi bindings (``OpenSSL._util``), with size limits on both sides.
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
MAX_SESSION_BYTES = 16 * 1024  # a session with a certificate is about 0.8 KB
_FILE_VERSION = 1


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


def _handshake_finished(connection: SSL.Connection) -> bool:
    return connection.get_finished() is not None and connection.get_peer_finished() is not None


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
        self._latest: SSL.Connection | None = None  # the newest connection, for its ticket
        self.offered = 0
        self.resumed = 0

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
            expires = record.get("expires")
            if not isinstance(expires, (int, float)) or expires <= self._clock():
                return None
            session = base64.b64decode(str(record.get("session", "")), validate=True)
        except ValueError:
            return None
        if not 0 < len(session) <= MAX_SESSION_BYTES:
            return None
        self._expires = float(expires)
        return session

    def prepare(self, connection: SSL.Connection) -> None:
        """Offer the ticket to a connection about to shake hands, and watch it for a newer
        one. Never raises: a ticket that cannot be used means a full handshake."""
        self._take_ticket()
        self._latest = connection
        if self._kept is None or self._expires <= self._clock():
            return
        try:
            connection.set_session(session_from_bytes(self._kept, connection.get_context()))
        except (ValueError, SSL.Error):
            self._kept = None
            return
        self.offered += 1

    def _take_ticket(self) -> None:
        """Keep the ticket of the newest connection whose handshake finished."""
        connection = self._latest
        if connection is None or not _handshake_finished(connection):
            return
        if was_resumed(connection):
            self.resumed += 1
        session = connection.get_session()
        self._latest = None
        if session is None:
            return
        try:
            self._kept = session_to_bytes(session)
        except ValueError:
            return
        self._expires = self._clock() + KEEP_SECONDS

    def record(self) -> bytes | None:
        """The file's bytes for the ticket held now, or None (nothing to keep)."""
        self._take_ticket()
        if self._kept is None or self._expires <= self._clock():
            return None
        return json.dumps({
            "version": _FILE_VERSION,
            "identity": self.identity,
            "expires": self._expires,
            "session": base64.b64encode(self._kept).decode("ascii"),
        }).encode()

    def save(self) -> None:
        """Keep the newest ticket in the file (blocking: a small durable write). A failure to
        write only costs the next run a full handshake, so it is not an error."""
        record = self.record()
        if self.path is None or record is None:
            return
        try:
            write_private_file(self.path, record)
        except OSError:
            pass

    def forget(self) -> None:
        """Drop the ticket here and on disk (sign-out)."""
        self._kept = None
        self._latest = None
        if self.path is not None:
            osfs.unlink(self.path, missing_ok=True)
