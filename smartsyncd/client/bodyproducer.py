"""A request body producer that writes an in-memory body in large pieces.

treq turns ``bytes`` into a ``FileBodyProducer``, which a cooperator feeds to the connection
64 KiB per reactor turn. For an upload of several MiB that is hundreds of turns, each paying the
HTTP client's and the TLS layer's Python overhead. This producer writes 1 MiB at a time for as
long as the transport accepts it (one TLS ``SSL_write`` encrypts the whole piece in C), and stops
when the transport pauses it (its buffer is full), resuming when it drains.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import TaskStopped
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

PIECE_BYTES = 1 << 20


@implementer(IBodyProducer)
class BytesProducer:
    """Produce ``body`` to a consumer in pieces of ``piece`` bytes, honouring pause/resume."""

    def __init__(self, body: bytes, piece: int = PIECE_BYTES) -> None:
        self._body = memoryview(body)
        self._piece = piece
        self._pos = 0
        self._paused = False
        self._stopped = False
        self._writing = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self._write()
        return done

    def _write(self) -> None:
        if self._writing:  # resumed from inside our own write(): the running loop goes on
            return
        body, piece, consumer = self._body, self._piece, self._consumer
        self._writing = True
        try:
            while (
                consumer is not None and not (self._paused or self._stopped) and self._pos < len(body)
            ):
                start = self._pos
                self._pos = min(start + piece, len(body))
                # write() may pause us (transport buffer full) before it returns
                consumer.write(body[start : self._pos].tobytes())
        finally:
            self._writing = False
        if self._pos >= len(body) and not self._stopped and self._done is not None:
            done, self._done = self._done, None
            self._release()
            done.callback(None)

    def _release(self) -> None:
        # twisted.web's request objects keep this producer in reference cycles that only the
        # cyclic collector frees, rarely: holding the body here kept every 16 MiB request body
        # of an upload alive (2.4 GB of client memory for a 2 GiB file; bench/RESULTS.md)
        self._body = memoryview(b"")
        self._consumer = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._write()

    def stopProducing(self) -> None:
        self._stopped = True
        self._release()
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(Failure(TaskStopped()))
