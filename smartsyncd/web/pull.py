"""The pull routes (docs/protocol.md "Pull"): snapshot (with the first files' chunk lists for
a clone that asks), change feed, manifests, chunk fetch.

``PullRoutes.add_to`` registers them behind the ``read`` check (web/access.py). They read the
change log and the chunk store and shape the answer (web/shapes.py); a change feed with nothing
new waits in web/longpoll.py until a commit or its timeout.
"""

from __future__ import annotations

from typing import Any, cast

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core import bodycodec, chunkstream, fetchstream, manifest
from smartsyncd.core.errors import NotFound, TooLarge
from smartsyncd.core.model import is_folder
from smartsyncd.runtime.malloctune import fix_mmap_threshold, keep_heap_top
from smartsyncd.storage.api import ChangeLogStore, ChunkStore, RecordSpanReader
from smartsyncd.web.access import Access, Authorizer, engagement_route
from smartsyncd.web.bodies import (
    asks_folders,
    expect_object,
    get_int,
    query_float,
    query_int,
    query_str,
)
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.deltas import READ_SLICE, DeltaBases
from smartsyncd.web.errors import json_bytes, send_encoded_json, send_json, whole
from smartsyncd.web.history import check_from_query
from smartsyncd.web.limits import Limits
from smartsyncd.web.longpoll import LongPolls, ParkedResource
from smartsyncd.web.manifestbatch import answer_bytes, manifests_answer, parse_manifest_request
from smartsyncd.web.pacedpieces import write_pieces
from smartsyncd.web.parse import (
    fetch_refs,
    hash_field,
    hash_list,
    json_body,
    parse_json_off_reactor,
)
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.shapes import (
    CHUNKS_CONTENT_TYPE,
    JsonObject,
    changes_body,
    snapshot_json,
)

_RECORD_HEADER = chunkstream.HEADER_BYTES
INLINE_ANSWER = 1 << 20  # a chunks answer larger than this is joined off the reactor
SPAN_MIN_CHUNKS = 8  # fewer: small files' chunks, seldom stored back to back (one read fails)
SPAN_MAX_PIECES = 12  # an 8 MiB window in SPAN_PIECE_BYTES pieces, over two or three packs
SPAN_PIECE_BYTES = 1 << 20  # under the 4 MiB mmap threshold: heap buffers, reused
SNAPSHOT_REF_BYTES = 80  # a chunk reference's JSON in a snapshot's chunk list, about


class StoreIdentity:
    """The store's (id, generation), read once: constant while the daemon runs (a restore or
    rollback happens with every daemon stopped)."""

    def __init__(self, changelog: ChangeLogStore) -> None:
        self._changelog = changelog
        self.known: tuple[str, int] | None = None

    async def get(self) -> tuple[str, int]:
        if self.known is None:
            self.known = await self._changelog.store_identity()
        return self.known


