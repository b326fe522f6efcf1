"""The branch daemon's public site: reads answered locally, writes forwarded to central.

A branch office's daemon (docs/branch-offices.md) serves the normal ``SyncAPI`` over its hot
standby (``storage/standby.py``), with this in front of it:

- ``BranchRequest`` (the Site's request factory) decides per request, from the method and path
  alone, where it goes. A write to an engagement (chunk upload, commit, locks, restore, copies,
  management) is streamed to central as its body arrives (``central.BodyPipe``), once the
  bearer token checked out against the replicated sessions, so nothing is buffered whole here.
  Sign-in, sign-out and a new copy's registration are small bodies, forwarded once read.
- ``BranchRoot`` answers: local requests go to the ``SyncAPI`` resource; forwarded ones get
  central's answer. A commit or restore answer carries the engagement's new ``head``: the answer
  waits until the standby has replayed it (``ReplicaWatcher.wait_for_head``), so a user never
  sees their own write vanish; past ``commit_wait`` seconds it is ``503 replica_behind`` (the
  commit is on central; the client's retry is idempotent by its batch key). A sign-in waits the
  same way for central's new session row, then answers with central's token.
- ``POST .../chunks/fetch`` is local, after the chunks the branch lacks were fetched from
  central (``ChunkFiller``): with the user's own session (central checks their role again, the
  branch holds no secret of its own), verified by hash off the reactor, written to the cache's
  packs, once per chunk however many requests want it at the same time.

When central cannot be reached, reads keep working from what the branch has (a clone of a
carried engagement included: its copy's registration is answered here, and central learns of
the copy at its first report), and writes get ``503 central_unreachable`` ("kept locally, will sync when the central server is back"), which
the client retries like any 503.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from smartsyncd.auth.sessions import hash_token
from smartsyncd.core import chunkstream
from smartsyncd.core.errors import (
    BadChunk,
    CentralUnreachable,
    ReplicaBehind,
    SyncError,
    Unavailable,
)
from smartsyncd.core.model import VerifiedChunk
from smartsyncd.storage.api import CopyRecord
from smartsyncd.web.access import Authorizer
from smartsyncd.web.admission import route_body_limit
from smartsyncd.web.bodies import LimitedRequest, expect_object, get_str, read_json
from smartsyncd.web.branchreplay import ReplicaWatcher, poll_until
from smartsyncd.web.central import BodyPipe, CentralLink
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.errors import json_bytes
from smartsyncd.web.limits import Limits
from smartsyncd.web.parse import hash_list, json_body
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.shapes import CHUNKS_CONTENT_TYPE, copy_json
from smartsyncd.web.upload import _network_transport

log = Logger(namespace="smartsyncd.branch")

_ENGAGEMENTS = b"/v1/engagements/"
_LOCAL_POSTS = (b"/manifests", b"/chunks/fetch")  # reads with a body
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host",
    b"content-length", b"proxy-authorization", b"proxy-connection", b"expect", b"trailer",
    b"accept-encoding",  # central answers plain JSON: the branch reads commit answers
})
_COPY_REGISTRATION = re.compile(rb"/v1/engagements/[^/]+/copies")
_COPY_REPORT = re.compile(rb"/v1/engagements/[^/]+/copies/[^/]+/report")
FETCH_SLICE = 256  # chunks per request to central (under its 32 MiB answer limit)
LOCAL, FORWARD, STREAM = "local", "forward", "stream"


def route_kind(method: bytes | None, uri: bytes | None) -> str:
    """``local`` (answered here), ``forward`` (sent to central once read: sign-in/out) or
    ``stream`` (an engagement write, streamed to central as it arrives)."""
    if method in (b"GET", b"HEAD") or not uri:
        return LOCAL
    path = unquote_to_bytes(uri.split(b"?", 1)[0])
    if path in (b"/v1/login", b"/v1/logout") or _COPY_REGISTRATION.fullmatch(path):
        return FORWARD
    if path.startswith(_ENGAGEMENTS) and path.count(b"/") >= 4:
        if path.endswith(_LOCAL_POSTS) and path.count(b"/") == 4 + path.endswith(b"/fetch"):
            return LOCAL
        return STREAM
    return LOCAL  # anything else: the local app answers (404/405 as on central)


@dataclass
class Branch:
    """Everything the branch's requests and root share."""

    central: CentralLink
    authorizer: Authorizer
    replica: ReplicaWatcher
    store: Any  # storage/standby.BranchStore: sessions, engagements, its chunk cache
    run_blocking: RunBlocking
    limits: Limits
    clock: Any
    commit_wait: float = 30.0


