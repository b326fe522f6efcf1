"""The client's connection to one server: every call of docs/protocol.md as an async method.

``ServerAPI`` is built on treq over a persistent connection pool with a caller-chosen TLS policy
(:mod:`smartsyncd.client.trust`). Every call is idempotent (a commit carries its batch key), so
transport failures and 502/503/504 are retried with backoff and full jitter; after
``max_attempts`` they surface as :class:`NetworkError`. An error is never read as "no changes"
or "not found": every refusal becomes an exception (see :mod:`smartsyncd.client.errors`).

Answers are parsed strictly into ``core.model`` types; a malformed answer is a
:class:`ProtocolError`. ``bytes_sent``/``bytes_received`` count request and response bodies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast
from urllib.parse import quote

from OpenSSL import SSL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS

from smartsyncd.client.backoff import Backoff, retrying
from smartsyncd.client.bodyproducer import PIECE_BYTES, BytesProducer
from smartsyncd.client.errors import (
    AuthError,
    NetworkError,
    ProtocolError,
    ServerRefused,
    SessionExpired,
    TrustError,
    refusal,
)
from smartsyncd.client.progress import Progress
from smartsyncd.core import bodycodec
from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.core.chunkstream import (
    CODEC_DELTA,
    compress_chunk,
    decode_fetched,
    decode_to_raw,
    delta_payload,
    encode_records,
)
from smartsyncd.core.errors import SyncError
from smartsyncd.core.manifest import apply_delta, chunks_from_json, content_id
from smartsyncd.core.model import Change, ChunkRef, FileState, HistoryCheck, Manifest
from smartsyncd.runtime.tlsbatching import BatchingEndpointFactory
from smartsyncd.runtime.twistedcompat import newclient as _newclient

log = Logger()

PROTOCOL_VERSION = 1
JSON_TYPE = b"application/json"
CHUNKS_TYPE = b"application/x-smartsync-chunks"
# a request body of chunks: room for the engine's 16 MiB upload window and its record headers
# in one request (the server takes up to 32 MiB, docs/protocol.md "Limits")
UPLOAD_BODY_LIMIT = 24 * 1024 * 1024
FETCH_DATA_LIMIT = 16 * 1024 * 1024
# base bytes the deltas of one fetch may name (the client holds them while the request is out;
# the server allows 64 MiB)
FETCH_BASE_LIMIT = 24 * 1024 * 1024
# base bytes the delta records of one upload may name (the server allows 64 MiB per request)
UPLOAD_BASE_LIMIT = 48 * 1024 * 1024
CHUNKS_PER_REQUEST = 4096
MISSING_PER_REQUEST = 10000
RECORD_HEADER = 41  # hash 32 + codec 1 + raw_len 4 + payload_len 4
LONG_POLL_CAP = 60.0
RETRY_STATUSES = frozenset({502, 503, 504})
PARALLEL_REQUESTS = 4  # chunk transfers on the wire at once
RESPONSE_CAP = 256 * 1024 * 1024  # a compressed JSON answer may not decompress beyond this
IN_THREAD_BYTES = 256 * 1024  # (de)compress bodies larger than this off the reactor

ChunkWanted = str | ChunkRef | tuple[str, int] | tuple[str, int, "DeltaHint"]


@dataclass(frozen=True)
class DeltaHint:
    """Bytes of content ``base`` at ``offset`` that the server has and that resemble a chunk:
    the chunk may travel as a zstd delta against them (docs/protocol.md, codec 2)."""

    base: str
    offset: int
    prefix: bytes


UploadItem = tuple[str, bytes] | tuple[str, bytes, DeltaHint]

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    _newclient.ResponseFailed,
    _newclient.RequestTransmissionFailed,
    _newclient.RequestNotSent,
    OSError,
)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, body fully read."""

    status: int
    body: bytes
    content_type: str
    wire_bytes: int = -1  # body bytes as they travelled (compressed), -1: same as body


class HistoryKeeper(Protocol):
    """A copy's memory of the log it follows (``client/reconcile.py``)."""

    async def check(self, since: int | None) -> HistoryCheck: ...

    async def seen(
        self, seq: int | None, token: str | None, store: str | None, generation: int | None
    ) -> None: ...