class PullRoutes:
    """What a copy reads: the routes of docs/protocol.md "Pull"."""

    def __init__(
        self,
        changelog: ChangeLogStore,
        chunks: ChunkStore,
        identity: StoreIdentity,
        longpolls: LongPolls,
        deltas: DeltaBases,
        run_blocking: RunBlocking,
        limits: Limits,
        read_audit: ReadAudit,
    ) -> None:
        self._read_audit = read_audit  # downloads are audited (issue 20)
        fix_mmap_threshold()  # before the trim threshold fixes the default one (128 KiB)
        keep_heap_top()  # a download's 1 MiB pieces reused, not faulted in afresh (issue 15)
        self._changelog = changelog
        self._chunks = chunks
        self._identity = identity
        self._longpolls = longpolls
        self._deltas = deltas
        self._run_blocking = run_blocking
        self._limits = limits

    def add_to(self, app: Klein, authorizer: Authorizer) -> None:
        eng = "/v1/engagements/<engagement:eng>"
        engagement_route(app, authorizer, "read", eng + "/snapshot", methods=["GET"])(self.snapshot)
        engagement_route(app, authorizer, "read", eng + "/changes", methods=["GET"])(self.changes)
        engagement_route(app, authorizer, "read", eng + "/manifests/<content:content>", methods=["GET"])(
            self.manifest
        )
        engagement_route(app, authorizer, "read", eng + "/manifests", methods=["POST"])(self.manifests)
        engagement_route(app, authorizer, "read", eng + "/chunks/fetch", methods=["POST"])(self.fetch_chunks)

    async def snapshot(self, request: Request, access: Access) -> bytes:
        # flags checked before any work: a bad value is a 400 naming it, not a silent "no"
        with_lists = query_int(request, "chunks", 0, 0, 1) == 1
        lean = query_int(request, "lean", 0, 0, 1) == 1
        head, files = await self._changelog.snapshot(access.engagement.id)
        identity = await self._identity.get()
        # the record token at head: a clone remembers it (web/history.py)
        token = await self._changelog.record_token(access.engagement.id, head)
        folders = asks_folders(request)
        body = snapshot_json(head, files, token, identity, folders)
        if with_lists:
            await self._add_chunk_lists(request, access, body, lean)
        return send_json(request, body)

    async def _add_chunk_lists(
        self, request: Request, access: Access, body: JsonObject, lean: bool
    ) -> None:
        """``?chunks=1`` (a clone): the first files by path (up to the batched manifests'
        caps) carry their chunk lists, as ``POST .../manifests`` would answer them, so the
        clone asks for chunks without a manifests round trip. Each one served is audited as a
        download, as there. ``&lean=1``: a file with its list leaves ``content`` out (its
        content id is the list's). A client that does not ask gets the snapshot as before; one that
        asks an older server gets no lists and asks ``POST .../manifests``."""
        limits = self._limits
        entries = cast(list[dict[str, Any]], body["files"])
        chosen = sorted((e for e in entries if not is_folder(e["content"])),
                        key=lambda e: e["path"])[: limits.manifests_per_request]
        if not chosen:
            return
        eid = access.engagement.id
        found = await self._chunks.get_manifests(eid, list({e["content"] for e in chosen}))
        budget = limits.manifests_body // 4  # the rest is asked with POST .../manifests
        for entry in chosen:
            m = found.get(entry["content"])
            if m is None:
                continue
            budget -= SNAPSHOT_REF_BYTES * len(m.chunks)
            if budget < 0:
                break
            entry["chunks"] = manifest.chunks_to_json(m.chunks)
            if lean:  # the client derives it from the list: 32 incompressible bytes a file
                del entry["content"]
            self._note_download(request, access, m.content, m.size)

    async def changes(self, request: Request, access: Access) -> bytes | ParkedResource:
        limits = self._limits
        since = query_int(request, "since", 0, 0)
        limit = min(query_int(request, "limit", limits.changes_page, 1), limits.changes_page)
        wait = min(query_float(request, "wait", 0.0, 0.0, 1e9), limits.max_wait)
        eid = access.engagement.id
        check = check_from_query(request, since)
        identity = await self._identity.get()
        # since past the head, or another record token at since: 409 history_diverged (the
        # store was restored; the copy reconciles instead of waiting for numbers it has seen)
        head, changes = await self._changelog.changes_since(eid, since, limit, check=check)
        if not changes and wait > 0:
            # parked: web/longpoll.py answers it (with what changes_since then says) once a
            # commit moves the head past ``since`` or the wait runs out
            return self._longpolls.park(request, eid, since, limit, wait, asks_folders(request))
        return send_json(request, changes_body(head, changes, identity, asks_folders(request)))

    async def manifest(self, request: Request, access: Access, content: str) -> bytes:
        base = query_str(request, "base")
        eid = access.engagement.id
        found = await self._chunks.get_manifest(eid, content)
        if found is None:
            raise NotFound(f"no manifest for content {content}", content=content)
        full = manifest.chunks_to_json(found.chunks)
        if base is not None and hash_field(base, "base") != content:
            base_manifest = await self._chunks.get_manifest(eid, base)
            if base_manifest is not None:
                ops = manifest.make_delta(base_manifest.chunks, found.chunks)
                if len(json_bytes(ops)) < len(json_bytes(full)):
                    self._note_download(request, access, content, found.size)
                    return send_json(
                        request,
                        {"content": content, "size": found.size, "delta": {"base": base, "ops": ops}},
                    )
        self._note_download(request, access, content, found.size)
        return send_json(request, {"content": content, "size": found.size, "chunks": full})

    async def manifests(self, request: Request, access: Access) -> bytes:
        """Many manifests in one answer (web/manifestbatch.py); each one served is audited as
        a download, as the per-file route does."""
        limits = self._limits
        asked = await parse_json_off_reactor(self._run_blocking, json_body(request, limits.small_json))
        wanted = parse_manifest_request(asked, limits.manifests_per_request)
        ids = [w.content for w in wanted] + [w.base for w in wanted if w.base is not None]
        found = await self._chunks.get_manifests(access.engagement.id, ids) if ids else {}
        answer = await self._run_blocking(manifests_answer, wanted, found, limits.manifests_body)
        for content, size in answer.served:
            self._note_download(request, access, content, size)
        zstd = bodycodec.accepts(request.requestHeaders.getRawHeaders(b"accept-encoding"))
        data, compressed = await self._run_blocking(answer_bytes, answer.body, zstd)
        return send_encoded_json(request, data, compressed)

    def _note_download(self, request: Request, access: Access, content: str, size: int) -> None:
        self._read_audit.note(access.engagement.id, "download", access.session.user,
                              access.session.id, client_address(request), content=content,
                              size=size)

    async def fetch_chunks(self, request: Request, access: Access) -> bytes:
        limits = self._limits
        asked = await parse_json_off_reactor(self._run_blocking, json_body(request, limits.small_json))
        wanted = hash_list(asked, limits.chunks_per_request)
        # optional base ranges: chunks may come back as deltas against a version the caller has
        refs = fetch_refs(asked, wanted, limits.delta_prefix_bytes)
        # "stream": 1 and zstd accepted: one zstd frame, small chunks raw in it (issue 15)
        stream = get_int(expect_object(asked), "stream", minimum=0, required=False) == 1 and (
            bodycodec.accepts(request.requestHeaders.getRawHeaders(b"accept-encoding")))
        if not refs and not stream and await self._send_spans(request, access.engagement.id, wanted):
            return b""
        prefixes = await self._deltas.fetch_bases(access.engagement.id, refs.values()) if refs else {}
        unique = list(dict.fromkeys(wanted))
        cap = limits.chunk_body
        found: dict[str, tuple[int, int, bytes]] = {}
        total = 0
        for start in range(0, len(unique), READ_SLICE):
            for chunk in await self._chunks.read_chunks(access.engagement.id, unique[start : start + READ_SLICE]):
                found[chunk.hash] = (chunk.codec, chunk.raw_size, chunk.payload)
                total += _RECORD_HEADER + len(chunk.payload)
            if total > cap:
                raise TooLarge(
                    f"the requested chunks are over the response limit of {cap} bytes; ask for fewer",
                    limit=cap,
                )
        unknown = [h for h in unique if h not in found]
        if unknown:
            raise NotFound(f"{len(unknown)} unknown chunk(s)", chunks=unknown)
        records: list[chunkstream.Record] = [(h, *found[h]) for h in wanted]
        if refs:  # compressing against the bases is CPU work: off the reactor
            records = await self._run_blocking(chunkstream.delta_encode_records, records, refs, prefixes)
        size = fetchstream.plain_size(records)
        if size > cap:  # duplicates in the request
            raise TooLarge(f"response over the limit of {cap} bytes; ask for fewer", limit=cap)
        request.setHeader(b"content-type", CHUNKS_CONTENT_TYPE)
        if stream:
            ordered = await self._run_blocking(fetchstream.stream_records, records)
            if ordered is not None:
                sent = await self._send_stream(request, ordered, fetchstream.positions(wanted), size)
                if sent is not None:
                    return sent
        if size > INLINE_ANSWER:
            return whole(request, await self._run_blocking(chunkstream.encode_records, records))
        return whole(request, chunkstream.encode_records(records))

    async def _send_spans(self, request: Request, engagement_id: int, wanted: list[str]) -> bool:
        """A large file's window written as one read per pack it touches, when its chunks sit
        there back to back (storage/spanread.py, headers checked against the index); False:
        nothing written, read chunk by chunk."""
        chunks = self._chunks
        if len(wanted) < SPAN_MIN_CHUNKS or not isinstance(chunks, RecordSpanReader):
            return False
        pieces = await chunks.read_record_spans(
            engagement_id, wanted, self._limits.chunk_body, SPAN_MAX_PIECES, SPAN_PIECE_BYTES)
        if pieces is None:
            return False
        request.setHeader(b"content-type", CHUNKS_CONTENT_TYPE)
        request.setHeader(b"content-length", b"%d" % sum(len(p) for p in pieces))
        await write_pieces(request, pieces)
        return True

    async def _send_stream(
        self, request: Request, ordered: list[chunkstream.Record], index: dict[str, int],
        plain: int,
    ) -> bytes | None:
        """The answer as one zstd frame of records by position in the request (``index``),
        written piece by piece as a thread compresses it (``fetchstream.StreamEncoder``): the
        first bytes leave within milliseconds instead of after the whole answer is compressed;
        its length is not known up front (chunked). An answer of one piece goes whole, or not
        at all (None) when it is not smaller than the ``plain`` one with its own headers."""
        encoder = fetchstream.StreamEncoder(ordered, index=index)
        first = await self._run_blocking(encoder.next_piece)
        if encoder.done and len(first) + fetchstream.STREAM_HEADER_BYTES >= plain:
            return None
        request.setHeader(b"content-type", fetchstream.INDEXED_TYPE)
        request.setHeader(b"content-encoding", bodycodec.ENCODING.encode())
        request.setHeader(b"vary", b"accept-encoding")
        if encoder.done:
            return whole(request, first)
        request.write(first)
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)  # the client left: compress no more
        while not encoder.done and not gone:
            request.write(await self._run_blocking(encoder.next_piece))
        return b""
