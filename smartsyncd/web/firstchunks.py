"""``GET .../snapshot/chunks``: a clone's first small files' chunks, picked by the server
(docs/protocol.md, "First chunks"; issue 15).

A clone asks for it beside its snapshot, so the chunks of the files it writes first are on the
wire while the snapshot is, not a round trip and the client's work on the snapshot later. The
files are the snapshot's first by path (core/firstchunks.py; ``small``, ``budget`` and
``files`` as the client groups them, within this daemon's limits); the answer is the usual
chunk records, by hash, in one zstd stream sent piece by piece as it is compressed (as
``chunks/fetch`` with ``"stream": 1``). Each file served is audited as a download. Nothing is
picked (204) for an engagement with published ignore rules, which decide what a copy writes
(the client then asks once it has them), for a client that does not take zstd, or when the
chunks are not at hand (a branch office's cache: ``chunks/fetch`` fills it from central).
"""

from __future__ import annotations

from typing import Protocol

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core import bodycodec, chunkstream, fetchstream
from smartsyncd.core.errors import Unavailable
from smartsyncd.core.firstchunks import first_chunks, first_files
from smartsyncd.core.ignore import EngagementRules
from smartsyncd.storage.api import ChangeLogStore, ChunkStore
from smartsyncd.web.access import Access, Authorizer, engagement_route
from smartsyncd.web.bodies import query_int
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.deltas import READ_SLICE
from smartsyncd.web.limits import Limits
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.shapes import CHUNKS_CONTENT_TYPE

SMALL_MAX = 64 << 20  # a "small" file at most this size (the client's is 4 MiB)


class RulesSource(Protocol):
    async def ignore_rules(self, engagement_id: int) -> EngagementRules | None: ...


class FirstChunks:
    """The route; ``budget`` is capped at half the answer limit, so the stored chunks (with
    their record headers) always fit under it."""

    def __init__(self, changelog: ChangeLogStore, chunks: ChunkStore, rules: RulesSource,
                 run_blocking: RunBlocking, limits: Limits, read_audit: ReadAudit) -> None:
        self._changelog = changelog
        self._chunks = chunks
        self._rules = rules
        self._run_blocking = run_blocking
        self._limits = limits
        self._read_audit = read_audit

    def add_to(self, app: Klein, authorizer: Authorizer) -> None:
        url = "/v1/engagements/<engagement:eng>/snapshot/chunks"
        engagement_route(app, authorizer, "read", url, methods=["GET"])(self.first_chunks)

    async def first_chunks(self, request: Request, access: Access) -> bytes:
        limits = self._limits
        # checked before any work: a malformed value is a 400 naming it; a larger one than
        # this daemon's limits is taken as the limit (the client cannot know them)
        small = min(query_int(request, "small", 4 << 20, 1), SMALL_MAX)
        budget = min(query_int(request, "budget", 8 << 20, 1), limits.chunk_body // 2)
        most = min(query_int(request, "files", limits.manifests_per_request, 1),
                   limits.manifests_per_request)
        eid = access.engagement.id
        if not bodycodec.accepts(request.requestHeaders.getRawHeaders(b"accept-encoding")):
            return _nothing(request)
        if await self._rules.ignore_rules(eid) is not None:
            return _nothing(request)
        _head, live = await self._changelog.snapshot(eid)
        files = first_files(live, small=small, budget=budget, max_files=most)
        contents = list(dict.fromkeys(f.content for f in files if f.content is not None))
        manifests = await self._chunks.get_manifests(eid, contents) if contents else {}
        served, refs = first_chunks(files, manifests, limits.chunks_per_request)
        if not refs:
            return _nothing(request)
        hashes = [c.hash for c in refs]
        records: list[chunkstream.Record] = []
        try:
            for start in range(0, len(hashes), READ_SLICE * 8):
                for chunk in await self._chunks.read_chunks(eid, hashes[start : start + READ_SLICE * 8]):
                    records.append((chunk.hash, chunk.codec, chunk.raw_size, chunk.payload))
        except Unavailable:
            # not here now (a branch office's cache, which chunks/fetch fills from central):
            # the client asks chunks/fetch, which gets them or says what is wrong
            return _nothing(request)
        address = client_address(request)
        for f in served:
            self._read_audit.note(eid, "download", access.session.user, access.session.id,
                                  address, content=f.content, size=f.size)
        ordered = await self._run_blocking(fetchstream.stream_records, records) or records
        encoder = fetchstream.StreamEncoder(ordered)
        request.setHeader(b"content-type", CHUNKS_CONTENT_TYPE)
        request.setHeader(b"content-encoding", bodycodec.ENCODING.encode())
        request.setHeader(b"vary", b"accept-encoding")
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)  # the client left: compress no more
        while not encoder.done and not gone:
            request.write(await self._run_blocking(encoder.next_piece))
        return b""


def _nothing(request: Request) -> bytes:
    request.setResponseCode(204)
    return b""
