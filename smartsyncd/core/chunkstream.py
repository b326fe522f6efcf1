"""The ``application/x-smartsync-chunks`` record format: encode, parse, and verify chunks.

Parsing and verifying are separate steps so the web layer can parse on the reactor (cheap) and
verify on a thread pool (decompression and hashing). Decompression is always capped at the
record's declared length, itself capped at ``MAX_CHUNK``, so a zstd bomb costs nothing.

Codec 2 is a delta against the previous version of the file: the payload names a byte range of
a content the receiver already has (``base`` content id, ``offset``, ``length`` at most
``DELTA_MAX_PREFIX``) and carries a zstd frame compressed with that range as a raw-content
dictionary. The receiver reads the range from its own copy of ``base`` (same engagement only),
decompresses with the window capped at ``MAX_WINDOW`` and the output at the record's length, and
verifies the hash like any other record. A 1% edit of a CSV chunk travels as a few hundred
bytes instead of the whole compressed chunk.

A whole upload body may also travel as one zstd frame (``Content-Encoding: zstd``, at most
``STREAM_BODY_CAP`` bytes sent and decoded): a first upload of many small files then carries
them as raw records compressed across files, which costs less than a frame per chunk (issue
15). The receiver compresses such raw records itself before storing them (``recompress``).
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence

import zstandard

from smartsyncd.core.chunking import MAX_CHUNK, chunk_hash
from smartsyncd.core.errors import BadChunk
from smartsyncd.core.model import VerifiedChunk

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_DELTA = 2
CODECS = (CODEC_RAW, CODEC_ZSTD, CODEC_DELTA)
DELTA_MAX_PREFIX = 1 << 20  # the most base bytes one delta record may name (memory bound)
_DELTA_HEADER = struct.Struct(">32sQI")  # base content id, offset, length
DELTA_HEADER_BYTES = _DELTA_HEADER.size
MAX_WINDOW = 1 << 23  # 8 MiB: far above what a 256 KiB chunk needs
ZSTD_SLACK = 1024  # a zstd frame of incompressible data is a little larger than its input
PROBE_BYTES = 4096  # sample size of the compressibility probe
# an upload body sent as one zstd frame: the most bytes it may take, sent and once decoded
STREAM_BODY_CAP = 8 << 20
_local = threading.local()
_HEADER = struct.Struct(">32sBII")  # hash, codec, raw_len, payload_len
HEADER_BYTES = _HEADER.size

Record = tuple[str, int, int, bytes]


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # A compressor is not thread-safe but is reusable: one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def compress_chunk(raw: bytes | memoryview, level: int = 3) -> tuple[int, bytes]:
    """``(1, zstd frame)`` when it saves at least 1/16 of ``raw``, else ``(0, raw)``.

    Already-compressed content (photos, PDFs, zip-based Office files, random data) is most of
    an engagement folder by bytes: a fast level-1 probe of a 4 KiB sample skips the full
    attempt when the sample does not shrink by 1/32, so such chunks cost a few microseconds.
    """
    if len(raw) > 2 * PROBE_BYTES:
        sample = memoryview(raw)[len(raw) // 2 : len(raw) // 2 + PROBE_BYTES]
        if len(_compressor(1).compress(sample)) * 32 > PROBE_BYTES * 31:
            return CODEC_RAW, bytes(raw)
    frame = _compressor(level).compress(raw)
    if len(frame) * 16 <= len(raw) * 15:
        return CODEC_ZSTD, frame
    return CODEC_RAW, bytes(raw)


def delta_payload(base: str, offset: int, prefix: bytes, raw: bytes | memoryview, level: int = 3) -> bytes:
    """A codec-2 payload: ``raw`` compressed against ``prefix``, the bytes of content ``base``
    at ``offset`` (the receiver reads the same range from its own copy)."""
    if not 0 < len(prefix) <= DELTA_MAX_PREFIX:
        raise ValueError("delta prefix must be 1 byte to DELTA_MAX_PREFIX")
    dictionary = zstandard.ZstdCompressionDict(bytes(prefix), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frame = zstandard.ZstdCompressor(level=level, dict_data=dictionary, write_content_size=True).compress(raw)
    return _DELTA_HEADER.pack(bytes.fromhex(base), offset, len(prefix)) + frame


def delta_base_bytes(records: Iterable[Record]) -> int:
    """The base bytes the delta records among ``records`` name (each range counted once)."""
    refs = {delta_ref(r) for r in records if r[1] == CODEC_DELTA}
    return sum(length for _, _, length in refs)


def delta_ref(record: Record) -> tuple[str, int, int]:
    """``(base content id, offset, length)`` named by a codec-2 record; ``BadChunk`` if bad."""
    h, codec, _raw_len, payload = record
    if codec != CODEC_DELTA:
        raise ValueError("not a delta record")
    if len(payload) < DELTA_HEADER_BYTES:
        raise BadChunk("delta chunk payload is too short", chunk=h)
    base, offset, length = _DELTA_HEADER.unpack_from(payload)
    if not 0 < length <= DELTA_MAX_PREFIX:
        raise BadChunk(f"delta base range of {length} bytes is outside 1..{DELTA_MAX_PREFIX}", chunk=h)
    return base.hex(), offset, length


def encode_records(records: Iterable[Record]) -> bytes:
    """Serialize ``(hash hex, codec, raw_len, payload)`` records; ``ValueError`` on bad fields."""
    return b"".join(record_pieces(records))


def record_pieces(records: Iterable[Record]) -> list[bytes]:
    """``encode_records`` as the pieces it would join: each record's header, then its payload
    (the same object when it is ``bytes``), so a large body is sent without one joined copy."""
    parts: list[bytes] = []
    for h, codec, raw_len, payload in records:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec}")
        digest = bytes.fromhex(h)
        if len(digest) != 32:
            raise ValueError("chunk hash must be 32 bytes")
        parts.append(_HEADER.pack(digest, codec, raw_len, len(payload)))
        parts.append(bytes(payload))
    return parts


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[str, int, int, int]:
    """``(hash hex, codec, raw_len, payload_len)`` of the record header at ``pos`` (at least
    ``HEADER_BYTES`` must be there); ``BadChunk`` when its fields break the format's caps."""
    digest, codec, raw_len, payload_len = _HEADER.unpack_from(buf, pos)
    h = digest.hex()
    if codec not in CODECS:
        raise BadChunk(f"unknown chunk codec {codec}", chunk=h)
    if raw_len == 0 or raw_len > MAX_CHUNK:
        raise BadChunk(f"chunk length {raw_len} is outside 1..{MAX_CHUNK}", chunk=h)
    if codec == CODEC_RAW and payload_len != raw_len:
        raise BadChunk("raw chunk payload length differs from its length", chunk=h)
    if codec == CODEC_ZSTD and payload_len > raw_len + ZSTD_SLACK:
        raise BadChunk("compressed chunk payload is larger than allowed", chunk=h)
    if codec == CODEC_DELTA and not DELTA_HEADER_BYTES < payload_len <= raw_len + ZSTD_SLACK + DELTA_HEADER_BYTES:
        raise BadChunk("delta chunk payload length is outside the allowed range", chunk=h)
    return h, codec, raw_len, payload_len


