"""Chunking policy: FastCDC cut points and BLAKE3 chunk names (no I/O; callers bring the bytes).

The client cuts files with ``make_chunker().cut_file(path)``; this module cuts buffers and
fixes the sizes every copy must agree on (they are part of the wire contract, see /v1/info).
"""

from __future__ import annotations

import blake3
from pyfastcdc import FastCDC

from smartsyncd.core.model import ChunkRef

# A 1-byte edit costs about one average chunk on the wire: 32 KiB keeps that well under 100 KB,
# while a 256 MiB file stays near 8,000 manifest entries. The min/max bounds keep pathological
# content (all zeros, random noise) from producing tiny or huge chunks.
MIN_CHUNK = 8192
AVG_CHUNK = 32768
MAX_CHUNK = 262144


def make_chunker() -> FastCDC:
    """A FastCDC chunker with the protocol's sizes (normalized chunking level 1, default seed)."""
    return FastCDC(avg_size=AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)


def chunk_hash(data: bytes | bytearray | memoryview) -> str:
    """The chunk's name: lowercase hex BLAKE3-256 of its bytes."""
    return blake3.blake3(data).hexdigest()


def cut(data: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
    """Content-defined cut points of ``data`` as (offset, length); ``[]`` for empty data."""
    if len(data) == 0:
        return []
    return [(c.offset, c.length) for c in make_chunker().cut_buf(data)]


def chunk_buffer(data: bytes | bytearray | memoryview) -> list[tuple[ChunkRef, memoryview]]:
    """Cut ``data`` and name each chunk; the memoryviews share ``data``'s buffer."""
    if len(data) == 0:
        return []
    view = memoryview(data)
    out: list[tuple[ChunkRef, memoryview]] = []
    for offset, length in cut(view):
        piece = view[offset : offset + length]
        out.append((ChunkRef(chunk_hash(piece), length), piece))
    return out
