"""The drain of requests in flight (web/inflight.py), with a Clock and real twisted.web
requests on in-memory channels: answered ones leave, the rest are cut when the time runs out,
and every connection is closed after its answer once draining."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, Request

from smartsyncd.web.inflight import InFlight


class _Socket(StringTransport):
    """An in-memory socket that closes when asked (a real one closes once its bytes are sent)."""

    def loseConnection(self) -> None:
        super().loseConnection()
        self.disconnected = True


def request(inflight: InFlight) -> tuple[Request, HTTPChannel, StringTransport]:
    channel = HTTPChannel()
    transport = _Socket()
    channel.makeConnection(transport)
    r = Request(channel)
    channel.requests.append(r)
    inflight.add(r)
    return r, channel, transport


def answer(inflight: InFlight, r: Request) -> None:
    inflight.finished(r)  # what Site.log does (web/metrics.meter_site)
    r.finish()


def test_drain_waits_for_answers_then_returns_nothing_cut() -> None:
    clock, inflight = Clock(), InFlight()
    a, ca, ta = request(inflight)
    b, cb, tb = request(inflight)
    done: Deferred[Any] = Deferred.fromCoroutine(inflight.drain(clock, 30))
    assert inflight.draining and not done.called
    assert ca.persistent is False and cb.persistent is False  # closed after their answers
    assert a.responseHeaders.getRawHeaders(b"connection") == [b"close"]
    answer(inflight, a)
    clock.advance(1)
    assert not done.called
    answer(inflight, b)
    assert ta.disconnected and tb.disconnected  # closed once answered
    assert done.called and done.result == 0


def test_drain_cuts_what_still_runs_when_the_time_is_up() -> None:
    clock, inflight = Clock(), InFlight()
    a, _, transport = request(inflight)
    done: Deferred[Any] = Deferred.fromCoroutine(inflight.drain(clock, 10))
    clock.advance(9.9)
    assert not done.called and not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # its connection is closed: the upload aborts
    clock.advance(0.1)
    assert done.called and done.result == 1


def test_a_request_arriving_while_draining_closes_its_connection() -> None:
    inflight = InFlight()
    inflight.draining = True
    r, channel, _ = request(inflight)
    channel.persistent = True  # as allHeadersReceived would set it
    inflight.finished(r)
    assert channel.persistent is False
    assert inflight.live() == []


def test_refused_and_unsigned_arriving_requests_are_not_waited_for() -> None:
    clock, inflight = Clock(), InFlight()
    refused, _, _ = request(inflight)
    refused.answered_early = True  # type: ignore[attr-defined]  # web/bodies.py LimitedRequest
    arriving, arriving_channel, arriving_socket = request(inflight)
    arriving.authenticated = False  # type: ignore[attr-defined]  # no body, no sign-in yet
    uploading, _, upload_socket = request(inflight)
    uploading.authenticated = True  # type: ignore[attr-defined]  # signed in, body arriving
    assert set(inflight.live()) == {arriving, uploading}
    done: Deferred[Any] = Deferred.fromCoroutine(inflight.drain(clock, 30))
    assert arriving_socket.disconnected  # cut at once
    arriving_channel.connectionLost(Failure(ConnectionDone()))  # what the reactor then does
    assert not upload_socket.disconnected and not done.called
    answer(inflight, uploading)
    assert done.called and done.result == 0
