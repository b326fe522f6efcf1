"""A download's answer read as one span of a pack (issue 15, the loopback download), mixed
into ``SqlServerStore``.

A pack's record header is the chunk stream's (storage/packs.py, core/chunkstream.py), and a
large file's first upload stores its chunks back to back in upload order. A download asking
for a run of them is then answered with one read of that span: no per-chunk read, no join.
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

    async def read_record_span(self, engagement_id: int, hashes: Sequence[str], max_bytes: int) -> bytes | None:
        """The chunk stream of ``hashes`` in order, read in one piece, or None (see the module
        docstring). ``NotFound`` for unknown hashes, as ``read_chunks``."""
        where = await self.run_read(chunk_index.chunk_locations, engagement_id, tuple(hashes))
        span = chunk_index.record_span(where, hashes, HEADER_BYTES, max_bytes)
        if span is None:
            return None
        pack, offset, expected = span
        return await self.run_file(PackStore.read_records, engagement_id, pack, offset, expected)
