"""A request body producer that writes an in-memory body (one ``bytes`` or a list of pieces)
in large pieces.

treq turns ``bytes`` into a ``FileBodyProducer``, which a cooperator feeds to the connection
64 KiB per reactor turn. For an upload of several MiB that is hundreds of turns, each paying the
HTTP client's and the TLS layer's Python overhead. This producer writes 1 MiB at a time for as
long as the transport accepts it (one TLS ``SSL_write`` encrypts the whole piece in C), and stops
when the transport pauses it (its buffer is full), resuming when it drains.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import TaskStopped
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

PIECE_BYTES = 1 << 20

# A request body: one ``bytes``, or pieces sent in order (a chunk upload's body: one view of a
# reused buffer, ``BodyBuffers``), never joined into a new buffer here.
Body = bytes | Sequence[bytes | memoryview]


def body_length(body: Body) -> int:
    """The bytes ``body`` sends."""
    return len(body) if isinstance(body, bytes) else sum(map(len, body))


def joined(body: Body) -> bytes:
    """``body`` as one ``bytes`` (for a body small enough to hand to treq whole)."""
    return body if isinstance(body, bytes) else b"".join(body)


class BodyCursor:
    """Reads a ``Body`` front to back in pieces of a given size (``take``)."""

    def __init__(self, body: Body) -> None:
        self._pieces: Sequence[bytes | memoryview] = (body,) if isinstance(body, bytes) else body
        self._index = 0
        self._offset = 0
        self.left = body_length(body)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end): pieces gathered into one, a large one cut."""
        parts: list[bytes | memoryview] = []
        want = min(n, self.left)
        self.left -= want
        while want:
            piece = self._pieces[self._index]
            available = len(piece) - self._offset
            if available == 0:
                self._index, self._offset = self._index + 1, 0
                continue
            if self._offset == 0 and available <= want and isinstance(piece, bytes):
                parts.append(piece)
            else:
                parts.append(memoryview(piece)[self._offset : self._offset + want])
            step = min(available, want)
            want -= step
            if step == available:
                self._index, self._offset = self._index + 1, 0
            else:
                self._offset += step
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def release(self) -> None:
        self._pieces, self.left = (), 0


@implementer(IBodyProducer)
class BytesProducer:
    """Produce ``body`` to a consumer in pieces of ``piece`` bytes, honouring pause/resume."""

    def __init__(self, body: Body, piece: int = PIECE_BYTES) -> None:
        self._body = BodyCursor(body)
        self._piece = piece
        self._paused = False
        self._stopped = False
        self._writing = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self.length = self._body.left

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
            while consumer is not None and not (self._paused or self._stopped) and body.left:
                # write() may pause us (transport buffer full) before it returns
                consumer.write(body.take(piece))
        finally:
            self._writing = False
        if not body.left and not self._stopped and self._done is not None:
            done, self._done = self._done, None
            self._release()
            done.callback(None)

    def _release(self) -> None:
        # twisted.web's request objects keep this producer in reference cycles that only the
        # cyclic collector frees, rarely: holding the body here kept every 16 MiB request body
        # of an upload alive (2.4 GB of client memory for a 2 GiB file; bench/RESULTS.md)
        self._body.release()
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


class BodyBuffers:
    """Buffers for large chunk upload bodies, reused from one request to the next.

    A body of several MiB joined afresh for every request is a new ``mmap`` (over the 4 MiB
    threshold of runtime/malloctune.py): about 2,000 page faults at ~3 us each per 8 MiB
    request. Sending the records' pieces unjoined avoids those but keeps every chunk's own
    buffer alive until its request is answered, and the thread heaps they come from grew with
    the upload (a 20 GiB upload's client peak: 229 MB, against 175 MB joined; bench/RESULTS.md).
    A few buffers, faulted in once and refilled, cost neither: at most ``keep`` are kept, and
    none once no body is out. ``take`` may run in a thread, ``give`` anywhere.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[bytearray] = []
        self._out = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes, to ``give`` back when its request is done."""
        with self._lock:
            self._out += 1
            for i, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(i)
        return bytearray(-(-size // PIECE_BYTES) * PIECE_BYTES)  # whole MiB: reused more often

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            self._out -= 1
            if self._out == 0:
                self._free.clear()  # nothing out: no memory kept between uploads
            elif len(self._free) < self._keep:
                self._free.append(buffer)

    @property
    def kept(self) -> int:
        return len(self._free)


def fill(buffer: bytearray, pieces: Sequence[bytes]) -> memoryview:
    """Copy ``pieces`` into ``buffer`` end to end; the view of what they filled."""
    view = memoryview(buffer)
    pos = 0
    for piece in pieces:
        view[pos : pos + len(piece)] = piece
        pos += len(piece)
    return view[:pos]