def decode_records(body: bytes | memoryview, max_records: int = 4096) -> list[Record]:
    """Parse a chunk stream (no decompression); ``BadChunk`` on any malformed record."""
    view = memoryview(body)
    records: list[Record] = []
    pos = 0
    while pos < len(view):
        if len(records) >= max_records:
            raise BadChunk(f"more than {max_records} chunks in one body")
        if len(view) - pos < HEADER_BYTES:
            raise BadChunk("chunk stream truncated inside a record header")
        h, codec, raw_len, payload_len = parse_header(view, pos)
        pos += HEADER_BYTES
        if len(view) - pos < payload_len:
            raise BadChunk("chunk stream truncated inside a payload", chunk=h)
        records.append((h, codec, raw_len, bytes(view[pos : pos + payload_len])))
        pos += payload_len
    return records


def decode_record_pieces(pieces: Sequence[bytes], max_records: int = 4096) -> list[Record]:
    """``decode_records`` of the stream ``b"".join(pieces)``, without that join: each payload is
    copied once, from the piece that holds it or joined from the pieces it spans (a download's
    answer as read from the connection, about 64 KiB a piece; issue 15). Same records, same
    ``BadChunk`` for anything malformed."""
    records: list[Record] = []
    reader = _PieceReader(pieces)
    while not reader.at_end():
        if len(records) >= max_records:
            raise BadChunk(f"more than {max_records} chunks in one body")
        header = reader.take(HEADER_BYTES)
        if header is None:
            raise BadChunk("chunk stream truncated inside a record header")
        h, codec, raw_len, payload_len = parse_header(header)
        payload = reader.take(payload_len)
        if payload is None:
            raise BadChunk("chunk stream truncated inside a payload", chunk=h)
        records.append((h, codec, raw_len, bytes(payload)))
    return records