class ServerAPI:
    """Async calls to one smartsyncd server (``base_url`` like ``https://host:8443``)."""

    def __init__(
        self,
        base_url: str,
        *,
        reactor: Any,
        policy: IPolicyForHTTPS,
        token: str | None = None,
        relogin: Callable[[], Awaitable[str]] | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 8,
        progress: Progress | None = None,
        bwlimit: int | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.token = token
        self.relogin = relogin
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        # Only ``advance`` is called (per uploaded/fetched batch); the owner starts and
        # finishes tasks.
        self.progress = progress
        self.bwlimit = bwlimit
        self.timeout = timeout
        # JSON request bodies of 1 KiB and more go zstd-compressed (protocol.md, "Compressed
        # JSON bodies"); False for a server older than that
        self.compress_requests = True
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests = 0
        # chunks that uploads sent although the server had them (its "present" count): a
        # caller that uploads without asking /missing first watches this to resume asking
        self.chunks_present = 0
        # the sync copy this connection speaks for (``Smartsync-Copy`` header), if any
        self.copy_id: str | None = None
        # that copy's view of the log (client/reconcile.py): sent with change feeds and commits
        # so a restored server refuses (409 history_diverged) instead of stranding the copy
        self.keeper: HistoryKeeper | None = None
        # (head, head token, store, generation) of the last snapshot (a clone keeps them)
        self.snapshot_history: tuple[int, str | None, str | None, int | None] | None = None
        self._reactor = reactor
        self._bw_free_at = 0.0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._pool.retryAutomatically = False  # we retry ourselves, with backoff
        # HTTPS as Agent does it, with TLS moving data in large pieces (smartsyncd/runtime/tlsbatching.py)
        agent: Any = Agent.usingEndpointFactory(
            reactor, BatchingEndpointFactory(reactor, policy), pool=self._pool
        )
        # Cookies are kept for the life of this object: a load balancer's sticky-session
        # cookie (HAProxy's SERVERID) keeps every request on one server until it fails.
        self.cookies = IndexableCookieJar()
        self._http = HTTPClient(agent, cookiejar=self.cookies)

    async def close(self) -> None:
        """Close pooled connections (call before stopping the reactor)."""
        await self._pool.closeCachedConnections()

    # -- sessions and information ------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """``GET /v1/info`` (no sign-in needed); checks the server speaks protocol 1."""
        data = _object(await self._json("GET", "/v1/info", auth=False), "info")
        protocols = data.get("protocol")
        if not isinstance(protocols, list) or PROTOCOL_VERSION not in protocols:
            raise ProtocolError(
                f"server speaks protocol versions {protocols!r}; this client speaks "
                f"{PROTOCOL_VERSION}"
            )
        return data

    async def login(self, user: str, password: str) -> str:
        """Sign in; stores and returns the session token."""
        if not password:
            raise AuthError("sign-in failed: empty password")
        data = _object(
            await self._json(
                "POST", "/v1/login", body={"user": user, "password": password}, auth=False
            ),
            "login",
        )
        token = _get(data, "token", str, "login")
        if not token:
            raise ProtocolError("login answer has an empty token")
        self.token = token
        log.info("signed in to {url} as {user}", url=self.base_url, user=user)
        return token

    async def logout(self) -> None:
        """End the session on the server and forget the token."""
        await self._request("POST", "/v1/logout", relogin=False)
        self.token = None

    async def session(self) -> dict[str, Any]:
        return _object(await self._json("GET", "/v1/session"), "session")

    async def list_engagements(self) -> list[dict[str, Any]]:
        data = _object(await self._json("GET", "/v1/engagements"), "engagements")
        items = _get(data, "engagements", list, "engagements")
        return [_object(item, "engagement") for item in items]

    async def engagement(self, name: str) -> dict[str, Any]:
        return _object(await self._json("GET", _eng(name)), "engagement")

    # -- pull ----------------------------------------------------------------------------------

    async def snapshot(self, eng: str) -> tuple[int, list[FileState]]:
        """Live files at the head: ``(head, files)``."""
        data = _object(await self._json("GET", _eng(eng, "snapshot")), "snapshot")
        head = _get(data, "head", int, "snapshot")
        files = [_file_state(item) for item in _get(data, "files", list, "snapshot")]
        self.snapshot_history = (head, *_history_fields(data, "head_hash", "snapshot"))
        return head, files

    async def changes(
        self, eng: str, since: int, limit: int = 5000, wait: float = 0
    ) -> tuple[int, list[Change], bool]:
        """Changes with ``seq > since``: ``(head, changes, more)``; long-polls when ``wait``."""
        wait = max(0.0, min(float(wait), LONG_POLL_CAP))
        params = {"since": str(since), "limit": str(limit)}
        if wait:
            params["wait"] = f"{wait:g}"
        keeper = self.keeper
        if keeper is not None:
            check = await keeper.check(since)
            if check.hash is not None:
                params["hash"] = check.hash
            if check.store is not None:
                params["store"] = check.store
            if check.generation is not None:
                params["generation"] = str(check.generation)
        data = _object(
            await self._json(
                "GET", _eng(eng, "changes"), params=params, timeout=self.timeout + wait
            ),
            "changes",
        )
        head = _get(data, "head", int, "changes")
        changes = [_change(item) for item in _get(data, "changes", list, "changes")]
        more = _get(data, "more", bool, "changes")
        seqs = [c.seq for c in changes]
        if seqs != sorted(seqs) or (seqs and seqs[0] <= since):
            raise ProtocolError("changes answer is out of order or repeats old changes")
        if keeper is not None:
            last = changes[-1] if changes else None
            token, store, generation = _history_fields(data, None, "changes")
            await keeper.seen(
                None if last is None else last.seq, None if last is None else last.record_hash,
                store, generation,
            )
        return head, changes, more

    async def manifest(self, eng: str, content: str, base: Manifest | None = None) -> Manifest:
        """The chunk list of ``content``, fetched as a delta against ``base`` when given."""
        params = {"base": base.content} if base is not None else None
        data = _object(
            await self._json("GET", _eng(eng, "manifests", content), params=params), "manifest"
        )
        size = _get(data, "size", int, "manifest")
        try:
            if "delta" in data:
                delta = _object(data["delta"], "manifest delta")
                if base is None or delta.get("base") != base.content:
                    raise ProtocolError("manifest delta names a base this client did not ask for")
                chunks = apply_delta(base.chunks, delta.get("ops"))
            else:
                chunks = chunks_from_json(data.get("chunks"))
        except SyncError as exc:
            raise ProtocolError(f"server sent a malformed manifest: {exc.message}") from exc
        if content_id(chunks) != content or sum(c.size for c in chunks) != size:
            raise ProtocolError(f"server sent a manifest that does not match content {content}")
        return Manifest(content=content, size=size, chunks=tuple(chunks))

    async def fetch_chunks(self, eng: str, hashes: Iterable[ChunkWanted]) -> dict[str, bytes]:
        """Download chunks (raw bytes by hash), each verified against its hash.

        Items may be plain hashes or ``(hash, size)``/``ChunkRef``; sizes pack requests up to
        16 MiB (an unknown size counts as the largest chunk). A ``(hash, size, DeltaHint)``
        names bytes of a version this client has: the server may send the chunk as a delta
        against them (docs/protocol.md, codec 2); a delta that does not rebuild to its hash
        is fetched again whole, and a refused request is repeated without deltas.
        """
        wanted: dict[str, tuple[int, DeltaHint | None]] = {}
        for item in hashes:
            wanted.setdefault(*_wanted(item))
        result: dict[str, bytes] = {}
        in_flight: list[tuple[list[str], Deferred[dict[str, bytes]]]] = []

        def collect(batch: list[str], raw: dict[str, bytes]) -> None:
            for digest in batch:
                result[digest] = raw[digest]
            if self.progress is not None:
                self.progress.advance(sum(len(raw[h]) for h in batch))

        try:
            for batch in _fetch_batches(wanted):
                while len(in_flight) >= PARALLEL_REQUESTS:
                    done, waiting = in_flight.pop(0)
                    collect(done, await waiting)
                hints = {h: hint for h in batch if (hint := wanted[h][1]) is not None}
                in_flight.append(
                    (batch, Deferred.fromCoroutine(self._fetch_batch(eng, batch, hints)))
                )
            while in_flight:
                done, waiting = in_flight.pop(0)
                collect(done, await waiting)
        finally:
            for _, pending in in_flight:
                pending.addErrback(lambda _: None)
                pending.cancel()
        return result

    async def _fetch_batch(
        self, eng: str, batch: list[str], hints: Mapping[str, DeltaHint] | None = None
    ) -> dict[str, bytes]:
        body, prefixes = _fetch_body(batch, hints or {})
        try:
            reply = await self._request(
                "POST", _eng(eng, "chunks", "fetch"), body=body, expect=CHUNKS_TYPE,
                compress=True,
            )
        except ServerRefused as exc:
            if not prefixes or exc.status not in (400, 404, 413):
                raise
            # the server would not use our bases (a version it no longer has?): whole chunks
            # (a 404 for the chunks themselves comes back from the plain request too)
            log.warn("fetch with deltas refused ({why}); fetching whole chunks", why=exc.message)
            return await self._fetch_batch(eng, batch)
        try:
            raw: dict[str, bytes]
            if prefixes:
                raw, failed = await self._in_thread(
                    decode_fetched, reply.body, prefixes, CHUNKS_PER_REQUEST
                )
            else:
                raw, failed = await self._in_thread(
                    decode_to_raw, reply.body, CHUNKS_PER_REQUEST
                ), []
        except SyncError as exc:
            raise ProtocolError(f"server sent bad chunk data: {exc.message}") from exc
        if failed:
            # our own base bytes did not rebuild these (a local base gone bad): never write
            # them; fetch them again without a delta
            log.warn("{n} chunk(s) did not rebuild from the local base; fetching them whole",
                     n=len(failed))
            raw.update(await self._fetch_batch(eng, failed))
        absent = [h for h in batch if h not in raw]
        if absent:
            raise ProtocolError(f"server left out {len(absent)} requested chunk(s)")
        return raw

    # -- push ----------------------------------------------------------------------------------

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]:
        """Which of ``hashes`` the server lacks (order kept, duplicates dropped)."""
        unique = list(dict.fromkeys(hashes))
        missing: list[str] = []
        for start in range(0, len(unique), MISSING_PER_REQUEST):
            batch = unique[start : start + MISSING_PER_REQUEST]
            data = _object(
                await self._json(
                    "POST", _eng(eng, "chunks", "missing"),
                    body={"chunks": batch, "answer": "index"}, compress=True,
                ),
                "missing",
            )
            if "missing_index" in data:  # the compact answer: positions in ``batch``
                index = _get(data, "missing_index", list, "missing")
                if not all(
                    type(i) is int and 0 <= i < len(batch) for i in index
                ) or index != sorted(set(index)):
                    raise ProtocolError("missing-chunks answer has bad positions")
                missing.extend(batch[i] for i in index)
                continue
            answer = _get(data, "missing", list, "missing")
            asked = set(batch)
            if not all(isinstance(h, str) and h in asked for h in answer):
                raise ProtocolError("missing-chunks answer names chunks that were not asked")
            missing.extend(answer)
        return missing

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int:
        """Upload chunks given as ``(hash, raw bytes)`` or ``(hash, raw bytes, DeltaHint)``;
        returns request body bytes sent.

        Chunks are zstd-compressed in a thread and packed up to 24 MiB / 4096 per request; two
        requests are on the wire at once (so the server verifies one while the next arrives)
        and the next one is packed meanwhile.
        """
        path = _eng(eng, "chunks")
        sent = 0
        in_flight: list[Deferred[int]] = []
        try:
            for batch in _upload_batches(chunks):
                body = await self._in_thread(_encode_upload, batch)
                while len(in_flight) >= PARALLEL_REQUESTS:
                    sent += await in_flight.pop(0)
                raw_total = sum(len(item[1]) for item in batch)
                in_flight.append(
                    Deferred.fromCoroutine(self._post_chunks(path, body, raw_total))
                )
            while in_flight:
                sent += await in_flight.pop(0)
        finally:
            for pending in in_flight:  # only left after a failure: stop the rest quietly
                pending.addErrback(lambda _: None)
                pending.cancel()
        return sent

    async def _post_chunks(self, path: str, body: bytes, raw_total: int) -> int:
        reply = await self._request("POST", path, data=body, content_type=CHUNKS_TYPE)
        present = _object(_decode_json(reply), "upload").get("present")
        if type(present) is int and present > 0:
            self.chunks_present += present
        if self.progress is not None:
            self.progress.advance(raw_total)
        return len(body)

    async def commit(self, eng: str, batch: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
        """Commit a batch of changes; a retried ``batch`` key returns the first answer."""
        body: dict[str, Any] = {"batch": batch, "changes": changes}
        keeper = self.keeper
        if keeper is not None:
            check = await keeper.check(None)
            body["history"] = {
                k: v for k, v in (
                    ("seq", check.seq), ("hash", check.hash), ("store", check.store),
                    ("generation", check.generation),
                ) if v is not None
            }
        data = _object(
            await self._json("POST", _eng(eng, "commit"), body=body, compress=True), "commit"
        )
        head = _get(data, "head", int, "commit")
        if keeper is not None:
            token, store, generation = _history_fields(data, "head_hash", "commit")
            await keeper.seen(head if token is not None else None, token, store, generation)
        results = _get(data, "results", list, "commit")
        if len(results) != len(changes):
            raise ProtocolError("commit answer has a different number of results than changes")
        for item in results:
            _get(_object(item, "commit result"), "status", str, "commit result")
        return data

    # -- engagement workflow (docs/protocol.md "Engagement workflow") ---------------------------

    async def register_copy(self, eng: str, copy_id: str, host: str) -> dict[str, Any]:
        """Tell the server about a new sync copy (at clone)."""
        return _object(
            await self._json("POST", _eng(eng, "copies"), body={"copy": copy_id, "host": host}),
            "copy",
        )

    async def report_copy(
        self, eng: str, copy_id: str, host: str, unsynced: int, since: datetime | None
    ) -> dict[str, Any]:
        """A contact: how many local changes this copy holds unsynced, and since when. The
        answer carries the engagement's active locks and its sign-off state."""
        body = {
            "host": host,
            "unsynced": unsynced,
            "since": None if since is None else _iso(since),
        }
        data = _object(
            await self._json("POST", _eng(eng, "copies", copy_id, "report"), body=body), "report"
        )
        _get(data, "locks", list, "report")
        return data

    async def checkout(self, eng: str, path: str, seconds: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"path": path, "seconds": seconds}
        return _object(await self._json("POST", _eng(eng, "locks"), body=body), "lock")

    async def checkin(self, eng: str, path: str) -> dict[str, Any]:
        return _object(
            await self._json("POST", _eng(eng, "locks", "release"), body={"path": path}), "lock"
        )

    async def locks(self, eng: str) -> list[dict[str, Any]]:
        data = _object(await self._json("GET", _eng(eng, "locks")), "locks")
        return [_object(item, "lock") for item in _get(data, "locks", list, "locks")]

    async def history(self, eng: str, path: str) -> list[dict[str, Any]]:
        data = _object(
            await self._json("GET", _eng(eng, "history"), params={"path": path}), "history"
        )
        return [_object(item, "version") for item in _get(data, "versions", list, "history")]

    async def restore(self, eng: str, path: str, version: int, batch: str) -> dict[str, Any]:
        """Make ``version`` of ``path`` its newest version (retried safely: ``batch``)."""
        body = {"path": path, "version": version, "batch": batch}
        data = _object(await self._json("POST", _eng(eng, "restore"), body=body), "restore")
        _get(data, "head", int, "restore")
        return data

    async def export(self, eng: str, at: datetime) -> tuple[int, list[dict[str, Any]]]:
        """The files as they stood at ``at``: ``(seq, [{path, seq, content, size, available}])``."""
        data = _object(
            await self._json(
                "GET", _eng(eng, "export"), params={"at": _iso(at)}
            ),
            "export",
        )
        files = [_object(item, "export file") for item in _get(data, "files", list, "export")]
        return _get(data, "seq", int, "export"), files

    # -- transport -------------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: float | None = None,
        compress: bool = False,
    ) -> Any:
        reply = await self._request(
            method, path, body=body, params=params, auth=auth, timeout=timeout,
            compress=compress,
        )
        return _decode_json(reply)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        content_type: bytes | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        relogin: bool = True,
        timeout: float | None = None,
        expect: bytes = JSON_TYPE,
        compress: bool = False,
    ) -> Reply:
        """One call with retries; on ``session_expired`` sign in again once and repeat.
        ``compress``: the endpoint takes a zstd-encoded JSON body (commit, missing, fetch)."""
        encoding: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            content_type = JSON_TYPE
            if compress and self.compress_requests and bodycodec.worth_compressing(data):
                data = (
                    await self._in_thread(bodycodec.compress, data)
                    if len(data) > IN_THREAD_BYTES else bodycodec.compress(data)
                )
                encoding = b"zstd"
        relogged = False
        while True:
            try:
                return await retrying(
                    self._reactor,
                    lambda: self._attempt(
                        method, path, data, content_type, params, auth, timeout, expect,
                        encoding,
                    ),
                    attempts=self.max_attempts,
                    is_retryable=lambda exc: isinstance(exc, NetworkError) and exc.retryable,
                    backoff=self.backoff,
                )
            except SessionExpired:
                if not (auth and relogin and self.relogin is not None) or relogged:
                    raise
                relogged = True
                log.info("session expired at {url}; signing in again", url=self.base_url)
                self.token = await self.relogin()
            except NetworkError as exc:
                if exc.retryable:
                    raise NetworkError(
                        f"{exc} (gave up after {self.max_attempts} attempts)"
                    ) from exc
                raise

    async def _attempt(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: bytes | None,
        params: Mapping[str, str] | None,
        auth: bool,
        timeout: float | None,
        expect: bytes,
        encoding: bytes | None = None,
    ) -> Reply:
        headers: dict[bytes, list[bytes]] = {b"Accept": [expect], b"Accept-Encoding": [b"zstd"]}
        if encoding is not None:
            headers[b"Content-Encoding"] = [encoding]
        if auth and self.token:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode("ascii")]
        if auth and self.copy_id:
            headers[b"Smartsync-Copy"] = [self.copy_id.encode("ascii")]
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        self.requests += 1
        exchange = Deferred.fromCoroutine(
            self._exchange(method, self.base_url + path, headers, data, params)
        )
        # Cancelling an Agent request fails it with ResponseNeverReceived, which looks like a
        # network error; the flags tell a timeout (retry) from a caller's cancel (stop).
        timed_out = False
        cancelled = False

        def cancel_by_caller(_: Deferred[Reply]) -> None:
            nonlocal cancelled
            cancelled = True
            exchange.cancel()

        waiter: Deferred[Reply] = Deferred(cancel_by_caller)

        def relay(result: Any) -> None:
            if waiter.called:
                return  # already failed by the cancel; drop the late result
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

        exchange.addBoth(relay)

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            exchange.cancel()

        limit = self.timeout if timeout is None else timeout
        timer = self._reactor.callLater(limit, expire)
        try:
            reply = await waiter
        except Exception as exc:
            if cancelled:
                raise CancelledError() from exc
            if timed_out:
                raise NetworkError(
                    f"{self.base_url}: no answer to {method} {path} within {limit:g}s",
                    retryable=True,
                ) from None
            if isinstance(exc, _TRANSPORT_ERRORS):
                raise self._transport_error(exc) from exc
            raise
        finally:
            if timer.active():
                timer.cancel()
        received = reply.wire_bytes if reply.wire_bytes >= 0 else len(reply.body)
        self.bytes_sent += len(data or b"")
        self.bytes_received += received
        await self._throttle(len(data or b"") + received)
        _raise_for_status(reply, self.base_url)
        return reply

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[bytes, list[bytes]],
        data: bytes | None,
        params: Mapping[str, str] | None,
    ) -> Reply:
        response = await self._http.request(
            method,
            url,
            headers=Headers(headers),
            data=(
                cast(IBodyProducer, BytesProducer(data))
                if data is not None and len(data) > PIECE_BYTES else data
            ),
            params=dict(params) if params else None,
            allow_redirects=False,  # a redirect must never carry the bearer token elsewhere
            reactor=self._reactor,
        )
        body = await response.content()
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        encoding = (response.headers.getRawHeaders(b"content-encoding") or [None])[0]
        if encoding is None:
            return Reply(response.code, body, ctype.decode("latin-1"))
        try:
            decode = (bodycodec.decode, body, encoding.decode("latin-1"), RESPONSE_CAP)
            raw = (
                await self._in_thread(*decode) if len(body) > IN_THREAD_BYTES else decode[0](*decode[1:])
            )
        except SyncError as exc:
            raise ProtocolError(f"server sent a body that does not decode: {exc.message}") from exc
        return Reply(response.code, raw, ctype.decode("latin-1"), len(body))

    def _transport_error(self, exc: BaseException) -> NetworkError:
        if _is_tls_failure(exc):
            describe = getattr(self.policy, "failure_message", None)
            presented = getattr(self.policy, "presented", None)
            if callable(describe) and (presented is not None or _is_verify_failure(exc)):
                return TrustError(describe(self.base_url), presented=presented)
            return TrustError(f"TLS handshake with {self.base_url} failed: {_describe(exc)}")
        return NetworkError(f"cannot reach {self.base_url}: {_describe(exc)}", retryable=True)

    async def _throttle(self, nbytes: int) -> None:
        if not self.bwlimit:
            return
        now = self._reactor.seconds()
        self._bw_free_at = max(now, self._bw_free_at) + nbytes / self.bwlimit
        if self._bw_free_at > now:
            await deferLater(self._reactor, self._bw_free_at - now, lambda: None)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)


