"""Fewer bytes per small sync (issue 15): request headers on kept-alive connections (the real
Agent, pool and Site over in-memory ``iosim`` connections; client/leanagent.py)."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from smartsyncd.client.leanagent import LeanPool
from smartsyncd.client.transport import USER_AGENT


class MemoryEndpoints:
    """Agent's endpoints, each connection an in-memory pair with ``site`` (no reactor)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.pumps: list[iosim.IOPump] = []

    def endpointForURI(self, uri: object) -> MemoryEndpoints:  # noqa: N802 - Twisted's name
        return self

    def connect(self, factory: Any) -> Deferred[Any]:
        client = factory.buildProtocol(None)
        server = self.site.buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             client, iosim.FakeTransport(client, isServer=False), greet=False)
        self.pumps.append(pump)
        return succeed(client)

    def settle(self, d: Deferred[Any]) -> Any:
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        for _ in range(50):
            if outcome:
                break
            for pump in self.pumps:
                pump.flush()
        assert outcome, "no answer"
        return outcome[0]


class Recorder(Resource):
    """Answers every request; records (connection, its headers) of each."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, dict[bytes, list[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        channel: HTTPChannel = request.channel
        headers = {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((id(channel), headers))
        return b"{}"


def test_user_agent_once_per_connection_and_one_accept_encoding() -> None:
    clock = Clock()
    recorder = Recorder()
    endpoints = MemoryEndpoints(Site(recorder, reactor=clock))
    pool = LeanPool(clock, persistent=True)
    pool.maxPersistentPerHost = 1
    pool.retryAutomatically = False  # as the transport's
    client = treq.client.HTTPClient(Agent.usingEndpointFactory(clock, endpoints, pool=pool))
    sent = {b"User-Agent": [USER_AGENT], b"Accept-Encoding": [b"zstd"]}

    def get() -> bytes:
        response = endpoints.settle(client.get("http://sync.example/x", headers=sent))
        body: bytes = endpoints.settle(response.content())
        return body

    for _ in range(3):  # one after the other: the same kept-alive connection
        assert get() == b"{}"
    endpoints.settle(pool.closeCachedConnections())
    assert get() == b"{}"  # a new connection introduces itself
    connections = [conn for conn, _ in recorder.seen]
    assert connections[0] == connections[1] == connections[2] != connections[3]
    agents = [headers.get(b"user-agent") for _, headers in recorder.seen]
    assert agents == [[USER_AGENT], None, None, [USER_AGENT]]
    # treq's decoder adds gzip to the client's zstd: only the client's own value is sent
    assert all(headers[b"accept-encoding"] == [b"zstd"] for _, headers in recorder.seen)
    assert all(b"accept" not in headers for _, headers in recorder.seen)

