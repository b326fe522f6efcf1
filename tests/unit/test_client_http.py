"""ServerAPI against a real Twisted TLS server on loopback that scripts answers per request:
retries, relogin, error mapping, strict parsing, and chunk upload/download packing."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.errors import (
    AuthError,
    NetworkError,
    ProtocolError,
    ServerRefused,
    SessionExpired,
)
from smartsyncd.client.http import UPLOAD_BODY_LIMIT, ServerAPI
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


def _make_cert(tmp: Path) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


@dataclass
class Server:
    script: Script
    url: str
    fingerprint: str

    def api(self, **kwargs: Any) -> ServerAPI:
        kwargs.setdefault("backoff", Backoff(initial=0.001, maximum=0.01))
        kwargs.setdefault("token", "tok")
        return ServerAPI(
            self.url, reactor=reactor, policy=PinnedPolicy(self.fingerprint), **kwargs
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    cert, key, fp = _make_cert(tmp_path)
    script = Script()
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    site = Site(script)
    port = pytest_twisted.blockon(endpoint.listen(site))
    yield Server(script, f"https://127.0.0.1:{port.getHost().port}", fp)
    pytest_twisted.blockon(port.stopListening())


async def closing(api: ServerAPI, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await api.close()


ENG = "acme 2026/x"  # needs quoting in the URL
ENG_PATH = "/v1/engagements/acme%202026%2Fx"


# -- retries ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_503_is_retried_then_succeeds(server: Server) -> None:
    answers = [(503, {"error": "unavailable", "message": "db down"})] * 2 + [
        (200, {"engagements": [{"name": "a", "title": "A", "role": "editor", "head": 3}]})
    ]
    server.script.handler = lambda seen: answers.pop(0)
    api = server.api()
    result = await closing(api, api.list_engagements())
    assert result == [{"name": "a", "title": "A", "role": "editor", "head": 3}]
    assert server.script.paths() == ["/v1/engagements"] * 3
    assert api.requests == 3


@pytest_twisted.ensureDeferred
async def test_unavailable_forever_is_network_error_not_empty(server: Server) -> None:
    server.script.handler = lambda seen: (503, {"error": "unavailable", "message": "db down"})
    api = server.api(max_attempts=3)
    with pytest.raises(NetworkError, match="gave up after 3 attempts") as caught:
        await closing(api, api.changes("e", since=0))
    assert caught.value.exit_code == 4
    assert len(server.script.seen) == 3


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_retried_then_network_error(server: Server) -> None:
    api = ServerAPI(
        "https://127.0.0.1:1",  # nothing listens on port 1
        reactor=reactor,
        policy=PinnedPolicy(server.fingerprint),
        backoff=Backoff(initial=0.001, maximum=0.01),
        max_attempts=3,
    )
    with pytest.raises(NetworkError, match="connection refused"):
        await closing(api, api.info())
    assert api.requests == 3


@pytest_twisted.ensureDeferred
async def test_no_answer_times_out_and_is_retried(server: Server) -> None:
    server.script.handler = lambda seen: None
    api = server.api(max_attempts=2, timeout=0.2)
    with pytest.raises(NetworkError, match="no answer"):
        await closing(api, api.session())
    assert len(server.script.seen) == 2


# -- authentication --------------------------------------------------------------------------


def bearer_only(token: str, answer: Answer) -> Callable[[Seen], Answer]:
    def handler(seen: Seen) -> Answer:
        if seen.auth != f"Bearer {token}":
            return 401, {"error": "session_expired", "message": "sign in again"}
        return answer

    return handler


@pytest_twisted.ensureDeferred
async def test_session_expired_triggers_one_relogin(server: Server) -> None:
    server.script.handler = bearer_only("fresh", (200, {"user": "alice", "groups": []}))
    calls: list[str] = []

    async def relogin() -> str:
        calls.append("relogin")
        return "fresh"

    api = server.api(token="stale", relogin=relogin)
    result = await closing(api, api.session())
    assert result.user == "alice"
    assert calls == ["relogin"]
    assert [s.auth for s in server.script.seen] == ["Bearer stale", "Bearer fresh"]
    assert api.token == "fresh"


@pytest_twisted.ensureDeferred
async def test_relogin_is_tried_only_once(server: Server) -> None:
    server.script.handler = bearer_only("never", (200, {}))
    calls: list[str] = []

    async def relogin() -> str:
        calls.append("relogin")
        return "still-wrong"

    api = server.api(relogin=relogin)
    with pytest.raises(SessionExpired) as caught:
        await closing(api, api.session())
    assert caught.value.exit_code == 3
    assert calls == ["relogin"]
    assert len(server.script.seen) == 2


@pytest_twisted.ensureDeferred
async def test_session_expired_without_relogin_is_auth_error(server: Server) -> None:
    server.script.handler = bearer_only("other", (200, {}))
    api = server.api()
    with pytest.raises(AuthError, match="smartsync login"):
        await closing(api, api.engagement("e"))
    assert len(server.script.seen) == 1


@pytest_twisted.ensureDeferred
async def test_login_stores_token_and_sends_no_bearer(server: Server) -> None:
    def handler(seen: Seen) -> Answer:
        body = json.loads(seen.body)
        if body == {"user": "alice", "password": "pw"}:
            return 200, {"token": "T1", "user": "alice", "expires_at": "2026-12-26T15:30:00Z"}
        return 401, {"error": "auth_failed", "message": "sign-in failed"}

    server.script.handler = handler
    api = server.api(token=None)
    try:
        assert await api.login("alice", "pw") == "T1"
        assert api.token == "T1"
        with pytest.raises(AuthError, match="sign-in failed") as caught:
            await api.login("alice", "wrong")
        assert not isinstance(caught.value, SessionExpired)
        with pytest.raises(AuthError, match="empty password"):
            await api.login("alice", "")
    finally:
        await api.close()
    assert [s.auth for s in server.script.seen] == [None, None]  # the empty one never left
    assert server.script.seen[0].ctype == "application/json"


# -- error mapping and parsing ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_error_becomes_server_refused_with_code(server: Server) -> None:
    server.script.handler = lambda seen: (
        400,
        {"error": "invalid_path", "message": "path 'a/../b' has a '..' segment", "path": "a/../b"},
    )
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        await closing(api, api.commit(ENG, "b1", [CommitChange.delete("a/../b", 1)]))
    err = caught.value
    assert (err.code, err.status, err.details) == ("invalid_path", 400, {"path": "a/../b"})
    assert err.exit_code == 5
    assert len(server.script.seen) == 1  # a refusal is not retried
    assert server.script.seen[0].path == ENG_PATH + "/commit"


@pytest_twisted.ensureDeferred
async def test_not_found_is_an_error_never_an_empty_answer(server: Server) -> None:
    server.script.handler = lambda seen: (404, {"error": "not_found", "message": "no such"})
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        await closing(api, api.snapshot("gone"))
    assert caught.value.code == "not_found"


@pytest_twisted.ensureDeferred
async def test_non_json_error_body(server: Server) -> None:
    server.script.handler = lambda seen: (500, b"<html>oops</html>")
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        await closing(api, api.engagement("e"))
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


@pytest_twisted.ensureDeferred
async def test_changes_parsed_with_aware_times_and_wait(server: Server) -> None:
    tomb = dict(CHANGE, seq=6, kind="delete", content=None, size=0, prev_seq=5, session=None)
    server.script.handler = lambda seen: (
        200,
        {"head": 6, "changes": [CHANGE, tomb], "more": False},
    )
    api = server.api()
    head, changes, more = await closing(api, api.changes(ENG, since=4, limit=100, wait=30))
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
@pytest_twisted.ensureDeferred
async def test_malformed_changes_are_protocol_errors(server: Server, bad: Any) -> None:
    server.script.handler = lambda seen: (200, bad)
    api = server.api()
    with pytest.raises(ProtocolError):
        await closing(api, api.changes("e", since=4))


@pytest_twisted.ensureDeferred
async def test_snapshot_parsed(server: Server) -> None:
    server.script.handler = lambda seen: (
        200,
        {"head": 9, "files": [{"path": "a", "seq": 9, "content": "d" * 64, "size": 1}]},
    )
    api = server.api()
    head, files = await closing(api, api.snapshot("e"))
    assert head == 9 and files[0].path == "a" and files[0].content == "d" * 64


# -- manifests -------------------------------------------------------------------------------


def refs(n: int, salt: bytes = b"") -> list[ChunkRef]:
    return [ChunkRef(chunk_hash(salt + i.to_bytes(4, "big")), 1000 + i) for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_manifest_full_and_delta(server: Server) -> None:
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
    try:
        full = await api.manifest(ENG, new_id)
        delta = await api.manifest(ENG, new_id, base=base)
    finally:
        await api.close()
    assert full.chunks == delta.chunks == tuple(new)
    assert full.content == new_id
    assert server.script.seen[0].path == f"{ENG_PATH}/manifests/{new_id}"
    assert len(server.script.seen[1].body) == 0 and api.bytes_received > 0


@pytest_twisted.ensureDeferred
async def test_manifest_that_does_not_match_its_id_is_refused(server: Server) -> None:
    chunks = refs(3)
    wrong_id = content_id(refs(3, b"x"))
    server.script.handler = lambda seen: (
        200,
        {"content": wrong_id, "size": sum(c.size for c in chunks), "chunks": chunks_to_json(chunks)},
    )
    api = server.api()
    with pytest.raises(ProtocolError, match="does not match"):
        await closing(api, api.manifest("e", wrong_id))


# -- chunks ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_missing_chunks_batches_of_10000(server: Server) -> None:
    hashes = [chunk_hash(i.to_bytes(4, "big")) for i in range(10_001)]

    def handler(seen: Seen) -> Answer:
        asked = json.loads(seen.body)["chunks"]
        return 200, {"missing": asked[::2]}

    server.script.handler = handler
    api = server.api()
    missing = await closing(api, api.missing_chunks("e", hashes + hashes[:5]))
    sizes = [len(json.loads(s.body)["chunks"]) for s in server.script.seen]
    assert sizes == [10_000, 1]
    assert missing == hashes[:10_000:2] + [hashes[10_000]]


@pytest_twisted.ensureDeferred
async def test_upload_packs_compresses_and_counts_bytes(server: Server) -> None:
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
    sent = await closing(api, api.upload_chunks("e", iter(chunks)))
    bodies = [len(s.body) for s in server.script.seen]
    assert len(bodies) >= 2 and max(bodies) <= UPLOAD_BODY_LIMIT
    assert sent == sum(bodies) == api.bytes_sent
    assert set(stored) == {h for h, _ in chunks}
    assert len(stored[chunk_hash(texty)]) < len(texty) // 10  # sent compressed
    assert sum(progress) == sum(len(raw) for _, raw in chunks)


@pytest_twisted.ensureDeferred
async def test_upload_refusal_surfaces(server: Server) -> None:
    server.script.handler = lambda seen: (
        400,
        {"error": "bad_chunk", "message": "hash mismatch", "chunk": "ab" * 32},
    )
    api = server.api()
    with pytest.raises(ServerRefused) as caught:
        await closing(api, api.upload_chunks("e", [("ab" * 32, b"not that")]))
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


@pytest_twisted.ensureDeferred
async def test_fetch_batches_by_size_and_verifies(server: Server) -> None:
    blobs = {chunk_hash(b): b for b in (os.urandom(200_000) for _ in range(100))}
    server.script.handler = chunk_server(blobs)
    api = server.api()
    got = await closing(api, api.fetch_chunks("e", [ChunkRef(h, len(b)) for h, b in blobs.items()]))
    assert got == blobs
    batches = [len(json.loads(s.body)["chunks"]) for s in server.script.seen]
    assert sum(batches) == 100 and len(batches) == 2  # 100 x 200 kB is over 16 MiB
    assert all(s.path == "/v1/engagements/e/chunks/fetch" for s in server.script.seen)


@pytest_twisted.ensureDeferred
async def test_fetch_refuses_corrupt_chunks(server: Server) -> None:
    blobs = {chunk_hash(b): b for b in [b"x" * 5000]}
    server.script.handler = chunk_server(blobs, corrupt=True)
    api = server.api()
    with pytest.raises(ProtocolError, match="bad chunk data"):
        await closing(api, api.fetch_chunks("e", list(blobs)))


@pytest_twisted.ensureDeferred
async def test_commit_answer_checked(server: Server) -> None:
    answer = {"head": 45, "results": [{"path": "a", "status": "applied", "seq": 45}]}
    server.script.handler = lambda seen: (200, answer)
    api = server.api()
    change = CommitChange.delete("a", 44)
    result = await closing(api, api.commit("e", "batch-1", [change]))
    assert result == CommitAnswer(
        head=45, results=(CommitResult("applied", seq=45),),
        history=HistoryMark(None, None, None, None),
    )
    assert json.loads(server.script.seen[0].body) == {
        "batch": "batch-1", "changes": [{"path": "a", "kind": "delete", "base": 44}],
    }


@pytest_twisted.ensureDeferred
async def test_caller_cancel_stops_without_retry(server: Server) -> None:
    server.script.handler = lambda seen: None  # never answers
    api = server.api(max_attempts=5, timeout=30)
    call = Deferred.fromCoroutine(api.session())
    deadline = reactor.seconds() + 5
    while not server.script.seen and reactor.seconds() < deadline:
        await deferLater(reactor, 0.01, lambda: None)
    assert len(server.script.seen) == 1
    call.cancel()
    with pytest.raises(CancelledError):
        await call  # fails at once: a cancel is not a network error to retry
    await api.close()
    assert api.requests == 1


@pytest_twisted.ensureDeferred
async def test_bandwidth_limit_paces_requests(server: Server) -> None:
    server.script.handler = lambda seen: (200, {"stored": 1, "present": 0})
    api = server.api(bwlimit=200_000)  # bytes per second
    blob = os.urandom(60_000)
    started = reactor.seconds()
    await closing(api, api.upload_chunks("e", [(chunk_hash(blob), blob)]))
    # about 60 kB sent at 200 kB/s: the call may not finish before ~0.3 s have passed
    assert reactor.seconds() - started >= api.bytes_sent / 200_000 * 0.95
    unlimited = server.api()
    started = reactor.seconds()
    await closing(unlimited, unlimited.upload_chunks("e", [(chunk_hash(blob), blob)]))
    assert reactor.seconds() - started < api.bytes_sent / 200_000
