"""A span answer written piece by piece as the connection takes it (web/pacedpieces.py, issue 15).

A real ``HTTPChannel`` and ``Request`` over an in-memory transport that says "full" the way a
TCP transport does (pausing its producer, the channel, inside ``write``): the next piece waits
for the channel's resume, every byte arrives in order, and a client that leaves stops the
writing."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from smartsyncd.web.pacedpieces import PiecesProducer

PIECES = [b"a" * 1000, b"b" * 1000, b"c" * 1000]


class FullTransport(StringTransport):
    """Pauses its producer on every write while ``full`` (a socket whose buffer is full)."""

    full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full and self.producer is not None:
            self.producer.pauseProducing()


def answer() -> tuple[FullTransport, http.HTTPChannel, server.Request]:
    transport = FullTransport()
    channel = http.HTTPChannel()
    channel.site = server.Site(Resource())  # what a Site's protocol has (the request reads it)
    channel.makeConnection(transport)
    request = server.Request(channel, False)
    request.method, request.clientproto, request.uri = b"POST", b"HTTP/1.1", b"/"
    request.setHeader(b"content-length", b"%d" % sum(len(p) for p in PIECES))
    return transport, channel, request


def body(transport: FullTransport) -> bytes:
    return transport.value().partition(b"\r\n\r\n")[2]


def test_the_next_piece_waits_until_the_connection_has_room() -> None:
    transport, channel, request = answer()
    transport.full = True
    done = PiecesProducer(request, PIECES).start()
    assert body(transport) == PIECES[0]
    assert not done.called and request.producer is not None
    transport.full = False
    channel.resumeProducing()  # what the transport does once its buffer has drained
    assert body(transport) == b"".join(PIECES)
    assert done.called and request.producer is None


def test_an_open_connection_takes_every_piece_at_once() -> None:
    transport, _, request = answer()
    done = PiecesProducer(request, PIECES).start()
    assert body(transport) == b"".join(PIECES) and done.called
    assert request.producer is None


def test_a_client_that_leaves_stops_the_writing() -> None:
    transport, channel, request = answer()
    transport.full = True
    done = PiecesProducer(request, PIECES).start()
    request.connectionLost(Failure(ConnectionDone()))
    assert done.called
    channel.resumeProducing()
    assert body(transport) == PIECES[0]
