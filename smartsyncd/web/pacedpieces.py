"""An answer already read into pieces, written one piece at a time as the connection takes it
(the span answer of a chunk fetch, web/pull.py; issue 15, the loopback download).

Writing every piece of an 8 MiB answer at once encrypts all of it in one reactor turn and parks
the ciphertext in Twisted's send buffer, which ``FileDescriptor.doWrite`` then joins into one
8 MiB string before sending it: a second copy of the answer, on the reactor. As a push producer
registered on the request, the next piece is written only when the connection asks for more,
so the TLS layer hands most of it straight to the socket and at most about one piece of
ciphertext waits in the daemon. A client that leaves stops the writing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer


@implementer(IPushProducer)
class PiecesProducer:
    """Writes ``pieces`` to ``request`` while the connection is not paused; ``done`` fires
    (with None) when all are written or the client has gone."""

    def __init__(self, request: Request, pieces: Iterable[bytes]) -> None:
        self._request = request
        self._pieces = deque(pieces)
        self._paused = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._request.notifyFinish().addErrback(self._gone)
        self._request.registerProducer(self, True)
        self.resumeProducing()
        return self.done

    def resumeProducing(self) -> None:
        self._paused = False
        while self._pieces and not self._paused:
            self._request.write(self._pieces.popleft())
        if not self._pieces:
            self._finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._pieces.clear()
        self._finish()

    def _gone(self, _reason: Failure) -> None:
        self.stopProducing()

    def _finish(self) -> None:
        if self.done.called:
            return
        if self._request.channel is not None:  # None once the connection is lost
            self._request.unregisterProducer()
        self.done.callback(None)


async def write_pieces(request: Request, pieces: Iterable[bytes]) -> None:
    """Write ``pieces`` to ``request`` as the connection takes them (module docstring)."""
    await PiecesProducer(request, pieces).start()