class _PieceReader:
    """Consecutive byte ranges of a stream held in pieces."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = [memoryview(p) for p in pieces if p]
        self._index = 0  # the piece being read
        self._offset = 0  # within it

    def at_end(self) -> bool:
        return self._index >= len(self._pieces)

    def take(self, n: int) -> memoryview | bytes | None:
        """The next ``n`` bytes (a view of one piece when they lie in one), or None when the
        stream ends first."""
        pieces = self._pieces
        if self._index < len(pieces) and self._offset + n <= len(pieces[self._index]):
            view = pieces[self._index][self._offset : self._offset + n]
            self._advance(n)
            return view
        parts: list[memoryview] = []
        while n:
            if self._index >= len(pieces):
                return None
            piece = pieces[self._index]
            k = min(n, len(piece) - self._offset)
            parts.append(piece[self._offset : self._offset + k])
            self._advance(k)
            n -= k
        return b"".join(parts)

    def _advance(self, n: int) -> None:
        self._offset += n
        if self._offset == len(self._pieces[self._index]):
            self._index += 1
            self._offset = 0


Prefixes = Mapping[tuple[str, int, int], bytes]


def _raw_of(record: Record, prefixes: Prefixes | None = None) -> bytes:
    h, codec, raw_len, payload = record
    if codec == CODEC_RAW:
        raw = payload
    elif codec == CODEC_ZSTD:
        raw = _decompress(h, raw_len, payload)
    elif codec == CODEC_DELTA:
        ref = delta_ref(record)
        prefix = (prefixes or {}).get(ref)
        if prefix is None or len(prefix) != ref[2]:
            raise BadChunk("delta chunk names a base range this server does not have", chunk=h)
        raw = _decompress(h, raw_len, payload[DELTA_HEADER_BYTES:], prefix)
    else:
        raise BadChunk(f"unknown chunk codec {codec}", chunk=h)
    if len(raw) != raw_len:
        raise BadChunk(f"chunk is {len(raw)} bytes, declared {raw_len}", chunk=h)
    if chunk_hash(raw) != h:
        raise BadChunk("chunk does not hash to its name", chunk=h)
    return raw


def _decompress(h: str, raw_len: int, payload: bytes, prefix: bytes | None = None) -> bytes:
    if raw_len > MAX_CHUNK:
        raise BadChunk(f"chunk length {raw_len} is over {MAX_CHUNK}", chunk=h)
    try:
        # zstandard ignores max_output_size when the frame header states a content size, so a
        # frame claiming more than the record's length is refused before anything is allocated.
        declared = zstandard.frame_content_size(payload)
        if declared != -1 and declared != raw_len:
            raise BadChunk(f"zstd frame declares {declared} bytes, record {raw_len}", chunk=h)
        if prefix is None:
            decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        else:
            dictionary = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=MAX_WINDOW)
        return decompressor.decompress(payload, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise BadChunk(f"chunk does not decompress: {exc}", chunk=h) from None


def verify_records(
    records: Sequence[Record], prefixes: Prefixes | None = None, recompress: bool = False
) -> list[VerifiedChunk]:
    """Decompress (capped) and hash every record; ``BadChunk`` names the first bad one.

    The payload is kept as sent, so storage keeps the sender's compression; a delta record is
    stored self-contained (zstd level 1 of its bytes, or raw). ``prefixes`` holds the base
    ranges named by delta records (see ``delta_ref``). ``recompress``: raw records came in a
    compressed body and are stored as ``compress_chunk`` makes them (as a sender would).
    """
    out: list[VerifiedChunk] = []
    for record in records:
        raw = _raw_of(record, prefixes)
        h, codec, raw_len, payload = record
        if codec == CODEC_RAW and recompress:
            codec, payload = compress_chunk(raw)
        elif codec == CODEC_DELTA:
            codec, payload = compress_chunk(raw, level=1)
        out.append(VerifiedChunk(hash=h, codec=codec, raw_size=raw_len, payload=payload))
    return out


def decode_to_raw(
    body: bytes | memoryview, max_records: int = 4096, prefixes: Prefixes | None = None
) -> dict[str, bytes]:
    """Client side of a download: parse, verify, and return the raw bytes by hash."""
    return raw_by_hash(decode_records(body, max_records), prefixes)


def raw_by_hash(records: Iterable[Record], prefixes: Prefixes | None = None) -> dict[str, bytes]:
    """The raw bytes of ``records`` by hash, each decompressed (capped) and checked against its
    hash; ``BadChunk`` names the first bad one."""
    return {record[0]: _raw_of(record, prefixes) for record in records}


def ranges_of(
    chunks: Sequence[tuple[str, int]], refs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], list[tuple[str, int, int]]]:
    """For byte ranges ``(offset, length)`` of a content made of ``chunks`` ``(hash, size)``:
    which pieces ``(chunk hash, start in chunk, length)`` make up each range, in order.
    ``BadChunk`` when a range runs past the end of the content."""
    starts: list[int] = []
    total = 0
    for _h, size in chunks:
        starts.append(total)
        total += size
    out: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    for offset, length in refs:
        if offset < 0 or length <= 0 or offset + length > total:
            raise BadChunk(f"delta base range {offset}+{length} is outside the base ({total} bytes)")
        pieces: list[tuple[str, int, int]] = []
        i = bisect.bisect_right(starts, offset) - 1
        pos, end = offset, offset + length
        while pos < end:
            h, size = chunks[i]
            start = pos - starts[i]
            take = min(size - start, end - pos)
            pieces.append((h, start, take))
            pos += take
            i += 1
        out[(offset, length)] = pieces
    return out


def assemble_prefixes(
    wanted: Mapping[tuple[str, int, int], list[tuple[str, int, int]]], stored: Mapping[str, Record]
) -> dict[tuple[str, int, int], bytes]:
    """Decompress and verify the stored chunks (``Record`` by hash), then cut the base ranges
    of delta records out of them (blocking: run it on a thread)."""
    raw: dict[str, bytes] = {}
    out: dict[tuple[str, int, int], bytes] = {}
    for ref, pieces in wanted.items():
        parts = []
        for h, start, take in pieces:
            if h not in raw:
                raw[h] = _raw_of(stored[h])
            parts.append(raw[h][start : start + take])
        out[ref] = b"".join(parts)
    return out


# -- downloads with a base (docs/protocol.md, "chunks/fetch" with deltas) ---------------------


def aligned_range(start: int, size: int, base_size: int, slack: int) -> tuple[int, int]:
    """The base range ``(lo, hi)`` to compress a new chunk of ``size`` bytes against, when the
    same content sat at ``start`` in the base: the lined-up bytes plus ``slack`` on each side,
    clipped to the base (never empty) and to ``DELTA_MAX_PREFIX`` bytes."""
    if base_size <= 0:
        raise ValueError("a base range needs a non-empty base")
    lo = max(0, min(start - slack, base_size - 1))
    hi = min(base_size, max(start + size + slack, lo + 1), lo + DELTA_MAX_PREFIX)
    return lo, hi


def delta_encode_records(
    records: Sequence[Record], refs: Mapping[str, tuple[str, int, int]], prefixes: Prefixes, level: int = 3
) -> list[Record]:
    """Server side of a fetch with bases (blocking: run it on a thread): each stored record
    whose hash has a base range in ``refs`` is re-sent as a codec-2 record compressed against
    that range (``prefixes``) when that is smaller than the stored record; others as stored.
    Every stored record is decompressed and hash-checked before it is re-encoded."""
    out: list[Record] = []
    done: dict[str, Record] = {}
    for record in records:
        h = record[0]
        ref = refs.get(h)
        if ref is None:
            out.append(record)
            continue
        if h not in done:
            raw = _raw_of(record)
            payload = delta_payload(ref[0], ref[1], prefixes[ref], raw, level)
            done[h] = (h, CODEC_DELTA, record[2], payload) if len(payload) < len(record[3]) else record
        out.append(done[h])
    return out


def decode_fetched(
    body: bytes | memoryview, prefixes: Prefixes, max_records: int = 4096
) -> tuple[dict[str, bytes], list[str]]:
    """Client side of a fetch with bases: the verified raw bytes by hash, and the hashes of
    delta records that did not rebuild to their hash from the client's own base bytes (its
    base went bad: fetch those again without a delta). A delta against a range the client did
    not name, or any other bad record, is ``BadChunk``."""
    raw: dict[str, bytes] = {}
    failed: list[str] = []
    for record in decode_records(body, max_records):
        h, codec = record[0], record[1]
        if codec == CODEC_DELTA:
            ref = delta_ref(record)
            if ref not in prefixes or len(prefixes[ref]) != ref[2]:
                raise BadChunk("server sent a delta against a base range that was not asked for", chunk=h)
            try:
                raw[h] = _raw_of(record, prefixes)
            except BadChunk:
                failed.append(h)
            continue
        raw[h] = _raw_of(record)
    return raw, [h for h in dict.fromkeys(failed) if h not in raw]