# -- helpers -------------------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _eng(name: str, *rest: str) -> str:
    return "/v1/engagements/" + "/".join(quote(part, safe="") for part in (name, *rest))


def _raise_for_status(reply: Reply, url: str) -> None:
    if 200 <= reply.status < 300:
        return
    code, message, details = _error_fields(reply)
    if reply.status in RETRY_STATUSES:
        raise NetworkError(
            f"{url} is unavailable (HTTP {reply.status}{': ' + message if message else ''})",
            retryable=True,
        )
    if reply.status == 401:
        if code == "session_expired":
            raise SessionExpired(
                f"session at {url} expired or ended; run 'smartsync login {url}'"
            )
        raise AuthError(f"sign-in failed: {message or 'user name or password not accepted'}")
    raise refusal(
        code or f"http_{reply.status}", message or f"HTTP {reply.status}", reply.status, details
    )


def _error_fields(reply: Reply) -> tuple[str | None, str, dict[str, Any]]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        return None, "", {}
    if not isinstance(data, dict):
        return None, "", {}
    code = data.get("error")
    message = data.get("message")
    details = {k: v for k, v in data.items() if k not in ("error", "message")}
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else "",
        details,
    )


def _decode_json(reply: Reply) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise ProtocolError(f"server answered HTTP {reply.status} without valid JSON") from exc


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} answer is not a JSON object")
    return value


