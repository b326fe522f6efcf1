"""A ``chunks/fetch`` answer checked into raw chunks by hash (blocking: run on a thread): in
the usual form (records by hash), or, when the client asked ``"stream": 1``, possibly one zstd
stream of records by position in the request (core/fetchstream.py; the transport has already
decoded it under its cap). Every chunk is decompressed under its declared length and checked
against its hash; a delta that does not rebuild from the client's own base is listed apart."""

from __future__ import annotations

from collections.abc import Sequence

from smartsyncd.client.chunkpacking import CHUNKS_PER_REQUEST
from smartsyncd.core import fetchstream
from smartsyncd.core.chunkstream import Prefixes, decode_fetched, decode_to_raw


def decode_answer(
    body: bytes, content_type: str, asked: Sequence[str], prefixes: Prefixes
) -> tuple[dict[str, bytes], list[str]]:
    """Raw bytes by hash, and the hashes of delta records that did not rebuild (fetch those
    again whole); ``BadChunk`` on anything malformed."""
    if content_type.split(";")[0].strip() == fetchstream.INDEXED_TYPE.decode():
        body = fetchstream.by_hash(body, asked, CHUNKS_PER_REQUEST)
    if prefixes:
        return decode_fetched(body, prefixes, CHUNKS_PER_REQUEST)
    return decode_to_raw(body, CHUNKS_PER_REQUEST), []