def forward_headers(request: Request) -> Headers:
    headers = Headers()
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in _HOP_BY_HOP:
            headers.setRawHeaders(name, values)
    headers.addRawHeader(b"x-forwarded-for", client_address(request).encode("ascii", "replace"))
    return headers


class BranchRequest(LimitedRequest):
    """A request that streams an engagement write to central as it arrives."""

    def __init__(self, *args: object, branch: Branch, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.branch = branch
        self.pipe: BodyPipe | None = None
        self.opened: Deferred[None] | None = None
        self.forwarded: Deferred[tuple[int, Headers, bytes]] | None = None

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if self._refused:
            return
        channel = self.channel
        method, uri = getattr(channel, "_command", None), getattr(channel, "_path", None)
        limits = self.branch.limits
        if route_kind(method, uri) != STREAM:
            self.max_body = route_body_limit(method, uri, limits)
            if length is not None and length > self.max_body:
                self._refuse()
            return
        self.max_body = max(limits.chunk_body, limits.json_body)
        if length is not None and length > self.max_body:
            self._refuse()
            return
        transport = _network_transport(channel.transport)
        pause = transport.pauseProducing if transport else (lambda: None)
        resume = transport.resumeProducing if transport else (lambda: None)
        self.pipe = BodyPipe(length, pause, resume)
        pause()  # nothing is read before the session checked out
        self.opened = Deferred.fromCoroutine(self._open(method or b"POST", uri or b"/", resume))

    async def _open(self, method: bytes, uri: bytes, resume: Callable[[], None]) -> None:
        try:
            await self.branch.authorizer.check_session(self)
        except SyncError as e:
            self.refuse_early(e)
            return
        except Exception:
            log.failure("session check before forwarding failed")
            self.refuse_early(Unavailable("the session could not be checked; try again"))
            return
        if self._disconnected:
            return
        self.mark_authenticated()
        self.requestHeaders.removeHeader(b"expect")  # central says "100 Continue" to us
        assert self.pipe is not None
        self.forwarded = Deferred.fromCoroutine(
            self.branch.central.request(method, uri, forward_headers(self), self.pipe)
        )
        self.forwarded.addErrback(self._keep_failure)
        resume()

    def _keep_failure(self, failure: Failure) -> Failure:
        if self.pipe is not None:
            self.pipe.stopProducing()
        return failure

    def refuse_early(self, error: SyncError) -> None:
        self._answer_and_close(error.status, b"Refused", error.to_json())

    def handleContentChunk(self, data: bytes) -> None:
        if self.pipe is None:
            super().handleContentChunk(data)
            return
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse()
            return
        self.pipe.write(data)

    def connectionLost(self, reason: Failure) -> None:
        """The client went away mid-body: the request to central is abandoned too (central
        drops an incomplete upload as it would the client's)."""
        forwarded = self.forwarded
        if self.pipe is not None and forwarded is not None and not forwarded.called:
            forwarded.addErrback(lambda _f: None)  # nobody will answer it
            forwarded.cancel()
        super().connectionLost(reason)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.pipe is not None:  # the whole body arrived (and went on to central)
            self.pipe.end()
        super().requestReceived(command, path, version)


def branch_request_factory(branch: Branch) -> Callable[..., BranchRequest]:
    return partial(BranchRequest, branch=branch)


class BranchRoot(Resource):
    """The Site's root: the local ``SyncAPI`` resource, or central's answer."""

    isLeaf = True

    def __init__(self, branch: Branch, local: IResource) -> None:
        super().__init__()
        self.branch = branch
        self.local = local
        self.filler = ChunkFiller(branch)

    def render(self, request: Request) -> bytes | int:
        kind = route_kind(request.method, request.uri)
        if kind == LOCAL and not (request.method == b"POST" and request.path.endswith(b"/chunks/fetch")):
            return self.local.render(request)  # type: ignore[no-any-return]
        Deferred.fromCoroutine(self._answer(request, kind))
        return NOT_DONE_YET

    async def _answer(self, request: Request, kind: str) -> None:
        try:
            if kind == LOCAL:  # a chunk fetch: fill the cache, then the local app answers
                await self.filler.fill(request)
                body = self.local.render(request)
                if body is not NOT_DONE_YET:
                    request.write(body)
                    request.finish()
                return
            try:
                status, headers, data = await self._forward(request, kind)
            except CentralUnreachable:
                if not _COPY_REGISTRATION.fullmatch(request.path):
                    raise
                status, headers, data = await self._register_here(request)
            data = await self._settle(request, status, data)
        except SyncError as e:
            status, headers, data = e.status, Headers(), json_bytes(e.to_json())
            headers.setRawHeaders(b"content-type", [b"application/json"])
        except Exception:
            log.failure("branch request {path} failed", path=request.path.decode("latin-1"))
            status, headers, data = 500, Headers(), json_bytes(
                {"error": "internal", "message": "internal error at the branch server"})
            headers.setRawHeaders(b"content-type", [b"application/json"])
        if request._disconnected:  # noqa: SLF001 - Twisted has no public name for it
            return
        request.setResponseCode(status)
        for name, values in headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() not in (b"server", b"date"):
                request.responseHeaders.setRawHeaders(name, values)
        request.write(data)
        request.finish()

    async def _register_here(self, request: Request) -> tuple[int, Headers, bytes]:
        """A new copy's registration while central is out of reach: answered here, so a clone
        of what the branch has works offline. Central learns of the copy at its first report
        (each sync reports, and a report registers a copy central does not know)."""
        branch = self.branch
        name = unquote_to_bytes(request.path[len(_ENGAGEMENTS):].split(b"/", 1)[0]).decode("utf-8")
        access = await branch.authorizer.authorize(request, name, "read")
        assert request.content is not None
        request.content.seek(0)
        body = expect_object(read_json(request, branch.limits.small_json))
        copy_id = get_str(body, "copy", max_len=64, non_empty=True)
        host = get_str(body, "host", max_len=255, non_empty=True)
        now = datetime.fromtimestamp(branch.clock.seconds(), UTC)
        record = CopyRecord(copy_id, access.session.user, host, now, now, 0, None, None, None)
        log.info("copy {copy} of {engagement} registered at the branch while central is unreachable",
                 copy=copy_id, engagement=name)
        headers = Headers({b"content-type": [b"application/json"]})
        return 200, headers, json_bytes(copy_json(record))

    async def _forward(self, request: Request, kind: str) -> tuple[int, Headers, bytes]:
        if kind == STREAM:
            assert isinstance(request, BranchRequest) and request.opened is not None
            await request.opened
            if request.forwarded is None:  # refused before the body (answered already)
                raise CentralUnreachable("refused")
            return await request.forwarded
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read()
        return await self.branch.central.request(
            request.method, request.uri, forward_headers(request), FileBodyProducer(BytesIO(body))
        )

    async def _settle(self, request: Request, status: int, data: bytes) -> bytes:
        """Wait for the standby to hold what central just wrote (a commit's head, a new
        session) before the answer goes out."""
        if status != 200:
            return data
        try:
            answer = json.loads(data)
        except ValueError:
            return data
        if not isinstance(answer, dict):
            return data
        branch = self.branch
        if request.path == b"/v1/login" and isinstance(answer.get("token"), str):
            token_hash = hash_token(answer["token"])

            async def replayed() -> bool:
                return await branch.store.get_session(token_hash) is not None

            if not await poll_until(replayed, branch.clock, branch.commit_wait):
                raise ReplicaBehind(
                    "signed in at the central server, but this branch has not received the"
                    " session yet; sign in again in a moment"
                )
            return data
        head = answer.get("head")
        # a copy report's head is only read (is there anything to pull?): a pull the replica
        # cannot serve yet waits for the next sync; only a write's answer waits here
        if (isinstance(head, int) and request.path.startswith(_ENGAGEMENTS)
                and not _COPY_REPORT.fullmatch(request.path)):
            name = unquote_to_bytes(request.path[len(_ENGAGEMENTS):].split(b"/", 1)[0])
            engagement = await branch.store.get_engagement(name.decode("utf-8"))
            if engagement is not None and not await branch.replica.wait_for_head(
                engagement.id, head, branch.commit_wait
            ):
                raise ReplicaBehind(
                    f"the change is saved on the central server (head {head}), but this branch"
                    f" has not replayed it within {branch.commit_wait:g} s; sync again shortly"
                    " (sending it again is safe)", head=head,
                )
        return data


class ChunkFiller:
    """Fetch the chunks a fetch request names that the branch lacks, each once."""

    def __init__(self, branch: Branch) -> None:
        self.branch = branch
        self._inflight: dict[tuple[int, str], _Flight] = {}
        self.on_cached: Callable[[], None] | None = None  # the cache grew (service/cachetrim.py)

    async def fill(self, request: Request) -> None:
        branch = self.branch
        name = unquote_to_bytes(request.path[len(_ENGAGEMENTS):].split(b"/", 1)[0]).decode("utf-8")
        access = await branch.authorizer.authorize(request, name, "read")
        raw = json_body(request, branch.limits.small_json)
        wanted = hash_list(await branch.run_blocking(json.loads, raw), branch.limits.chunks_per_request)
        assert request.content is not None
        request.content.seek(0)  # the local app reads it again
        await self.fill_hashes(access.engagement.id, request.uri, forward_headers(request), wanted)

    async def fill_hashes(self, engagement_id: int, uri: bytes, headers: Headers, wanted: Sequence[str]) -> int:
        """Fetch the ones of ``wanted`` the cache lacks from central (``POST uri`` with
        ``headers``: a user's token, or the branch's credential for the prefetch), waiting for
        fetches already in flight; returns the chunk bytes this call brought over the link."""
        branch = self.branch
        lacking = branch.store.cache.lacking(engagement_id, wanted)  # in memory: same turn
        flights = {id(f): f for f in (self._inflight.get((engagement_id, h)) for h in lacking) if f}
        mine = [h for h in lacking if (engagement_id, h) not in self._inflight]
        own: list[_Flight] = []
        for start in range(0, len(mine), FETCH_SLICE):
            part = mine[start : start + FETCH_SLICE]
            flight = _Flight()
            for h in part:
                self._inflight[(engagement_id, h)] = flight
            flights[id(flight)] = flight
            own.append(flight)
            Deferred.fromCoroutine(self._fetch(uri, headers, engagement_id, part, flight))
        for flight in list(flights.values()):
            await flight.wait()
        return sum(f.bytes for f in own)

    async def _fetch(self, uri: bytes, headers: Headers, engagement_id: int, hashes: list[str], flight: _Flight) -> None:
        branch = self.branch
        try:
            headers = headers.copy()
            headers.removeHeader(b"content-encoding")
            headers.setRawHeaders(b"content-type", [b"application/json"])
            headers.setRawHeaders(b"accept", [CHUNKS_CONTENT_TYPE])
            body = json.dumps({"chunks": hashes}).encode()
            status, _, data = await branch.central.request(b"POST", uri, headers, FileBodyProducer(BytesIO(body)))
            if status != 200:
                raise _central_refusal(status, data)
            flight.bytes = len(data)
            chunks = await branch.run_blocking(_verified, data, hashes)
            await branch.store.cache_chunks(engagement_id, chunks)
            if self.on_cached is not None:
                self.on_cached()
            failure = None
        except Exception:
            failure = Failure()
        for h in hashes:
            self._inflight.pop((engagement_id, h), None)
        flight.finish(failure)


def _verified(data: bytes, hashes: list[str]) -> list[VerifiedChunk]:
    """Central's chunks, each checked against its hash; exactly the ones asked for."""
    chunks = chunkstream.verify_records(chunkstream.decode_records(data, max_records=len(hashes)))
    if {c.hash for c in chunks} != set(hashes):
        raise BadChunk("the central server answered with other chunks than asked for")
    return chunks


def _central_refusal(status: int, data: bytes) -> SyncError:
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {}
    error = SyncError(str(answer.get("message") or f"central answered {status}"))
    error.status = status
    error.code = str(answer.get("error") or "bad_request")
    return error


class _Flight:
    """One fetch from central that several requests may wait for."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []
        self.bytes = 0  # central's answer's size
        self._outcome: Failure | None | bool = False  # False: still running

    def wait(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._outcome is False:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def finish(self, failure: Failure | None) -> None:
        self._outcome = failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[None]) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(None)