def _get(data: Mapping[str, Any], key: str, kind: type, what: str, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    # bool is an int in Python; the protocol never uses one for the other.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: field {key!r} is missing or not {kind.__name__}")
    return value


def _file_state(item: Any) -> FileState:
    data = _object(item, "snapshot file")
    return FileState(
        path=_get(data, "path", str, "snapshot file"),
        seq=_get(data, "seq", int, "snapshot file"),
        content=_get(data, "content", str, "snapshot file"),
        size=_get(data, "size", int, "snapshot file"),
    )


def _change(item: Any) -> Change:
    data = _object(item, "change")
    kind = data.get("kind")
    if kind not in ("put", "delete"):
        raise ProtocolError(f"change has unknown kind {kind!r}")
    content = _get(data, "content", str, "change", optional=True)
    if kind == "put" and content is None:
        raise ProtocolError("a put change has no content")
    return Change(
        seq=_get(data, "seq", int, "change"),
        path=_get(data, "path", str, "change"),
        kind=kind,
        content=content,
        size=_get(data, "size", int, "change"),
        prev_seq=_get(data, "prev_seq", int, "change", optional=True),
        user=_get(data, "user", str, "change"),
        session=_get(data, "session", str, "change", optional=True),
        time=_parse_time(_get(data, "time", str, "change")),
        conflict_of=_get(data, "conflict_of", str, "change", optional=True),
        batch=_get(data, "batch", str, "change", optional=True),
        record_hash=_get(data, "hash", str, "change", optional=True),
    )


def _history_fields(
    data: dict[str, Any], token_key: str | None, what: str
) -> tuple[str | None, str | None, int | None]:
    """(record token at ``token_key``, store id, generation) of an answer; None when absent
    (a server older than history checks)."""
    token = None if token_key is None else _get(data, token_key, str, what, optional=True)
    return (
        token,
        _get(data, "store", str, what, optional=True),
        _get(data, "generation", int, what, optional=True),
    )


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError(f"change time {text!r} is not ISO 8601") from exc
    if when.tzinfo is None:
        raise ProtocolError(f"change time {text!r} has no time zone")
    return when.astimezone(UTC)


def _wanted(item: ChunkWanted) -> tuple[str, tuple[int, DeltaHint | None]]:
    if isinstance(item, str):
        return item, (MAX_CHUNK, None)
    if isinstance(item, ChunkRef):
        return item.hash, (item.size, None)
    if len(item) == 3:
        return item[0], (item[1], item[2])  # type: ignore[misc]
    return item[0], (item[1], None)


def _fetch_batches(wanted: Mapping[str, tuple[int, DeltaHint | None]]) -> Iterator[list[str]]:
    """Hashes in requests of at most ``FETCH_DATA_LIMIT`` raw bytes, ``CHUNKS_PER_REQUEST``
    chunks and ``FETCH_BASE_LIMIT`` bytes of base ranges."""
    batch: list[str] = []
    total = based = 0
    for digest, (size, hint) in wanted.items():
        size = min(max(size, 0), MAX_CHUNK)
        prefix = len(hint.prefix) if hint is not None else 0
        if batch and (
            total + size > FETCH_DATA_LIMIT or len(batch) >= CHUNKS_PER_REQUEST
            or based + prefix > FETCH_BASE_LIMIT
        ):
            yield batch
            batch, total, based = [], 0, 0
        batch.append(digest)
        total += size
        based += prefix
    if batch:
        yield batch


def _fetch_body(
    batch: list[str], hints: Mapping[str, DeltaHint]
) -> tuple[dict[str, Any], dict[tuple[str, int, int], bytes]]:
    """The fetch request for ``batch`` (with ``bases``/``deltas`` for the hinted chunks) and
    the base ranges it names, by ``(base, offset, length)``."""
    body: dict[str, Any] = {"chunks": batch}
    prefixes: dict[tuple[str, int, int], bytes] = {}
    bases: dict[str, int] = {}
    deltas: list[list[int]] = []
    for i, digest in enumerate(batch):
        hint = hints.get(digest)
        if hint is None or not hint.prefix:
            continue
        b = bases.setdefault(hint.base, len(bases))
        deltas.append([i, b, hint.offset, len(hint.prefix)])
        prefixes[(hint.base, hint.offset, len(hint.prefix))] = hint.prefix
    if deltas:
        body["bases"] = list(bases)
        body["deltas"] = deltas
    return body, prefixes


def _upload_batches(chunks: Iterable[UploadItem]) -> Iterator[list[UploadItem]]:
    # Compression never grows a record (raw is sent when zstd does not help, a delta only when
    # it is smaller), so packing by raw size plus record headers keeps every body in the limit.
    # The base bytes a request's delta records name are capped per request (protocol.md,
    # Limits): counted with repeats, so the server's count (each range once) is never higher.
    batch: list[UploadItem] = []
    total = based = 0
    for item in chunks:
        cost = len(item[1]) + RECORD_HEADER
        base = len(item[2].prefix) if len(item) > 2 else 0  # type: ignore[misc]
        if batch and (
            total + cost > UPLOAD_BODY_LIMIT or len(batch) >= CHUNKS_PER_REQUEST
            or based + base > UPLOAD_BASE_LIMIT
        ):
            yield batch
            batch, total, based = [], 0, 0
        batch.append(item)
        total += cost
        based += base
    if batch:
        yield batch


def _encode_upload(batch: list[UploadItem]) -> bytes:
    records = []
    for item in batch:
        digest, raw = item[0], item[1]
        codec, payload = compress_chunk(raw)
        if len(item) > 2:
            hint = item[2]  # type: ignore[misc]
            delta = delta_payload(hint.base, hint.offset, hint.prefix, raw)
            if len(delta) < len(payload):
                codec, payload = CODEC_DELTA, delta
        records.append((digest, codec, len(raw), payload))
    return encode_records(records)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (treq/Agent keep reasons as Failure lists)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if isinstance(item, Failure):
            item = item.value
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(getattr(item, "reasons", None) or [])
        todo.extend(x for x in (item.__cause__, item.__context__) if x is not None)


def _is_tls_failure(exc: BaseException) -> bool:
    return any(
        isinstance(e, SSL.Error) or type(e).__name__ == "VerificationError" for e in _causes(exc)
    )


def _is_verify_failure(exc: BaseException) -> bool:
    for e in _causes(exc):
        if type(e).__name__ == "VerificationError":
            return True
        if isinstance(e, SSL.Error) and "certificate verify failed" in str(e):
            return True
    return False


def _describe(exc: BaseException) -> str:
    for e in _causes(exc):
        if isinstance(e, net_error.ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, net_error.DNSLookupError):
            return "host name not found"
        if isinstance(e, net_error.TimeoutError):
            return "connection timed out"
        if isinstance(e, SSL.Error):
            return f"TLS error {e}"
    if isinstance(exc, _newclient.ResponseNeverReceived | _newclient.ResponseFailed):
        return "connection lost before the answer arrived"
    return str(exc) or type(exc).__name__
