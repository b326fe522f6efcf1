"""The client's bandwidth limit (``--bwlimit``) applied to the bytes as they move.

Uploads: :class:`PacedBytesProducer` writes a request body in slices of 64 KiB, each when the
shared :class:`~smartsyncd.core.pacing.Pacer` says it may leave (a timer on the reactor, never a
sleep). Downloads: :func:`paced_content` reads a response body and, when the bytes read so far
are ahead of the budget, pauses reading the connection until they are paid for, so TCP's flow
control slows the sender. One pacer per server connection pool covers both directions.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from smartsyncd.client.bodyproducer import Body, BytesProducer
from smartsyncd.core.pacing import Pacer

SLICE_BYTES = 64 * 1024


class PacedBytesProducer(BytesProducer):
    """Produce ``body`` in slices of ``slice_bytes``, each at the time ``pacer`` books for it,
    and honour the consumer's pause/resume (its buffer is full) as well."""

    def __init__(
        self, body: Body, pacer: Pacer, clock: IReactorTime, slice_bytes: int = SLICE_BYTES
    ) -> None:
        super().__init__(body, slice_bytes)
        self._pacer = pacer
        self._clock = clock
        self._start_at: float | None = None  # the booked start of the next slice
        self._timer: IDelayedCall | None = None

    def _write(self) -> None:
        if self._writing:  # resumed from inside our own write(): the running loop goes on
            return
        self._writing = True
        try:
            while self._consumer is not None and not (self._paused or self._stopped):
                if not self._body.left:
                    self._finish()
                    return
                n = min(self._piece, self._body.left)
                now = self._clock.seconds()
                if self._start_at is None:
                    self._start_at = self._pacer.reserve(n, now)
                if not self._pacer.due(self._start_at, now):
                    if self._timer is None:
                        self._timer = self._clock.callLater(self._start_at - now, self._due)
                    return
                self._start_at = None
                self._consumer.write(self._body.take(n))
        finally:
            self._writing = False

    def _due(self) -> None:
        self._timer = None
        self._write()

    def _finish(self) -> None:
        done, self._done = self._done, None
        self._release()
        if done is not None:
            done.callback(None)

    def _release(self) -> None:
        super()._release()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _Pausable(TypingProtocol):
    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class _PacedCollector(Protocol):
    """Collect a response body, pausing the connection while ahead of the pacer."""

    def __init__(self, pacer: Pacer, clock: IReactorTime, finished: Deferred[bytes]) -> None:
        self._pacer = pacer
        self._clock = clock
        self._finished: Deferred[bytes] | None = finished
        self._parts: list[bytes] = []
        self._timer: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)
        wait = self._pacer.charge(len(data), self._clock.seconds())
        if wait and self._timer is None and self.transport is not None:
            transport: _Pausable = self.transport  # type: ignore[assignment]
            transport.pauseProducing()
            self._timer = self._clock.callLater(wait, self._resume, transport)

    def _resume(self, transport: _Pausable) -> None:
        self._timer = None
        transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()  # the body is complete: nothing left to pause
        self._timer = None
        finished, self._finished = self._finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            body, self._parts = b"".join(self._parts), []
            finished.callback(body)
        else:
            finished.errback(reason)


class _DeliversBody(TypingProtocol):
    def deliverBody(self, protocol: IProtocol) -> None: ...  # noqa: N802 - Twisted's name


def paced_content(response: _DeliversBody, pacer: Pacer, clock: IReactorTime) -> Deferred[bytes]:
    """The whole body of ``response``, read no faster than ``pacer`` allows."""
    finished: Deferred[bytes] = Deferred()
    response.deliverBody(_PacedCollector(pacer, clock, finished))
    return finished
