"""client/warmup.py: connections opened into a pool before any request, through the two
private calls of Twisted's ``HTTPConnectionPool`` it uses (these tests break if Twisted changes
them), filed under the key ``Agent`` asks for, and a failed one left out. No reactor."""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.client import URI, Agent, HTTPConnectionPool

from smartsyncd.client import preconnect, warmup

URL = b"https://sync.example:8443"


class _Endpoint:
    """Connects each protocol to an in-memory transport (or fails), counting attempts."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.connects = 0

    def connect(self, factory: Factory) -> Deferred[Any]:
        self.connects += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        return succeed(protocol)


class _Endpoints:
    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        self.asked: list[URI] = []

    def endpointForURI(self, uri: URI) -> _Endpoint:  # noqa: N802 - Twisted's name
        self.asked.append(uri)
        return self.endpoint


def test_twisted_still_has_the_pool_calls_used() -> None:
    new = inspect.signature(HTTPConnectionPool._newConnection)
    put = inspect.signature(HTTPConnectionPool._putConnection)
    assert list(new.parameters) == ["self", "key", "endpoint"]
    assert list(put.parameters) == ["self", "key", "connection"]


def test_agent_asks_the_pool_under_the_key_used() -> None:
    asked: list[object] = []

    class Recording(HTTPConnectionPool):
        def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:  # noqa: N802
            asked.append(key)
            return Deferred()

    agent = Agent.usingEndpointFactory(Clock(), _Endpoints(_Endpoint()),
                                       pool=Recording(Clock()))
    agent.request(b"GET", URL + b"/api/v1/info")
    assert asked == [warmup.pool_key(URI.fromBytes(URL))]


def test_an_opened_connection_is_the_next_request_s_without_a_new_connect() -> None:
    pool = HTTPConnectionPool(Clock())
    endpoint = _Endpoint()
    opened = warmup.open_into(pool, _Endpoints(endpoint), URI.fromBytes(URL), 2)
    assert len(opened) == 2 and all(d.called for d in opened)
    assert endpoint.connects == 2
    key = warmup.pool_key(URI.fromBytes(URL))
    first = pool.getConnection(key, endpoint)
    second = pool.getConnection(key, endpoint)
    assert first.called and second.called
    assert endpoint.connects == 2  # both from the pool
    third = pool.getConnection(key, endpoint)
    assert endpoint.connects == 3 and third.called  # the pool had no more


def test_a_connection_that_fails_is_left_out_quietly() -> None:
    pool = HTTPConnectionPool(Clock())
    endpoint = _Endpoint(refuse=True)
    opened = warmup.open_into(pool, _Endpoints(endpoint), URI.fromBytes(URL), 1)
    results: list[object] = []
    opened[0].addBoth(results.append)
    assert results == [None]  # never a failure for the command to see
    endpoint.refuse = False
    pool.getConnection(warmup.pool_key(URI.fromBytes(URL)), endpoint)
    assert endpoint.connects == 2  # the request connects as usual


def test_only_as_many_as_were_begun_at_the_start() -> None:
    pool = HTTPConnectionPool(Clock())
    endpoints = _Endpoints(_Endpoint())
    assert warmup.open_early(pool, endpoints, URL.decode()) == []
    def unreachable(address: tuple[str, int], timeout: float) -> Any:
        raise OSError("no network in unit tests")

    began = preconnect.start("sync.example", 8443, count=2, connect=unreachable)
    try:
        assert len(warmup.open_early(pool, endpoints, URL.decode())) == 2
        assert [uri.host for uri in endpoints.asked] == [b"sync.example"] * 2
    finally:
        for early in began:
            early.join(10)
        preconnect.discard_all()
