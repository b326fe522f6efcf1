"""ServerAPI against a scripted server resource over treq's StubTreq machinery (an
in-memory HTTP connection), with a Clock for time and the thread hop run in the caller: retries, relogin,
error mapping, strict parsing, timeouts, cancels, pacing, and chunk upload/download packing.
No reactor runs; TLS itself is tested over loopback in test_trust.py."""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, TaskStopped
from twisted.python.failure import Failure
from twisted.web._newclient import RequestGenerationFailed
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from smartsyncd.client.backoff import Backoff, RetryNotice
from smartsyncd.client.bodyproducer import BytesProducer
from smartsyncd.client.errors import (
    AuthError,
    NetworkError,
    ProtocolError,
    ServerRefused,
    SessionExpired,
)
from smartsyncd.client.http import UPLOAD_BODY_LIMIT, ServerAPI
from smartsyncd.client.transport import USER_AGENT
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.client.wire import CommitAnswer, CommitChange, CommitResult, HistoryMark
from smartsyncd.core import bodycodec
from smartsyncd.core.chunking import chunk_buffer, chunk_hash
from smartsyncd.core.chunkstream import (
    compress_chunk,
    decode_records,
    encode_records,
    verify_records,
)
from smartsyncd.core.manifest import chunks_to_json, content_id, make_delta
from smartsyncd.core.model import ChunkRef, Manifest


@dataclass
class Seen:
    method: str
    path: str
    query: dict[bytes, list[bytes]]
    auth: str | None
    ctype: str | None
    body: bytes  # as sent before its Content-Encoding (decoded like the server does)
    encoding: str | None = None
    agent: str | None = None  # User-Agent


Answer = tuple[int, Any] | None  # (status, JSON value or raw bytes); None: never answer


@dataclass
class Script(Resource):
    """Answers each request with ``handler(seen)``; records everything it received."""

    handler: Callable[[Seen], Answer] = lambda seen: (404, {"error": "not_found"})
    seen: list[Seen] = field(default_factory=list)
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Any) -> Any:
        auth = request.getHeader(b"authorization")
        ctype = request.getHeader(b"content-type")
        encoding = request.getHeader(b"content-encoding")
        enc = encoding.decode() if encoding else None
        seen = Seen(
            request.method.decode(),
            request.path.decode(),
            dict(request.args),
            auth.decode() if auth else None,
            ctype.decode() if ctype else None,
            bodycodec.decode(request.content.read(), enc, 1 << 30),
            enc,
            (request.getHeader(b"user-agent") or b"").decode() or None,
        )
        self.seen.append(seen)
        answer = self.handler(seen)
        if answer is None:
            return NOT_DONE_YET
        status, value = answer
        request.setResponseCode(status)
        if isinstance(value, bytes):
            request.setHeader(b"content-type", b"application/x-smartsync-chunks")
            return value
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


FINGERPRINT = "ab" * 32
T = TypeVar("T")


async def in_caller(fn: Callable[..., Any], *args: Any) -> Any:
    """The transport's thread hop, run synchronously (no thread pool, no reactor)."""
    return fn(*args)


def _body(data: bytes | IBodyProducer) -> IBodyProducer:
    # StubTreq's own body adapter takes bytes only; large bodies travel in the client's own
    # producer (BytesProducer, synchronous like StubTreq's), so every body goes through it
    return data if IBodyProducer.providedBy(data) else BytesProducer(data)  # type: ignore[arg-type]


class StubHTTP(HTTPClient):
    """treq's StubTreq wiring: an HTTP client over ``RequestTraversalAgent``, which serves
    requests from a resource through an in-memory connection (no reactor, no sockets)."""

    def __init__(self, resource: Resource) -> None:
        self.agent = RequestTraversalAgent(resource)
        super().__init__(self.agent, data_to_body_producer=_body)

    def flush(self) -> None:
        """Deliver what the server wrote since (an answer given after NOT_DONE_YET)."""
        self.agent.flush()


