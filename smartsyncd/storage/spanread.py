"""A download's answer read as one span of a pack (issue 15, the loopback download), mixed
into ``SqlServerStore``.

A pack's record header is the chunk stream's (storage/packs.py, core/chunkstream.py), and a
large file's first upload stores its chunks back to back in upload order (a pack per upload
window). A download window asking for them is then answered with one read per pack it
touches: no per-chunk read, no join (the pieces are written to the answer one after another).
Each header in the span is checked against the index before the bytes are sent; anything else
(chunks spread over packs, out of order, a header that differs) is None, and the caller reads
chunk by chunk (``read_chunks``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from smartsyncd.core.chunkstream import HEADER_BYTES
from smartsyncd.storage import chunks as chunk_index
from smartsyncd.storage.packs import PackStore

T = TypeVar("T")


class SpanReadStore:
    """Mixin: needs ``run_read`` and ``run_file`` from the store it is mixed into."""

    async def run_file(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    async def read_record_spans(
        self, engagement_id: int, hashes: Sequence[str], max_bytes: int, max_spans: int,
        piece_bytes: int,
    ) -> list[bytes] | None:
        """The chunk stream of ``hashes`` in order, in at most ``max_spans`` pieces of at most
        ``piece_bytes`` (or one record), each read at once, or None (see the module docstring). ``NotFound`` for unknown hashes, as
        ``read_chunks``."""
        where = await self.run_read(chunk_index.chunk_locations, engagement_id, tuple(hashes))
        spans = chunk_index.record_spans(where, hashes, HEADER_BYTES, max_bytes, max_spans, piece_bytes)
        if spans is None:
            return None
        return await self.run_file(_read_spans, engagement_id, spans)


def _read_spans(packs: PackStore, engagement_id: int, spans: list[chunk_index.RecordSpan]) -> list[bytes] | None:
    out: list[bytes] = []
    for pack, offset, expected in spans:
        data = packs.read_records(engagement_id, pack, offset, expected)
        if data is None:
            return None
        out.append(data)
    return out
