"""A ``chunks/fetch`` answer as one zstd stream (docs/protocol.md, "chunks/fetch" with
``"stream": 1``; issue 15). Pure: no I/O; blocking, so the daemon runs it on a thread.

Stored chunks are compressed one by one (a frame each), so a clone of many small text files
gets no context shared between them, where ``rsync -z`` compresses its whole stream with one
zlib context. A client that asks for it (and accepts ``Content-Encoding: zstd``) gets the
answer in the usual record format, but as one zstd frame in which the small compressible
chunks travel raw (decompressed here), first and together, and every other record (raw or
large stored chunks, deltas) follows as stored: mixing incompressible records among the text
ones would cost the stream much of its gain. The client parses it as any answer (records by
hash, order free) once the transport has decoded it under its cap.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import zstandard

from smartsyncd.core.chunkstream import (
    CODEC_RAW,
    CODEC_ZSTD,
    HEADER_BYTES,
    MAX_WINDOW,
    Record,
    encode_records,
    parse_header,
)
from smartsyncd.core.errors import BadChunk

# stored zstd chunks up to this raw size travel raw in the stream; larger ones (a large file's
# chunks) gain little from the shared context and go as stored (no recompression cost)
STREAM_CHUNK_MAX = 64 * 1024
# raw bytes one answer may expand (the rest goes as stored): bounds the daemon's work and
# memory per answer, and what the client holds once it has decoded the stream
STREAM_RAW_BUDGET = 8 << 20
# zstd level of the stream: 1,000 work papers (bench/wan.py) are 1.97 MB at level 3 (12 ms),
# 1.92 MB at 6 (30 ms), 1.88 MB at 9 (48 ms), against 2.08 MB as stored frames
STREAM_LEVEL = 6
# The stream's records name each chunk by its position in the request's "chunks" list (the
# client knows the hashes it asked for: 32 incompressible bytes a record saved), under their own
# media type; a stream the server could not make goes in the usual form, by hash.
INDEXED_TYPE = b"application/x-smartsync-chunks-indexed"
_INDEXED = struct.Struct(">IBII")  # position in the request, codec, raw_len, payload_len
_SAVED = HEADER_BYTES - _INDEXED.size
# what a stream answer's headers add (Content-Encoding, Vary, the longer media type): a small
# answer (one piece) goes as a stream only when it is smaller by more than this
STREAM_HEADER_BYTES = 64
# raw bytes of the first piece (StreamEncoder) and of each piece after it: the first goes out
# within a few milliseconds, the rest is compressed while what came before is on the wire
FIRST_PIECE = 64 * 1024
PIECE = 512 * 1024


def plain_size(records: Sequence[Record]) -> int:
    """The bytes of ``encode_records(records)``, without building it."""
    return sum(HEADER_BYTES + len(r[3]) for r in records)


def stream_records(records: Sequence[Record], budget: int = STREAM_RAW_BUDGET) -> list[Record] | None:
    """``records`` (each hash once) in stream order: the small stored-zstd ones decompressed
    (codec raw, at most ``budget`` raw bytes), then the others as stored; None when no record
    is decompressed (the stream would gain nothing). A stored frame that does not decompress to
    its length stays as stored: the client checks every chunk's hash anyway."""
    first: list[Record] = []
    rest: list[Record] = []
    seen: set[str] = set()
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    for record in records:
        h, codec, raw_len, payload = record
        if h in seen:
            continue
        seen.add(h)
        if codec == CODEC_ZSTD and raw_len <= min(STREAM_CHUNK_MAX, budget):
            raw = _expand(dctx, payload, raw_len)
            if raw is not None:
                first.append((h, CODEC_RAW, raw_len, raw))
                budget -= raw_len
                continue
        rest.append(record)
    return first + rest if first else None


