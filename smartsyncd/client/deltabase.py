"""A modified file's synced version, to line its new chunks up with the old bytes: uploads
and downloads of an edited file then travel as zstd deltas against those bytes
(docs/protocol.md, codec 2)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from smartsyncd.client.copycontext import offsets
from smartsyncd.core.chunkstream import aligned_range
from smartsyncd.core.model import ChunkRef

# a delta record names the old bytes lined up with the new chunk plus this much on each side
DELTA_SLACK = 8 * 1024


@dataclass
class DeltaBase:
    """A modified file's synced version: where its chunks were, to line new chunks up."""

    content: str
    size: int
    old_chunks: Sequence[ChunkRef]
    new_chunks: Sequence[ChunkRef]
    _anchors: list[tuple[int, int]] | None = None

    def shift(self, new_offset: int) -> int:
        """How far content at ``new_offset`` moved since the old version: the shift of the
        nearest unchanged chunk before it (0 when there is none)."""
        if self._anchors is None:
            where: dict[str, int] = {}
            for chunk, offset in offsets(self.old_chunks):
                where.setdefault(chunk.hash, offset)
            self._anchors = [
                (offset, offset - where[chunk.hash])
                for chunk, offset in offsets(self.new_chunks) if chunk.hash in where
            ]
        i = bisect.bisect_right(self._anchors, (new_offset, 1 << 62)) - 1
        return self._anchors[i][1] if i >= 0 else 0


def base_range(base: DeltaBase, offset: int, size: int) -> tuple[int, int]:
    """The range ``(lo, hi)`` of the old version lined up with the new chunk at ``offset``
    (its nearest unchanged chunk's shift, ``DELTA_SLACK`` each side): the same choice as for
    uploads, so the delta finds the old bytes of edited rows."""
    return aligned_range(offset - base.shift(offset), size, base.size, DELTA_SLACK)


def windows(chunks: Iterable[ChunkRef], limit: int) -> Iterator[list[ChunkRef]]:
    """``chunks`` in consecutive windows of at most ``limit`` bytes (a larger chunk alone)."""
    window: list[ChunkRef] = []
    size = 0
    for chunk in chunks:
        if window and size + chunk.size > limit:
            yield window
            window, size = [], 0
        window.append(chunk)
        size += chunk.size
    if window:
        yield window
