"""Fewer bytes per small sync (issue 15): request headers on kept-alive connections (the real
Agent, pool and Site over in-memory ``iosim`` connections; client/leanagent.py), and the
daemon's side: a copy report folded into a commit (web/copyreport.py) and the head in a
report's answer (web/workflow.py), on the real Site and store (tests/unit/webkit.py)."""

from __future__ import annotations

import base64
import os
from typing import Any

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from webkit import Env, chunk_of, in_memory, put, upload

from smartsyncd.client.leanagent import LeanPool
from smartsyncd.client.transport import USER_AGENT
from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.web.inlinechunks import INLINE_RAW_BYTES, INLINE_RAW_CAP


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


# -- the daemon: a report folded into a commit, the head in a report's answer -----------------

ALPHA = "/v1/engagements/alpha"
COPY = {"Smartsync-Copy": "copy-1"}
REPORT = {"host": "laptop", "unsynced": 2, "since": "2026-11-18T08:00:00Z"}


async def _signed_in_copy(env: Env) -> str:
    token = await env.login("alice")
    r = await env.call("POST", ALPHA + "/copies", token=token, body={"copy": "copy-1", "host": "laptop"})
    assert r.status == 200, r.body
    return token


@in_memory
async def test_a_commit_records_the_report_it_carries(env: Env) -> None:
    token = await _signed_in_copy(env)
    chunks = await upload(env, token, b"hello")
    body = {"batch": "b1", "changes": [put("a.txt", chunks)], "report": REPORT}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 200, r.body
    assert r.json()["reported"] is True and r.json()["head"] == 1
    [record] = await env.store.list_copies(env.alpha)
    assert (record.copy_id, record.unsynced, record.host) == ("copy-1", 2, "laptop")
    # without its copy named there is nothing to record the report for: not "reported"
    body = {"batch": "b2", "changes": [put("b.txt", chunks)], "report": REPORT}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body)
    assert r.status == 200 and "reported" not in r.json()


@in_memory
async def test_a_bad_folded_report_is_refused_and_nothing_is_committed(env: Env) -> None:
    token = await _signed_in_copy(env)
    chunks = await upload(env, token, b"hello")
    for bad, field in (
        ({**REPORT, "unsynced": -1}, "report.unsynced"),
        ({**REPORT, "since": "yesterday"}, "report.since"),
        ({**REPORT, "key_hash": "XYZ"}, "report.key_hash"),
        ("two", "report"),
    ):
        body = {"batch": "b1", "changes": [put("a.txt", chunks)], "report": bad}
        r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
        assert r.status == 400 and r.json()["field"] == field, r.body
    r = await env.call("GET", ALPHA + "/changes?since=0", token=token)
    assert r.json()["head"] == 0 and r.json()["changes"] == []
    [record] = await env.store.list_copies(env.alpha)
    assert record.unsynced == 0


@in_memory
async def test_a_report_naming_its_place_in_the_log_gets_the_head(env: Env) -> None:
    token = await _signed_in_copy(env)
    path = ALPHA + "/copies/copy-1/report"
    r = await env.call("POST", path, token=token, body=REPORT)
    assert r.status == 200 and "head" not in r.json()  # not asked: the answer as before
    r = await env.call("POST", path, token=token, body={**REPORT, "history": {"seq": 0}})
    assert r.status == 200 and r.json()["head"] == 0
    assert {"store", "generation"} <= set(r.json())
    assert "copy" not in r.json()  # a new client's brief answer: not its own record again
    # a place past the head: the store was restored (as the changes feed says it)
    r = await env.call("POST", path, token=token, body={**REPORT, "history": {"seq": 5}})
    assert r.status == 409 and r.json()["error"] == "history_diverged", r.body


# -- small uploads in the commit (web/inlinechunks.py) -----------------------------------------


def _inline(*datas: bytes, bad: bool = False) -> str:
    records = [chunk_of(d)[1] for d in datas]
    if bad:  # a record whose bytes do not hash to its name
        records[0] = (records[0][0], *chunk_of(datas[0][::-1])[1][1:])
    return base64.b64encode(chunkstream.encode_records(records)).decode("ascii")


async def _head(env: Env, token: str) -> int:
    r = await env.call("GET", ALPHA + "/changes?since=0", token=token)
    return int(r.json()["head"])


@in_memory
async def test_chunks_in_the_commit_are_stored_then_committed(env: Env) -> None:
    token = await _signed_in_copy(env)
    r = await env.call("POST", ALPHA + "/copies/copy-1/report", token=token,
                       body={**REPORT, "history": {"seq": 0}})
    assert r.json()["inline"] == INLINE_RAW_BYTES  # advertised to a client that names its place
    assert r.json()["inline_raw"] == INLINE_RAW_CAP  # ``inline`` counts bytes as sent
    datas = [b"small edit\n" * 10, b"x" * 3000]
    refs = [chunk_of(d)[0] for d in datas]
    body = {"batch": "b1", "changes": [put("a.txt", refs)], "chunks": _inline(*datas),
            "report": {**REPORT, "unsynced": 0}}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 200, r.body
    assert r.json()["results"][0]["status"] == "applied" and r.json()["reported"] is True
    missing = await env.call("POST", ALPHA + "/chunks/missing", token=token,
                             body={"chunks": [c.hash for c in refs]})
    assert missing.json()["missing"] == []


