"""Helpers of the web unit tests: the real Site of ``make_site`` over an in-memory transport.

No reactor runs. The store is a real SQLite ``SqlServerStore`` on synchronous thread pools
(smartsyncd/testing/syncpool.py), the CPU pool a function that calls at once, time a ``Clock``.
treq's HTTP client talks to the real Site (request factory, guarded channel, streamed chunk
uploads) through ``iosim`` pumps, as ``treq.testing.StubTreq`` does for a bare resource; a
request is answered when the pumps and the Clock's due calls are flushed, which ``Env.settle``
does a bounded number of rounds (never a wall-clock wait). The fixture is in conftest.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from smartsyncd.core import chunking, chunkstream, manifest
from smartsyncd.core.model import ChunkRef
from smartsyncd.testing.syncpool import run_sync
from smartsyncd.web.app import SyncAPI
from smartsyncd.web.limits import Limits
from smartsyncd.web.notify import ChangeNotifier

START = 1_795_000_000.0  # 2026-11-18
PASSWORD = "pw-" + "x" * 8
LIMITS = Limits(json_body=2_000_000, small_json=100_000, chunk_body=600_000)
ROUNDS = 200  # pump + clock rounds before a request counts as stuck


def in_memory(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test to its end with no reactor: everything it awaits must fire
    while the test drives the pumps and the Clock (``Env.settle``)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        run_sync(test(*args, **kwargs))

    return run


@implementer(IBodyProducer)
class _Body:
    """A request body written at once (treq's default producer needs a running reactor)."""

    def __init__(self, data: bytes | str) -> None:
        self.body = data.encode("utf-8") if isinstance(data, str) else data
        self.length = len(self.body)

    def startProducing(self, consumer: Any) -> Deferred:  # noqa: N802
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:  # noqa: N802
        pass

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass


def _body(data: Any) -> IBodyProducer:
    # the client library hands large bodies over as its own (synchronous) producer
    return data if IBodyProducer.providedBy(data) else _Body(data)  # type: ignore[no-any-return]


class SiteClient:
    """treq over in-memory connections to ``site`` (one connection per request)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._agent = RequestTraversalAgent(Resource())
        self._agent._serverFactory = site  # serve with the real Site, not a bare one
        self.http = HTTPClient(agent=self._agent, data_to_body_producer=_body)

    def request(self, method: str, url: str, **kw: Any) -> Deferred:
        return self.http.request(method, url, **kw)

    def flush(self) -> None:
        self._agent.flush()

    def pump(self) -> bool:
        """Move the bytes of every open connection until none move; whether any did."""
        moved = any([pump.flush() for pump in list(self._agent._pumps)])
        self._agent.flush()  # and forget the connections both sides closed
        return moved


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def observe(d: Deferred) -> list[Any]:
    """A list that gets ``d``'s result once it has one (the result still flows on)."""
    seen: list[Any] = []

    def record(result: Any) -> Any:
        seen.append(result)
        return result

    d.addBoth(record)
    return seen


@dataclass
class Env:
    api: SyncAPI
    stub: SiteClient
    clock: Clock
    notifier: ChangeNotifier
    store: Any
    alpha: int
    offloaded: list[str] = field(default_factory=list)  # functions run on the "CPU pool"

    def start(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.stub.request(method, "https://sync.example" + path, headers=headers, data=data)

    def pump(self) -> None:
        """One round: move the bytes both ways, then run the Clock's calls that are due."""
        self.stub.flush()
        self.clock.advance(0)
        self.stub.flush()

    async def settle(self, d: Deferred) -> Any:
        """Pump until ``d`` has a result (a bounded number of rounds, no wall clock)."""
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        for _ in range(ROUNDS):
            if outcome:
                break
            self.pump()
        assert outcome, "request not answered (waiting for the Clock, or a real thread?)"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    async def reply(self, d: Deferred) -> Reply:
        response = await self.settle(d)
        body = await self.settle(response.content())
        return Reply(response.code, response.headers, body)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        return await self.reply(self.start(method, path, **kw))

    async def login(self, user: str, password: str = "pw-" + "x" * 8) -> str:
        r = await self.call("POST", "/v1/login", body={"user": user, "password": password})
        assert r.status == 200, r.body
        return str(r.json()["token"])

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        for _ in range(ROUNDS):
            if condition():
                return
            self.pump()
        assert condition(), "condition not reached"


def chunk_of(data: bytes) -> tuple[ChunkRef, tuple[str, int, int, bytes]]:
    h = chunking.chunk_hash(data)
    codec, payload = chunkstream.compress_chunk(data)
    return ChunkRef(h, len(data)), (h, codec, len(data), payload)


def put(path: str, chunks: list[ChunkRef], base: int | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "kind": "put",
        "base": base,
        "content": manifest.content_id(chunks),
        "size": sum(c.size for c in chunks),
        "manifest": manifest.chunks_to_json(chunks),
    }


async def upload(env: Env, token: str, *datas: bytes) -> list[ChunkRef]:
    pairs = [chunk_of(d) for d in datas]
    r = await env.call(
        "POST", "/v1/engagements/alpha/chunks", token=token, data=chunkstream.encode_records(p[1] for p in pairs)
    )
    assert r.status == 200, r.body
    return [p[0] for p in pairs]
