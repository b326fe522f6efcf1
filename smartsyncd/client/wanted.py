"""The chunks a push may have to upload, kept per file, never as one entry per chunk.

A push used to gather every chunk of every file it sends into one dict (hash -> path, offset,
size): about 300 bytes per chunk, 200 MB for a 20 GB file. ``Wanted`` keeps each file's chunk
list (packed when large, core/packed.py) and walks it in windows of ``window`` chunks when the
upload asks: each window is asked for, read and sent before the next one is made, so what the
push holds grows with the window, not with the file (client/push.py ``Push._upload``).
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass

from smartsyncd.core.model import ChunkRef

# chunks asked about at once: the server answers up to 10,000 (web/limits.py)
MISSING_WINDOW = 10_000
# (hash, (path, offset, size)): one chunk to upload and where the file holds it
WantedChunk = tuple[str, tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class _Source:
    path: str
    chunks: Sequence[ChunkRef]
    had: Sequence[ChunkRef] | None  # a delta's previous version: its chunks are not sent


class Wanted:
    """The files whose chunks a push sends (``add``), walked in windows (``windows``); chunks
    in ``present`` (confirmed on the server during this sync) are left out."""

    def __init__(self, present: Container[str] = frozenset()) -> None:
        self._sources: list[_Source] = []
        self._present = present

    def add(self, path: str, chunks: Sequence[ChunkRef], had: Sequence[ChunkRef] | None = None) -> None:
        """Send the chunks of ``path`` (all of them, or those not in its previous version
        ``had``)."""
        self._sources.append(_Source(path, chunks, had))

    def chunks(self) -> Iterator[WantedChunk]:
        """Each chunk to send once per file, in file order (a chunk repeated across files is
        dropped by the window it shares, or found present by the next window's question)."""
        for source in self._sources:
            had = {c.hash for c in source.had} if source.had is not None else None
            offset = 0
            for chunk in source.chunks:
                if chunk.hash not in self._present and (had is None or chunk.hash not in had):
                    yield chunk.hash, (source.path, offset, chunk.size)
                offset += chunk.size

    def windows(self, window: int) -> Iterator[dict[str, tuple[str, int, int]]]:
        """The chunks in groups of at most ``window`` distinct hashes (first place kept)."""
        group: dict[str, tuple[str, int, int]] = {}
        for digest, where in self.chunks():
            group.setdefault(digest, where)
            if len(group) >= window:
                yield group
                group = {}
        if group:
            yield group

    def total_bytes(self) -> int:
        """Bytes of all chunks to send (an upper bound: the server may have some)."""
        return sum(where[2] for _, where in self.chunks())
