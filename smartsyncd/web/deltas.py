"""The one lookup of delta bases: byte ranges of versions this engagement already has.

A chunk may travel as a delta against a range of an earlier version, both ways: a fetch names
the ranges the client has (``fetch_bases``), an upload's delta records name the ranges the
server has (``upload_bases``). Both read the base's manifest from THIS engagement only, cut the
ranges (``chunkstream.ranges_of``), read the chunks under them and assemble the bytes on the CPU
pool. They differ only in how a bad base is answered: a fetch is a ``400 bad_request`` naming
it (fetch again without it), an upload a ``400 bad_chunk`` (send the chunk whole).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from smartsyncd.core import chunkstream
from smartsyncd.core.errors import BadChunk, BadRequest, NotFound, TooLarge
from smartsyncd.storage.api import ChunkStore
from smartsyncd.web.parse import BaseRange
from smartsyncd.web.pool import RunBlocking

# Chunks are read from the store in slices so a fetch over the response cap stops early.
READ_SLICE = 128

Prefixes = dict[BaseRange, bytes]


class DeltaBases:
    """Base ranges out of the chunk store, for fetches and uploads."""

    def __init__(self, chunks: ChunkStore, run_blocking: RunBlocking, max_bytes: int) -> None:
        self._chunks = chunks
        self._run_blocking = run_blocking
        self.max_bytes = max_bytes  # base bytes one request may name

    async def fetch_bases(self, engagement_id: int, ranges: Iterable[BaseRange]) -> Prefixes:
        """The base ranges a fetch names (a base that is not a version here, or a range past
        its end, is ``400 bad_request`` naming the base; the caller capped their size)."""
        try:
            return await self._lookup(engagement_id, set(ranges))
        except _NoBase as e:
            raise BadRequest(f"delta base {e.base} is not a version in this engagement; fetch without it",
                             field="bases", base=e.base) from None
        except _BadRange as e:
            raise BadRequest(f"{e.error.message}; fetch without it", field="deltas", base=e.base) from None
        except NotFound:  # a base being collected right now: not a 404 for the asked chunks
            raise BadRequest("a delta base is no longer stored; fetch without it", field="bases") from None

    async def upload_bases(
        self, engagement_id: int, records: Sequence[chunkstream.Record], spent: int = 0
    ) -> Prefixes:
        """The base ranges named by delta records, read from this engagement's own content
        (a base it does not have is a ``bad_chunk``); at most ``max_bytes`` in all, counting
        the ``spent`` bytes earlier slices of the same request named."""
        refs = {chunkstream.delta_ref(r) for r in records if r[1] == chunkstream.CODEC_DELTA}
        if not refs:
            return {}
        if spent + chunkstream.delta_base_bytes(records) > self.max_bytes:
            raise TooLarge("delta records name too many base bytes; send fewer per request",
                           limit=self.max_bytes)
        try:
            return await self._lookup(engagement_id, refs)
        except _NoBase as e:
            raise BadChunk(f"delta base {e.base} is not known here; send the chunk whole") from None
        except _BadRange as e:
            raise e.error from None

    async def _lookup(self, engagement_id: int, ranges: set[BaseRange]) -> Prefixes:
        wanted: dict[BaseRange, list[tuple[str, int, int]]] = {}
        for base in sorted({b for b, _, _ in ranges}):
            found = await self._chunks.get_manifest(engagement_id, base)
            if found is None:
                raise _NoBase(base)
            try:
                pieces = chunkstream.ranges_of(
                    [(c.hash, c.size) for c in found.chunks], [(o, n) for b, o, n in ranges if b == base]
                )
            except BadChunk as e:
                raise _BadRange(base, e) from None
            wanted.update({(base, o, n): p for (o, n), p in pieces.items()})
        hashes = list(dict.fromkeys(h for p in wanted.values() for h, _, _ in p))
        stored: dict[str, chunkstream.Record] = {}
        for start in range(0, len(hashes), READ_SLICE):
            for c in await self._chunks.read_chunks(engagement_id, hashes[start : start + READ_SLICE]):
                stored[c.hash] = (c.hash, c.codec, c.raw_size, c.payload)
        return await self._run_blocking(chunkstream.assemble_prefixes, wanted, stored)


class _NoBase(Exception):
    def __init__(self, base: str) -> None:
        self.base = base


class _BadRange(Exception):
    def __init__(self, base: str, error: BadChunk) -> None:
        self.base = base
        self.error = error