@in_memory
async def test_a_commit_answer_names_the_store_only_when_the_copy_did_not(env: Env) -> None:
    token = await _signed_in_copy(env)
    r = await env.call("POST", ALPHA + "/copies/copy-1/report", token=token,
                       body={**REPORT, "history": {"seq": 0}})
    store, generation = r.json()["store"], r.json()["generation"]
    refs = await upload(env, token, b"first\n")
    body = {"batch": "b1", "changes": [put("a.txt", refs)],
            "history": {"seq": 0, "store": store, "generation": generation}}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 200 and r.json()["head"] == 1, r.body
    assert "store" not in r.json() and "generation" not in r.json()  # it has these
    body = {"batch": "b2", "changes": [put("b.txt", refs)],
            "history": {"seq": 1, "hash": r.json()["head_hash"]}}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 200 and (r.json()["store"], r.json()["generation"]) == (store, generation)


@in_memory
async def test_a_report_naming_the_key_hash_is_told_it_is_kept(env: Env) -> None:
    token = await _signed_in_copy(env)
    path = ALPHA + "/copies/copy-1/report"
    body = {**REPORT, "history": {"seq": 0}}
    r = await env.call("POST", path, token=token, body=body)
    assert r.status == 200 and "keyed" not in r.json()  # not named: not said
    r = await env.call("POST", path, token=token, body={**body, "key_hash": "ab" * 32})
    assert r.status == 200 and r.json()["keyed"] is True  # commits may leave it out


@in_memory
async def test_a_large_chunk_that_encodes_small_rides_in_the_commit(env: Env) -> None:
    # an edit inside a 100 KB chunk: over 32 KiB raw, a few hundred bytes as sent (issue 15)
    token = await _signed_in_copy(env)
    data = b"".join(b"line %d of a long module\n" % i for i in range(4000))
    assert len(data) > INLINE_RAW_BYTES
    ref = chunk_of(data)[0]
    body = {"batch": "b1", "changes": [put("big.py", [ref])], "chunks": _inline(data)}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 200 and r.json()["results"][0]["status"] == "applied", r.body
    assert await env.store.missing_chunks(env.alpha, [ref.hash]) == []


@in_memory
async def test_bad_chunks_in_a_commit_are_refused_and_nothing_changes(env: Env) -> None:
    token = await _signed_in_copy(env)
    good, other = b"good bytes\n" * 5, b"other bytes\n" * 5
    refs = [chunk_of(good)[0], chunk_of(other)[0]]
    for chunks, status, code in (
        (_inline(good, bad=True), 400, "bad_chunk"),  # names the chunk
        ("not base64!", 400, "bad_request"),
        (12, 400, "bad_request"),
        (_inline(*[bytes([i]) * MAX_CHUNK for i in range(5)]), 413, "too_large"),  # raw
        (_inline(os.urandom(INLINE_RAW_BYTES + 4096)), 413, "too_large"),  # as sent
        (base64.b64encode(b"\x01\x02").decode(), 400, "bad_chunk"),  # a truncated stream
    ):
        body = {"batch": "b1", "changes": [put("a.txt", refs)], "chunks": chunks}
        r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
        assert (r.status, r.json()["error"]) == (status, code), r.body
    assert await _head(env, token) == 0
    missing = await env.call("POST", ALPHA + "/chunks/missing", token=token,
                             body={"chunks": [c.hash for c in refs]})
    assert missing.json()["missing"] == [c.hash for c in refs]  # none was stored
    bad = {"batch": "b1", "changes": [put("a.txt", refs[:1])], "chunks": _inline(good, bad=True)}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=bad, headers=COPY)
    assert r.json()["chunk"] == refs[0].hash


@in_memory
async def test_chunks_in_a_commit_to_a_finalized_engagement_are_423(env: Env) -> None:
    token = await _signed_in_copy(env)
    await env.store.finalize(env.alpha, "admin:root", "signed off", True)
    data = b"late edit\n"
    body = {"batch": "b1", "changes": [put("a.txt", [chunk_of(data)[0]])], "chunks": _inline(data)}
    r = await env.call("POST", ALPHA + "/commit", token=token, body=body, headers=COPY)
    assert r.status == 423 and r.json()["error"] == "finalized", r.body
    assert await env.store.missing_chunks(env.alpha, [chunk_of(data)[0].hash]) == [
        chunk_of(data)[0].hash
    ]