class StreamEncoder:
    """The zstd frame of ``ordered`` (``stream_records``' result) in pieces, so the daemon
    sends the first bytes while it compresses the rest: each ``next_piece`` (blocking: on a
    thread, one call at a time) encodes about ``piece`` raw bytes of whole records and ends
    with a zstd block flush; the last one ends the frame. The frame states its content size."""

    def __init__(self, ordered: Sequence[Record], level: int = STREAM_LEVEL,
                 first: int = FIRST_PIECE, piece: int = PIECE,
                 index: Mapping[str, int] | None = None) -> None:
        self._records = ordered
        self._index = index  # records by position (``encode_indexed``), else by hash
        self._at = 0
        self._piece = first
        self._next_piece = piece
        size = plain_size(ordered) - (0 if index is None else _SAVED * len(ordered))
        self._cobj = zstandard.ZstdCompressor(level=level).compressobj(size=size)
        self.done = False
        self.raw_bytes = 0

    def next_piece(self) -> bytes:
        if self.done:
            raise ValueError("the stream is already complete")
        end, size = self._at, 0
        while end < len(self._records) and (size < self._piece or end == self._at):
            size += HEADER_BYTES + len(self._records[end][3])
            end += 1
        part = self._records[self._at : end]
        data = encode_records(part) if self._index is None else encode_indexed(part, self._index)
        self._at, self._piece = end, self._next_piece
        self.raw_bytes += len(data)
        out = self._cobj.compress(data)
        if end < len(self._records):
            return out + self._cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.done = True
        return out + self._cobj.flush()


def stream_answer(records: Sequence[Record], level: int = STREAM_LEVEL) -> bytes | None:
    """The answer for ``records`` as one zstd frame (content size stated), or None when that
    is not smaller than the records as stored (``encode_records(records)``)."""
    ordered = stream_records(records)
    if ordered is None:
        return None
    encoder = StreamEncoder(ordered, level)
    pieces = []
    while not encoder.done:
        pieces.append(encoder.next_piece())
    framed = b"".join(pieces)
    return framed if len(framed) < plain_size(records) else None


def positions(asked: Sequence[str]) -> dict[str, int]:
    """Each hash's first position in the request's list (a repeated hash is sent once)."""
    out: dict[str, int] = {}
    for i, h in enumerate(asked):
        out.setdefault(h, i)
    return out


def encode_indexed(records: Sequence[Record], index: Mapping[str, int]) -> bytes:
    """``encode_records`` with each hash replaced by its position ``index[hash]``."""
    parts: list[bytes] = []
    for h, codec, raw_len, payload in records:
        parts.append(_INDEXED.pack(index[h], codec, raw_len, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def by_hash(body: bytes | memoryview, asked: Sequence[str], max_records: int = 4096) -> bytes:
    """Client side: an indexed answer (decoded) rewritten in the usual form, each position
    replaced by the hash asked there, for ``chunkstream``'s checks (``BadChunk`` on a position
    outside the request, a repeated one, or a record cut short; the usual format's caps are
    checked there: each chunk's length, codec and hash)."""
    view = memoryview(body)
    parts: list[bytes] = []
    seen: set[int] = set()
    pos = 0
    while pos < len(view):
        if len(seen) >= max_records:
            raise BadChunk(f"more than {max_records} chunks in one body")
        if len(view) - pos < _INDEXED.size:
            raise BadChunk("chunk stream truncated inside a record header")
        at, codec, raw_len, payload_len = _INDEXED.unpack_from(view, pos)
        if at >= len(asked) or at in seen:
            raise BadChunk(f"chunk position {at} was not asked for, or came twice")
        seen.add(at)
        header = struct.pack(">32sBII", bytes.fromhex(asked[at]), codec, raw_len, payload_len)
        parse_header(header)  # the codec and lengths within the format's caps, before the copy
        pos += _INDEXED.size
        if len(view) - pos < payload_len:
            raise BadChunk("chunk stream truncated inside a payload", chunk=asked[at])
        parts.append(header)
        parts.append(bytes(view[pos : pos + payload_len]))
        pos += payload_len
    return b"".join(parts)


def _expand(dctx: zstandard.ZstdDecompressor, payload: bytes, raw_len: int) -> bytes | None:
    try:
        # a frame stating another size is left as stored (max_output_size would not bind it)
        if zstandard.frame_content_size(payload) not in (-1, raw_len):
            return None
        raw = dctx.decompress(payload, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError:
        return None
    return raw if len(raw) == raw_len else None
