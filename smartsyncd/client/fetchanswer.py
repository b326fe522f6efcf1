"""A ``chunks/fetch`` answer checked into raw chunks by hash (blocking: run on a thread): in
the usual form (records by hash), or, when the client asked ``"stream": 1``, possibly one zstd
stream of records by position in the request (core/fetchstream.py; the transport has already
decoded it under its cap). Every chunk is decompressed under its declared length and checked
against its hash; a delta that does not rebuild from the client's own base is listed apart.

A plain answer may come as the pieces read from the connection (``bodyread.read_pieces``):
its records are then cut from the pieces, each payload copied once, without first joining the
whole answer (an 8 MiB copy, and on a client whose mmap threshold is fixed at 4 MiB, 2,048 page
faults of a fresh mapping: issue 15, the loopback download)."""

from __future__ import annotations

from collections.abc import Sequence

from smartsyncd.client.chunkpacking import CHUNKS_PER_REQUEST
from smartsyncd.core import fetchstream
from smartsyncd.core.chunkstream import (
    Prefixes,
    decode_fetched,
    decode_record_pieces,
    decode_to_raw,
    raw_by_hash,
)


def decode_answer(
    body: bytes | Sequence[bytes], content_type: str, asked: Sequence[str], prefixes: Prefixes
) -> tuple[dict[str, bytes], list[str]]:
    """Raw bytes by hash, and the hashes of delta records that did not rebuild (fetch those
    again whole); ``BadChunk`` on anything malformed. ``body``: the answer, whole or in the
    pieces it arrived in."""
    indexed = content_type.split(";")[0].strip() == fetchstream.INDEXED_TYPE.decode()
    if not isinstance(body, bytes):
        if not indexed and not prefixes:
            return raw_by_hash(decode_record_pieces(body, CHUNKS_PER_REQUEST)), []
        body = b"".join(body)
    if indexed:
        body = fetchstream.by_hash(body, asked, CHUNKS_PER_REQUEST)
    if prefixes:
        return decode_fetched(body, prefixes, CHUNKS_PER_REQUEST)
    return decode_to_raw(body, CHUNKS_PER_REQUEST), []