@dataclass
class Server:
    script: Script
    clock: Clock
    stub: StubHTTP
    url: str = "https://files.example:8443"

    def api(self, **kwargs: Any) -> ServerAPI:
        kwargs.setdefault("backoff", Backoff(initial=0.001, maximum=0.01))
        kwargs.setdefault("token", "tok")
        kwargs.setdefault("http", self.stub)
        return ServerAPI(
            self.url, reactor=self.clock, policy=PinnedPolicy(FINGERPRINT),
            run_in_thread=in_caller, **kwargs,
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Drive a call to its end: deliver what the server wrote, else move the clock to the
        next timer (a retry's backoff, a timeout, pacing), until the call has its result."""
        outcome: list[Any] = []
        Deferred.fromCoroutine(coro).addBoth(outcome.append)
        while not outcome:
            self.stub.flush()
            if outcome:
                break
            timers = self.clock.getDelayedCalls()
            assert timers, "the call waits for nothing: it would never finish"
            self.clock.advance(max(0.0, min(t.getTime() for t in timers) - self.clock.seconds()))
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        result: T = outcome[0]
        return result


@pytest.fixture
def server() -> Server:
    script = Script()
    return Server(script, Clock(), StubHTTP(script))


ENG = "acme 2026/x"  # needs quoting in the URL
ENG_PATH = "/v1/engagements/acme%202026%2Fx"


# -- retries ---------------------------------------------------------------------------------


def test_503_is_retried_then_succeeds(server: Server) -> None:
    answers = [(503, {"error": "unavailable", "message": "db down"})] * 2 + [
        (200, {"engagements": [{"name": "a", "title": "A", "role": "editor", "head": 3}]})
    ]
    server.script.handler = lambda seen: answers.pop(0)
    api = server.api()
    result = server.run(api.list_engagements())
    assert result == [{"name": "a", "title": "A", "role": "editor", "head": 3}]
    assert server.script.paths() == ["/v1/engagements"] * 3
    assert api.requests == 3


def test_each_retry_tells_what_failed_and_when_and_names_the_client(server: Server) -> None:
    answers = [(503, {"error": "unavailable", "message": "db down"})] * 2 + [
        (200, {"engagements": []})
    ]
    server.script.handler = lambda seen: answers.pop(0)
    server.clock.advance(500.0)
    api = server.api(backoff=Backoff(initial=1.0, factor=2.0, maximum=10.0, jitter=lambda: 1.0))
    notices: list[RetryNotice] = []
    api.on_retry = notices.append
    assert server.run(api.list_engagements()) == []
    assert [(n.attempt, n.delay, n.retry_at, n.what) for n in notices] == [
        (1, 1.0, 501.0, "GET /v1/engagements"), (2, 2.0, 503.0, "GET /v1/engagements"),
    ]
    assert "503" in notices[0].error and "db down" in notices[0].error
    agents = {seen.agent for seen in server.script.seen}
    assert agents == {USER_AGENT.decode()}
    assert re.fullmatch(r"smartsync/\d+\.\d+\.\d+\S* \(\S+ .*; Python 3\.\d+\.\d+; Twisted .+\)",
                        USER_AGENT.decode())


def test_unavailable_forever_is_network_error_not_empty(server: Server) -> None:
    server.script.handler = lambda seen: (503, {"error": "unavailable", "message": "db down"})
    api = server.api(max_attempts=3)
    with pytest.raises(NetworkError, match="gave up after 3 attempts") as caught:
        server.run(api.changes("e", since=0))
    assert caught.value.exit_code == 4
    assert len(server.script.seen) == 3


def test_connection_refused_is_retried_then_network_error(server: Server) -> None:
    tried: list[str] = []

    class Refusing:
        """An HTTP client whose connections are refused (nothing listens there)."""

        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            tried.append(url)
            return fail(ConnectionRefusedError("Connection refused"))

    api = server.api(http=Refusing(), max_attempts=3)
    with pytest.raises(NetworkError, match="connection refused") as caught:
        server.run(api.info())
    assert caught.value.retryable is False  # given up: the final error is not retried again
    assert api.requests == 3 and len(tried) == 3


class FailingBody:
    """An HTTP client whose request fails while its body is being sent."""

    def __init__(self, *reasons: BaseException) -> None:
        self.reasons = reasons
        self.tried = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.tried += 1
        return fail(RequestGenerationFailed([Failure(r) for r in self.reasons]))


def test_a_body_cut_by_a_lost_connection_is_a_network_error_and_retried(server: Server) -> None:
    # the transport stops the body's producer before the protocol hears of the loss: the
    # request then fails with RequestGenerationFailed([TaskStopped]) (seen in test_drain)
    http = FailingBody(TaskStopped())
    api = server.api(http=http, max_attempts=2)
    with pytest.raises(NetworkError, match="cannot reach"):
        server.run(api.info())
    assert http.tried == 2


def test_a_body_that_fails_for_another_reason_is_not_called_a_network_error(
    server: Server,
) -> None:
    http = FailingBody(TaskStopped(), ValueError("a bug in a body producer"))
    api = server.api(http=http, max_attempts=3)
    with pytest.raises(RequestGenerationFailed):
        server.run(api.info())
    assert http.tried == 1


def test_no_answer_times_out_and_is_retried(server: Server) -> None:
    server.script.handler = lambda seen: None
    api = server.api(max_attempts=2, timeout=0.2)
    with pytest.raises(NetworkError, match="no answer"):
        server.run(api.session())
    assert len(server.script.seen) == 2


# -- authentication --------------------------------------------------------------------------


def bearer_only(token: str, answer: Answer) -> Callable[[Seen], Answer]:
    def handler(seen: Seen) -> Answer:
        if seen.auth != f"Bearer {token}":
            return 401, {"error": "session_expired", "message": "sign in again"}
        return answer

    return handler


def test_session_expired_triggers_one_relogin(server: Server) -> None:
    server.script.handler = bearer_only("fresh", (200, {"user": "alice", "groups": []}))
    calls: list[str] = []

    async def relogin() -> str:
        calls.append("relogin")
        return "fresh"

    api = server.api(token="stale", relogin=relogin)
    result = server.run(api.session())
    assert result.user == "alice"
    assert calls == ["relogin"]
    assert [s.auth for s in server.script.seen] == ["Bearer stale", "Bearer fresh"]
    assert api.token == "fresh"


def test_relogin_is_tried_only_once(server: Server) -> None:
    server.script.handler = bearer_only("never", (200, {}))
    calls: list[str] = []

    async def relogin() -> str:
        calls.append("relogin")
        return "still-wrong"

    api = server.api(relogin=relogin)
    with pytest.raises(SessionExpired) as caught:
        server.run(api.session())
    assert caught.value.exit_code == 3
    assert calls == ["relogin"]
    assert len(server.script.seen) == 2


def test_session_expired_without_relogin_is_auth_error(server: Server) -> None:
    server.script.handler = bearer_only("other", (200, {}))
    api = server.api()
    with pytest.raises(AuthError, match="smartsync login"):
        server.run(api.engagement("e"))
    assert len(server.script.seen) == 1


def test_login_stores_token_and_sends_no_bearer(server: Server) -> None:
    def handler(seen: Seen) -> Answer:
        body = json.loads(seen.body)
        if body == {"user": "alice", "password": "pw"}:
            return 200, {"token": "T1", "user": "alice", "expires_at": "2026-12-26T15:30:00Z"}
        return 401, {"error": "auth_failed", "message": "sign-in failed"}

    server.script.handler = handler
    api = server.api(token=None)
    assert server.run(api.login("alice", "pw")) == "T1"
    assert api.token == "T1"
    with pytest.raises(AuthError, match="sign-in failed") as caught:
        server.run(api.login("alice", "wrong"))
    assert not isinstance(caught.value, SessionExpired)
    with pytest.raises(AuthError, match="empty password"):
        server.run(api.login("alice", ""))
    assert [s.auth for s in server.script.seen] == [None, None]  # the empty one never left
    assert server.script.seen[0].ctype == "application/json"


# -- error mapping and parsing ---------------------------------------------------------------


def test_json_error_becomes_server_refused_with_code(server: Server) -> None:
    server.script.handler = lambda seen: (
        400,
        {"error": "invalid_path", "message": "path 'a/../b' has a '..' segment", "path": "a/../b"},
    )
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        server.run(api.commit(ENG, "b1", [CommitChange.delete("a/../b", 1)]))
    err = caught.value
    assert (err.code, err.status, err.details) == ("invalid_path", 400, {"path": "a/../b"})
    assert err.exit_code == 5
    assert len(server.script.seen) == 1  # a refusal is not retried
    assert server.script.seen[0].path == ENG_PATH + "/commit"


def test_not_found_is_an_error_never_an_empty_answer(server: Server) -> None:
    server.script.handler = lambda seen: (404, {"error": "not_found", "message": "no such"})
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        server.run(api.snapshot("gone"))
    assert caught.value.code == "not_found"


def test_non_json_error_body(server: Server) -> None:
    server.script.handler = lambda seen: (500, b"<html>oops</html>")
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        server.run(api.engagement("e"))
    assert (caught.value.code, caught.value.status) == ("http_500", 500)


CHANGE = {
    "seq": 5,
    "path": "a.txt",
    "kind": "put",
    "content": "c" * 64,
    "size": 3,
    "prev_seq": None,
    "user": "alice",
    "session": "s1",
    "time": "2026-11-26T15:30:12.345678Z",
    "conflict_of": None,
}


def test_changes_parsed_with_aware_times_and_wait(server: Server) -> None:
    tomb = dict(CHANGE, seq=6, kind="delete", content=None, size=0, prev_seq=5, session=None)
    server.script.handler = lambda seen: (
        200,
        {"head": 6, "changes": [CHANGE, tomb], "more": False},
    )
    api = server.api()
    head, changes, more = server.run(api.changes(ENG, since=4, limit=100, wait=30))
    assert (head, more) == (6, False)
    assert [c.seq for c in changes] == [5, 6]
    assert changes[0].time == datetime.datetime(2026, 11, 26, 15, 30, 12, 345678, datetime.UTC)
    assert changes[0].time.tzinfo is not None
    assert changes[1].kind == "delete" and changes[1].content is None
    query = server.script.seen[0].query
    assert (query[b"since"], query[b"limit"], query[b"wait"]) == ([b"4"], [b"100"], [b"30"])
    assert server.script.seen[0].path == ENG_PATH + "/changes"


@pytest.mark.parametrize(
    "bad",
    [
        {"head": 6, "changes": [dict(CHANGE, time="2026-11-26T15:30:12")], "more": False},
        {"head": 6, "changes": [dict(CHANGE, kind="move")], "more": False},
        {"head": 6, "changes": [dict(CHANGE, seq="5")], "more": False},
        {"head": 6, "changes": [dict(CHANGE, seq=3)], "more": False},  # not after `since`
        {"head": 6, "changes": [CHANGE]},  # no "more"
        ["not", "an", "object"],
    ],
)
def test_malformed_changes_are_protocol_errors(server: Server, bad: Any) -> None:
    server.script.handler = lambda seen: (200, bad)
    api = server.api()
    with pytest.raises(ProtocolError):
        server.run(api.changes("e", since=4))


def test_snapshot_parsed(server: Server) -> None:
    server.script.handler = lambda seen: (
        200,
        {"head": 9, "files": [{"path": "a", "seq": 9, "content": "d" * 64, "size": 1}]},
    )
    api = server.api()
    head, files = server.run(api.snapshot("e"))
    assert head == 9 and files[0].path == "a" and files[0].content == "d" * 64


# -- manifests -------------------------------------------------------------------------------


def refs(n: int, salt: bytes = b"") -> list[ChunkRef]:
    return [ChunkRef(chunk_hash(salt + i.to_bytes(4, "big")), 1000 + i) for i in range(n)]


def test_manifest_full_and_delta(server: Server) -> None:
    old = refs(50)
    new = old[:20] + refs(1, b"new") + old[21:]
    old_id, new_id = content_id(old), content_id(new)

    def handler(seen: Seen) -> Answer:
        size = sum(c.size for c in new)
        if seen.query.get(b"base") == [old_id.encode()]:
            return 200, {"content": new_id, "size": size,
                         "delta": {"base": old_id, "ops": make_delta(old, new)}}
        return 200, {"content": new_id, "size": size, "chunks": chunks_to_json(new)}

    server.script.handler = handler
    api = server.api()
    base = Manifest(old_id, sum(c.size for c in old), tuple(old))
    full = server.run(api.manifest(ENG, new_id))
    delta = server.run(api.manifest(ENG, new_id, base=base))
    assert full.chunks == delta.chunks == tuple(new)
    assert full.content == new_id
    assert server.script.seen[0].path == f"{ENG_PATH}/manifests/{new_id}"
    assert len(server.script.seen[1].body) == 0 and api.bytes_received > 0


def test_manifest_that_does_not_match_its_id_is_refused(server: Server) -> None:
    chunks = refs(3)
    wrong_id = content_id(refs(3, b"x"))
    server.script.handler = lambda seen: (
        200,
        {"content": wrong_id, "size": sum(c.size for c in chunks), "chunks": chunks_to_json(chunks)},
    )
    api = server.api()
    with pytest.raises(ProtocolError, match="does not match"):
        server.run(api.manifest("e", wrong_id))


# -- chunks ----------------------------------------------------------------------------------


def test_missing_chunks_batches_of_10000(server: Server) -> None:
    hashes = [chunk_hash(i.to_bytes(4, "big")) for i in range(10_001)]

    def handler(seen: Seen) -> Answer:
        asked = json.loads(seen.body)["chunks"]
        return 200, {"missing": asked[::2]}

    server.script.handler = handler
    api = server.api()
    missing = server.run(api.missing_chunks("e", hashes + hashes[:5]))
    sizes = [len(json.loads(s.body)["chunks"]) for s in server.script.seen]
    assert sizes == [10_000, 1]
    assert missing == hashes[:10_000:2] + [hashes[10_000]]


def test_upload_packs_compresses_and_counts_bytes(server: Server) -> None:
    stored: dict[str, bytes] = {}

    def handler(seen: Seen) -> Answer:
        assert seen.ctype == "application/x-smartsync-chunks"
        for chunk in verify_records(decode_records(seen.body)):
            stored[chunk.hash] = chunk.payload
        return 200, {"stored": 1, "present": 0}

    server.script.handler = handler
    random_data = os.urandom(3 * 1024 * 1024)  # incompressible: about 27 MiB of raw chunks
    chunks = [(ref.hash, bytes(view)) for ref, view in chunk_buffer(random_data * 9)]
    texty = b"debit credit balance " * 5000
    chunks.append((chunk_hash(texty), texty))
    progress: list[int] = []

    class Count:
        def start(self, task: str, total_bytes: int) -> None: ...
        def advance(self, nbytes: int) -> None:
            progress.append(nbytes)
        def finish(self) -> None: ...

    api = server.api(progress=Count())
    sent = server.run(api.upload_chunks("e", iter(chunks)))
    bodies = [len(s.body) for s in server.script.seen]
    assert len(bodies) >= 2 and max(bodies) <= UPLOAD_BODY_LIMIT
    assert sent == sum(bodies) == api.bytes_sent
    assert set(stored) == {h for h, _ in chunks}
    assert len(stored[chunk_hash(texty)]) < len(texty) // 10  # sent compressed
    assert sum(progress) == sum(len(raw) for _, raw in chunks)


def test_upload_refusal_surfaces(server: Server) -> None:
    server.script.handler = lambda seen: (
        400,
        {"error": "bad_chunk", "message": "hash mismatch", "chunk": "ab" * 32},
    )
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        server.run(api.upload_chunks("e", [("ab" * 32, b"not that")]))
    assert caught.value.code == "bad_chunk"


def chunk_server(blobs: dict[str, bytes], corrupt: bool = False) -> Callable[[Seen], Answer]:
    def handler(seen: Seen) -> Answer:
        asked = json.loads(seen.body)["chunks"]
        records = []
        for h in asked:
            raw = blobs[h]
            if corrupt:
                raw = raw[:-1] + bytes([raw[-1] ^ 1])
            codec, payload = compress_chunk(raw)
            records.append((h, codec, len(raw), payload))
        return 200, encode_records(records)

    return handler


def test_fetch_batches_by_size_and_verifies(server: Server) -> None:
    blobs = {chunk_hash(b): b for b in (os.urandom(200_000) for _ in range(100))}
    server.script.handler = chunk_server(blobs)
    api = server.api()
    got = server.run(api.fetch_chunks("e", [ChunkRef(h, len(b)) for h, b in blobs.items()]))
    assert got == blobs
    batches = [len(json.loads(s.body)["chunks"]) for s in server.script.seen]
    assert sum(batches) == 100 and len(batches) == 2  # 100 x 200 kB is over 16 MiB
    assert all(s.path == "/v1/engagements/e/chunks/fetch" for s in server.script.seen)


def test_fetch_refuses_corrupt_chunks(server: Server) -> None:
    blobs = {chunk_hash(b): b for b in [b"x" * 5000]}
    server.script.handler = chunk_server(blobs, corrupt=True)
    api = server.api()
    with pytest.raises(ProtocolError, match="bad chunk data"):
        server.run(api.fetch_chunks("e", list(blobs)))


def test_commit_answer_checked(server: Server) -> None:
    answer = {"head": 45, "results": [{"path": "a", "status": "applied", "seq": 45}]}
    server.script.handler = lambda seen: (200, answer)
    api = server.api()
    change = CommitChange.delete("a", 44)
    result = server.run(api.commit("e", "batch-1", [change]))
    assert result == CommitAnswer(
        head=45, results=(CommitResult("applied", seq=45),),
        history=HistoryMark(None, None, None, None),
    )
    assert json.loads(server.script.seen[0].body) == {
        "batch": "batch-1", "changes": [{"path": "a", "kind": "delete", "base": 44}],
    }


def test_caller_cancel_stops_without_retry(server: Server) -> None:
    server.script.handler = lambda seen: None  # never answers
    api = server.api(max_attempts=5, timeout=30)
    call = Deferred.fromCoroutine(api.session())
    server.stub.flush()
    assert len(server.script.seen) == 1
    outcome: list[Any] = []
    call.addBoth(outcome.append)
    call.cancel()
    # fails at once: a cancel is not a network error to retry
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert outcome[0].check(CancelledError)
    assert server.clock.getDelayedCalls() == []  # no timeout or retry left behind
    assert api.requests == 1


def test_a_paced_request_longer_than_the_timeout_is_not_timed_out(server: Server) -> None:
    server.script.handler = lambda seen: (200, {"stored": 1, "present": 0})
    api = server.api(bwlimit=100_000, timeout=2)
    blob = os.urandom(600_000)  # 6 s at the limit, three times the timeout
    server.run(api.upload_chunks("e", [(chunk_hash(blob), blob)]))
    assert api.requests == 1  # neither timed out nor retried
    assert server.clock.seconds() > 5


def test_bandwidth_limit_paces_requests(server: Server) -> None:
    server.script.handler = lambda seen: (200, {"stored": 1, "present": 0})
    api = server.api(bwlimit=200_000)  # bytes per second
    blob = os.urandom(600_000)
    started = server.clock.seconds()
    server.run(api.upload_chunks("e", [(chunk_hash(blob), blob)]))
    # about 600 kB sent at 200 kB/s in 64 KiB slices: the last slice may not leave before
    # all the others are paid for (client/pacing.py)
    paced = server.clock.seconds() - started
    assert paced >= (api.bytes_sent - 64 * 1024) / 200_000 > 2.5
    unlimited = server.api()
    started = server.clock.seconds()
    server.run(unlimited.upload_chunks("e", [(chunk_hash(blob), blob)]))
    assert server.clock.seconds() == started  # no pacing: nothing waited on the clock
