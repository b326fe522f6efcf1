"""Streaming chunk uploads: ``POST /v1/engagements/<eng>/chunks`` is handled as its body arrives.

``UploadRequest`` (the Site's request factory, see ``web.app.make_site``, which binds it to
the ``UploadServices`` it needs) recognises the chunk upload route when the headers are complete (``gotLength``) and hands the body to a
``ChunkUploadStream`` instead of buffering it:

1. Reading stops (the transport is paused) until the bearer token, the engagement's visibility
   and the ``write`` role are checked by the ``Authorizer`` of every route (web/access.py). A
   refusal is answered at once (401/403/404 JSON, ``Connection: close``) and the body is never
   read; an ``Expect: 100-continue`` is answered only after the check passed.
2. Record headers are parsed on the reactor as bytes arrive (``chunkstream.parse_header``: the
   same caps as ``decode_records``, a count cap, the endpoint's byte cap -> 413 and close).
   Complete records are grouped into batches of about ``BATCH_BYTES`` (4 MiB).
3. One worker per request verifies each batch on the CPU pool (capped decompression, BLAKE3),
   while the previous verified batch is appended to the pack's temp file on the file pool
   (``ServerStore.open_upload``). Delta records get their base ranges per batch.
4. When the last byte is in, Klein runs ``PushRoutes.upload_chunks``, which awaits ``finish``: the
   last batch, then fsync + rename + fsync folder, then one DB transaction indexing every chunk,
   then the answer. Any bad record refuses the whole request (400 ``bad_chunk``): what was
   written is deleted, nothing is indexed, and the rest of the body is read and dropped so the
   connection stays usable. A dropped connection aborts the same way.

A body sent with ``Content-Encoding: zstd`` (issue 15: a first upload of many small files as
one compression stream; the /missing answer's ``"zstd"`` tells a client it may) is at most
``chunkstream.STREAM_BODY_CAP`` bytes as sent (413 and close beyond), held until its last
byte, then decoded on the CPU pool with the same cap on its decoded size (a zstd bomb costs
nothing; damage or data after the frame is 400) and handled as a plain body from there on;
its raw records are compressed for the store as a sender would have. Any other encoding is
400. Nothing is stored when any of this fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from smartsyncd.core import bodycodec, chunkstream
from smartsyncd.core.errors import BadChunk, BadRequest, SyncError, Unavailable
from smartsyncd.runtime.malloctune import fix_mmap_threshold
from smartsyncd.storage.api import ChunkStore, ChunkUpload, VerifiedChunk
from smartsyncd.web.access import Access, Authorizer
from smartsyncd.web.admission import is_commit, route_body_limit
from smartsyncd.web.bodies import LimitedRequest
from smartsyncd.web.deltas import DeltaBases
from smartsyncd.web.errors import json_bytes
from smartsyncd.web.limits import Limits
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.segments import engagement_name

log = Logger(namespace="smartsyncd.web")

# Records handed to the worker at a time (about 128 chunks): each batch is two thread hand-offs
# (verify, append), about a tenth of the reactor's time per 256 MiB at 1 MiB batches.
BATCH_BYTES = 4 << 20
# Socket read size on a connection that uploads (Twisted's default is 64 KiB): fewer reactor
# turns, recv calls and TLS BIO hand-offs per MiB.
# Measured on a 256 MiB upload: the reactor thread's CPU 1.36 s -> 1.24 s (medians of 5).
READ_SIZE = 256 * 1024
_PREFIX = b"/v1/engagements/"
_SUFFIX = b"/chunks"


def upload_engagement(method: bytes | None, uri: bytes | None) -> str | None:
    """The engagement name when ``method uri`` is the chunk upload route, else None."""
    if method != b"POST" or not uri:
        return None
    path = unquote_to_bytes(uri.split(b"?", 1)[0])
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    name = path[len(_PREFIX) : -len(_SUFFIX)]
    if not name or b"/" in name:
        return None
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class UploadServices:
    """What a streamed upload works with: the checks, the chunk store, the delta bases, the CPU
    pool and the limits (``make_site`` binds them to the Site's request factory)."""

    authorizer: Authorizer
    chunks: ChunkStore
    deltas: DeltaBases
    run_blocking: RunBlocking
    limits: Limits


def upload_request_factory(services: UploadServices) -> Callable[..., UploadRequest]:
    """The ``Site.requestFactory`` whose requests stream uploads with ``services``."""
    fix_mmap_threshold()  # uploads' and downloads' MiB buffers freed to the system when done
    return partial(UploadRequest, services=services)


class _Reading(Protocol):
    """The socket side of a connection: reading can be paused."""

    def pauseProducing(self) -> None: ...  # noqa: N802 - Twisted's names
    def resumeProducing(self) -> None: ...  # noqa: N802


def _network_transport(transport: object) -> _Reading | None:
    """The transport that reads from the socket (under TLS, the one below the TLS layer)."""
    while transport is not None and not hasattr(transport, "pauseProducing"):
        transport = getattr(transport, "transport", None)
    return transport  # type: ignore[return-value]  # it has pauseProducing


class UploadRequest(LimitedRequest):
    """``LimitedRequest`` that streams the body of a chunk upload (see the module docstring)."""

    upload: ChunkUploadStream | None = None

    def __init__(self, *args: object, services: UploadServices, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._services = services

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if self._refused:
            return
        channel = self.channel
        method, uri = getattr(channel, "_command", None), getattr(channel, "_path", None)
        eng = upload_engagement(method, uri)
        limits = self._services.limits
        if eng is None:
            self._limit_by_route(limits, method, uri, length)
            return
        encoding = self.requestHeaders.getRawHeaders(b"content-encoding")
        upload = ChunkUploadStream(self._services, self, eng, self._take_continue(),
                                   encoding[0].decode("latin-1") if encoding else None)
        if length is not None and length > upload.limit:
            self._refuse(upload.limit)
            return
        self.upload = upload
        upload.start()

    def _take_continue(self) -> bool:
        """Whether the client asked for "100 Continue"; we answer it ourselves once allowed."""
        expect = self.requestHeaders.getRawHeaders(b"expect") or []
        self.requestHeaders.removeHeader(b"expect")
        return bool(expect) and expect[0].lower() == b"100-continue"

    def _limit_by_route(self, limits: Limits, method: bytes | None, uri: bytes | None, length: int | None) -> None:
        """The route's body limit (web/admission.py); a commit over the small limit waits,
        unread, until its session checked out."""
        self.max_body = route_body_limit(method, uri, limits)
        if length is not None and length <= self.max_body:
            return
        if not is_commit(method, uri):
            if length is not None:
                self._refuse()
            return  # chunked: counted against max_body as it arrives
        if length is not None and length > limits.json_body:
            self._refuse(limits.json_body)
            return
        transport = _network_transport(self.channel.transport)
        if transport is not None:
            transport.pauseProducing()
        Deferred.fromCoroutine(self._check_session(transport, self._take_continue()))

    async def _check_session(self, transport: _Reading | None, wants_continue: bool) -> None:
        try:
            await self._services.authorizer.check_session(self)
        except SyncError as e:
            if not self._disconnected:
                log.info("refused a large commit before reading it: {code}", code=e.code)
                self.refuse_early(e)
            return
        except Exception:
            log.failure("session check before a large commit failed")
            if not self._disconnected:
                self.refuse_early(Unavailable("the session could not be checked; try again"))
            return
        if self._disconnected or self._refused:
            return
        self.max_body = self._services.limits.json_body
        self.mark_authenticated()
        if wants_continue:
            send = getattr(self.channel, "_send100Continue", None)
            if send is not None:
                send()
        if transport is not None:
            transport.resumeProducing()

    def handleContentChunk(self, data: bytes) -> None:
        upload = self.upload
        if upload is None:
            super().handleContentChunk(data)
            return
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > upload.limit:
            upload.cancel()
            self._refuse(upload.limit)
            return
        upload.feed(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.upload is not None:
            self.upload.cancel()
        super().connectionLost(reason)

    def refuse_early(self, error: SyncError) -> None:
        """Answer ``error`` before the body is read, and close the connection."""
        self._refused = True
        self.requestHeaders.removeHeader(b"expect")
        body = json_bytes(error.to_json())
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Cache-Control: no-store\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (error.status, RESPONSES.get(error.status, b"Error"), len(body))
        )
        transport: Any = self.channel.transport
        transport.write(head + body)
        self.channel.loseConnection()


class ChunkUploadStream:
    """The body of one chunk upload: parse as it arrives, verify and store batch by batch."""

    def __init__(
        self, services: UploadServices, request: UploadRequest, engagement: str,
        wants_continue: bool, encoding: str | None = None,
    ) -> None:
        self._services = services
        self._request = request
        self._engagement = engagement
        self._wants_continue = wants_continue
        name = (encoding or "identity").strip().lower()
        # a compressed body is held whole (``_packed``) until its last byte is in
        self._packed: bytearray | None = None if name == "identity" else bytearray()
        self.limit = services.limits.chunk_body if self._packed is None else chunkstream.STREAM_BODY_CAP
        self._max_records = services.limits.chunks_per_request
        self._buf = bytearray()
        self._head: tuple[str, int, int, int] | None = None
        self._batch: list[chunkstream.Record] = []
        self._batch_bytes = 0
        self.records = 0
        self._queue: DeferredQueue[list[chunkstream.Record] | None] = DeferredQueue()
        self._error: BaseException | None = None
        self._cancelled = False
        self._ended = False
        self.access: Access | None = None
        self._upload: ChunkUpload | None = None
        self._delta_bytes = 0  # base bytes named by the delta records of earlier slices
        self._worker: Deferred[None] | None = None
        self._paused: _Reading | None = None
        if name not in ("identity", bodycodec.ENCODING):
            self._fail(BadRequest(f"unsupported Content-Encoding {encoding!r} for chunks; use zstd or none",
                                  field="content-encoding"))

    # -- reactor side ----------------------------------------------------------------------

    def start(self) -> None:
        transport = _network_transport(self._request.channel.transport)
        if transport is not None:
            transport.pauseProducing()
            self._paused = transport
            if READ_SIZE > getattr(transport, "bufferSize", READ_SIZE):
                transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]
        self._worker = Deferred.fromCoroutine(self._run())

    def _resume(self) -> None:
        transport, self._paused = self._paused, None
        if transport is not None and not self._cancelled:
            transport.resumeProducing()

    def feed(self, data: bytes) -> None:
        """Body bytes in arrival order; complete records join the current batch."""
        if self._error is not None or self._cancelled:
            return  # refused already: read and drop the rest so the answer can follow
        if self._packed is not None:
            self._packed += data  # the handler caps it at ``limit``
            return
        try:
            self._parse(data)
        except SyncError as e:
            self._fail(e)
            return
        if self._batch_bytes >= BATCH_BYTES:
            self._flush()

    def _parse(self, data: bytes) -> None:
        # Records are cut straight out of each arriving piece (one copy per payload); only a
        # record split across two pieces is gathered in ``_buf`` (its header, then its
        # payload, whose parsed header waits in ``_head``).
        view = memoryview(data)
        pos, size = 0, len(view)
        carry = self._buf
        if carry or self._head is not None:
            if self._head is None:
                take = min(chunkstream.HEADER_BYTES - len(carry), size)
                carry += view[:take]
                pos = take
                if len(carry) < chunkstream.HEADER_BYTES:
                    return
                self._head = self._header(carry, 0)
                carry.clear()
            h, codec, raw_len, payload_len = self._head
            take = payload_len - len(carry)
            if size - pos < take:
                carry += view[pos:]
                return
            carry += view[pos : pos + take]
            pos += take
            self._add((h, codec, raw_len, bytes(carry)))
            carry.clear()
            self._head = None
        while size - pos >= chunkstream.HEADER_BYTES:
            head = self._header(view, pos)
            start = pos + chunkstream.HEADER_BYTES
            end = start + head[3]
            if end > size:
                self._head = head
                carry += view[start:]
                return
            self._add((head[0], head[1], head[2], view[start:end].tobytes()))
            pos = end
        carry += view[pos:]

    def _header(self, buf: bytes | bytearray | memoryview, pos: int) -> tuple[str, int, int, int]:
        if self.records >= self._max_records:
            raise BadChunk(f"more than {self._max_records} chunks in one body")
        return chunkstream.parse_header(buf, pos)

    def _add(self, record: chunkstream.Record) -> None:
        self.records += 1
        self._batch.append(record)
        self._batch_bytes += len(record[3])

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batch_bytes = [], 0

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._buf.clear()
        self._head = None
        self._batch, self._batch_bytes = [], 0

    def cancel(self) -> None:
        """The connection is gone or the body was refused: abort whatever was written."""
        if self._cancelled or self._ended:
            return
        self._cancelled = True
        self._paused = None
        self._fail(ConnectionError("upload cancelled"))
        self._queue.put(None)

    async def finish(self) -> tuple[Access, int, int]:
        """All of the body is in: the durable, indexed result (or the request's refusal)."""
        if self._ended:
            raise RuntimeError("finish called twice")
        self._ended = True
        if self._packed is not None and self._error is None:
            await self._unpack()
        if self._error is None and (self._buf or self._head is not None):
            self._fail(BadChunk("chunk stream truncated inside a record"))
        self._flush()
        self._queue.put(None)
        assert self._worker is not None
        await self._worker
        if self._error is not None:
            raise self._error
        assert self.access is not None and self._upload is not None
        stored, present = await self._upload.finish(self.records)
        return self.access, stored, present

    async def _unpack(self) -> None:
        """Decode the held compressed body (on the CPU pool) into this request's batches."""
        assert self._packed is not None
        packed, self._packed = bytes(self._packed), bytearray()
        try:
            records = await self._services.run_blocking(unpack_body, packed, self._max_records)
        except Exception as e:  # noqa: BLE001 - kept and raised by finish
            self._fail(e)
            return
        for record in records:
            self._add(record)
            if self._batch_bytes >= BATCH_BYTES:
                self._flush()

    # -- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        authorizer = self._services.authorizer
        try:
            # the same segment check as the route's (web/segments.py), before the session's
            engagement_name(self._engagement)
            self.access = await authorizer.authorize(self._request, self._engagement, "write")
            await authorizer.refuse_if_finalized(self.access)
            if not self._cancelled:
                self._request.mark_authenticated()
        except SyncError as e:
            log.info(
                "refused a chunk upload to {engagement} before reading it: {code} {status}",
                engagement=self._engagement,
                code=e.code,
                status=e.status,
            )
            self._error = e
            self._paused = None
            if not self._cancelled:
                self._request.refuse_early(e)
            return
        except BaseException as e:  # noqa: BLE001 - answered as a 500 by the handler
            self._error = e
            self._resume()
            return
        self._upload = self._services.chunks.open_upload(
            self.access.engagement.id, user=self.access.session.user
        )
        if self._wants_continue and not self._cancelled:
            send = getattr(self._request.channel, "_send100Continue", None)
            if send is not None:
                send()
        self._resume()
        pending: Deferred[None] | None = None
        try:
            while True:
                batch = await self._queue.get()
                if batch is None or self._error is not None:
                    break
                verified = await self._verify(batch)
                if pending is not None:
                    await pending
                pending = Deferred.fromCoroutine(self._upload.append(verified))
            if pending is not None:
                await pending
        except BaseException as e:  # noqa: BLE001 - kept and raised by finish
            if pending is not None:
                try:
                    await pending
                except BaseException:  # noqa: BLE001 - the first error is the one reported
                    pass
            self._fail(e)
        if self._error is not None:
            await self._upload.abort()

    async def _verify(self, batch: list[chunkstream.Record]) -> list[VerifiedChunk]:
        assert self.access is not None
        # the cap on named base bytes holds for the whole request, not per slice
        spent = self._delta_bytes
        self._delta_bytes += chunkstream.delta_base_bytes(batch)
        prefixes = await self._services.deltas.upload_bases(self.access.engagement.id, batch, spent)
        return await self._services.run_blocking(
            chunkstream.verify_records, batch, prefixes, self._packed is not None
        )


def unpack_body(packed: bytes, max_records: int) -> list[chunkstream.Record]:
    """The records of a zstd-encoded chunk upload (blocking): 413 when it decodes to more than
    ``STREAM_BODY_CAP`` bytes, 400 when damaged, followed by other data, or malformed."""
    body = bodycodec.decode(packed, bodycodec.ENCODING, chunkstream.STREAM_BODY_CAP)
    return chunkstream.decode_records(body, max_records)

