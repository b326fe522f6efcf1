"""``client/bodyread.read_body``: a response body as treq delivers it, in pieces, joined on a
pool thread when it is large (a chunk fetch answer) and in place when it is small; a body cut
by a lost connection fails as treq's ``content()`` would. ``read_pieces`` keeps the pieces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from smartsyncd.client.bodyread import read_body, read_pieces


class Response:
    """What treq's ``collect`` needs of a response: a length and ``deliverBody``."""

    def __init__(self, pieces: list[bytes], end: BaseException) -> None:
        self.pieces, self.end = pieces, end
        self.length = sum(len(p) for p in pieces)

    def deliverBody(self, protocol: Any) -> None:
        for piece in self.pieces:
            protocol.dataReceived(piece)
        protocol.connectionLost(Failure(self.end))


def recording(calls: list[Callable[..., Any]]) -> Callable[..., Deferred[Any]]:
    def run(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        calls.append(fn)
        d: Deferred[Any] = Deferred()
        d.callback(fn(*args))
        return d
    return run


def result(d: Any) -> Any:
    out: list[Any] = []
    ensureDeferred(d).addBoth(out.append)
    assert out, "read_body did not finish"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_a_large_body_is_joined_off_the_reactor() -> None:
    pieces = [bytes([i % 256]) * 1000 for i in range(300)]
    calls: list[Callable[..., Any]] = []
    body = result(read_body(Response(pieces, ResponseDone()), recording(calls), 100_000))
    assert body == b"".join(pieces)
    assert len(calls) == 1  # the join went through the thread hop


def test_a_small_body_is_joined_in_place() -> None:
    pieces = [b"abc", b"def"]
    calls: list[Callable[..., Any]] = []
    assert result(read_body(Response(pieces, ResponseDone()), recording(calls), 100_000)) == b"abcdef"
    assert calls == []


def test_a_cut_body_fails() -> None:
    calls: list[Callable[..., Any]] = []
    with pytest.raises(ConnectionLost):
        result(read_body(Response([b"x" * 10], ConnectionLost()), recording(calls), 1))


def test_read_pieces_keeps_the_pieces_as_they_came() -> None:
    pieces = [bytes([i]) * (1000 + i) for i in range(5)]
    got = result(read_pieces(Response(pieces, ResponseDone())))
    assert got == pieces and all(a is b for a, b in zip(got, pieces, strict=True))
    with pytest.raises(ConnectionLost):
        result(read_pieces(Response([b"x" * 10], ConnectionLost())))
