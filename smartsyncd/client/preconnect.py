"""The command's first TCP connection, opened while its modules still import (issue 15).

``smartsync clone`` or ``sync`` spends about 0.2 s importing Twisted, OpenSSL and the sync
engine before its first request, and then a round trip on the TCP handshake; the server's
address is known from the command line or the copy's marker before any of that.
``cli/startup.py`` calls :func:`start` with it: a thread looks the name up and connects
meanwhile (the socket calls release the GIL, so the imports go on). The first HTTPS
connection to that host and port takes the socket (``transport.PreconnectedEndpoint``) and
runs TLS over it exactly as over a fresh one: same policy, pinning and session resumption.
A failed attempt is not an error: the connection is then opened as usual (and reports its
own error). One not taken (the command failed first, or went through a proxy) is closed by
:func:`discard_all`.

This module imports only the standard library's light parts: it runs before the rest.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

CONNECT_TIMEOUT = 15.0  # then the usual connection is tried (with its own timeout)

Connect = Callable[[tuple[str, int], float], socket.socket]

_pending: dict[tuple[str, int], list[Preconnect]] = {}

class Preconnect:
    """One TCP connection being opened in a thread; :meth:`take` hands it over once."""

    def __init__(self, host: str, port: int, *, timeout: float = CONNECT_TIMEOUT,
                 connect: Connect = socket.create_connection) -> None:
        self.host = host
        self.port = port
        self._timeout = timeout
        self._connect = connect
        self._lock = threading.Lock()
        self._done = False
        self._dropped = False
        self._sock: socket.socket | None = None
        self._notify: Callable[[], object] | None = None
        self._thread = threading.Thread(target=self._run, name="smartsync-preconnect",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            sock: socket.socket | None = self._connect((self.host, self.port), self._timeout)
        except OSError:
            sock = None  # the usual connection is tried instead, and says what is wrong
        with self._lock:
            self._done = True
            if self._dropped:
                if sock is not None:
                    sock.close()
                return
            self._sock = sock
            notify = self._notify
        if notify is not None:
            notify()

    def take(self, reactor: Any) -> Deferred[socket.socket | None]:
        """The connected socket once the attempt ends (None if it failed or was taken),
        waited for without blocking the reactor."""
        from twisted.internet.defer import Deferred, succeed

        with self._lock:
            if not self._done:
                waiting: Deferred[socket.socket | None] = Deferred()
                self._notify = lambda: reactor.callFromThread(self._hand, waiting)
                return waiting
        return succeed(self._pop())

    def _hand(self, waiting: Deferred[socket.socket | None]) -> None:
        sock = self._pop()
        if waiting.called:  # cancelled while connecting: nobody takes it
            if sock is not None:
                sock.close()
            return
        waiting.callback(sock)

    def _pop(self) -> socket.socket | None:
        with self._lock:
            sock, self._sock = self._sock, None
            return sock

    def discard(self) -> None:
        """Close the connection unless taken (now, or when the attempt ends)."""
        with self._lock:
            self._dropped = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the attempt to end (tests)."""
        self._thread.join(timeout)


def start(host: str, port: int, count: int = 1, *,
          connect: Connect = socket.create_connection) -> list[Preconnect]:
    """Begin ``count`` connections to ``host:port`` for the first connections that ask."""
    began = [Preconnect(host, port, connect=connect) for _ in range(count)]
    _pending.setdefault((host, port), []).extend(began)
    return began


def claim(host: str, port: int) -> Preconnect | None:
    """A connection begun for ``host:port``, if one is left; each is handed out once."""
    began = _pending.get((host, port))
    if not began:
        return None
    early = began.pop(0)
    if not began:
        del _pending[(host, port)]
    return early


def discard_all() -> None:
    """Close every connection begun and not claimed (the command is ending)."""
    while _pending:
        _, began = _pending.popitem()
        for early in began:
            early.discard()


def pending(host: str, port: int) -> int:
    """How many connections begun for ``host:port`` are still unclaimed."""
    return len(_pending.get((host, port), ()))
