"""The ``application/x-smartsync-chunks`` record format: encode, parse, and verify chunks.

Parsing and verifying are separate steps so the web layer can parse on the reactor (cheap) and
verify on a thread pool (decompression and hashing). Decompression is always capped at the
record's declared length, itself capped at ``MAX_CHUNK``, so a zstd bomb costs nothing.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence

import zstandard

from smartsyncd.core.chunking import MAX_CHUNK, chunk_hash
from smartsyncd.core.errors import BadChunk
from smartsyncd.storage.api import VerifiedChunk

CODEC_RAW = 0
CODEC_ZSTD = 1
CODECS = (CODEC_RAW, CODEC_ZSTD)
MAX_WINDOW = 1 << 23  # 8 MiB: far above what a 256 KiB chunk needs
ZSTD_SLACK = 1024  # a zstd frame of incompressible data is a little larger than its input
PROBE_BYTES = 4096  # sample size of the compressibility probe
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


def encode_records(records: Iterable[Record]) -> bytes:
    """Serialize ``(hash hex, codec, raw_len, payload)`` records; ``ValueError`` on bad fields."""
    parts: list[bytes] = []
    for h, codec, raw_len, payload in records:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec}")
        digest = bytes.fromhex(h)
        if len(digest) != 32:
            raise ValueError("chunk hash must be 32 bytes")
        parts.append(_HEADER.pack(digest, codec, raw_len, len(payload)))
        parts.append(bytes(payload))
    return b"".join(parts)


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
        digest, codec, raw_len, payload_len = _HEADER.unpack_from(view, pos)
        h = digest.hex()
        pos += HEADER_BYTES
        if codec not in CODECS:
            raise BadChunk(f"unknown chunk codec {codec}", chunk=h)
        if raw_len == 0 or raw_len > MAX_CHUNK:
            raise BadChunk(f"chunk length {raw_len} is outside 1..{MAX_CHUNK}", chunk=h)
        if codec == CODEC_RAW and payload_len != raw_len:
            raise BadChunk("raw chunk payload length differs from its length", chunk=h)
        if codec == CODEC_ZSTD and payload_len > raw_len + ZSTD_SLACK:
            raise BadChunk("compressed chunk payload is larger than allowed", chunk=h)
        if len(view) - pos < payload_len:
            raise BadChunk("chunk stream truncated inside a payload", chunk=h)
        records.append((h, codec, raw_len, bytes(view[pos : pos + payload_len])))
        pos += payload_len
    return records


def _raw_of(record: Record) -> bytes:
    h, codec, raw_len, payload = record
    if codec == CODEC_RAW:
        raw = payload
    elif codec == CODEC_ZSTD:
        raw = _decompress(h, raw_len, payload)
    else:
        raise BadChunk(f"unknown chunk codec {codec}", chunk=h)
    if len(raw) != raw_len:
        raise BadChunk(f"chunk is {len(raw)} bytes, declared {raw_len}", chunk=h)
    if chunk_hash(raw) != h:
        raise BadChunk("chunk does not hash to its name", chunk=h)
    return raw


def _decompress(h: str, raw_len: int, payload: bytes) -> bytes:
    if raw_len > MAX_CHUNK:
        raise BadChunk(f"chunk length {raw_len} is over {MAX_CHUNK}", chunk=h)
    try:
        # zstandard ignores max_output_size when the frame header states a content size, so a
        # frame claiming more than the record's length is refused before anything is allocated.
        declared = zstandard.frame_content_size(payload)
        if declared != -1 and declared != raw_len:
            raise BadChunk(f"zstd frame declares {declared} bytes, record {raw_len}", chunk=h)
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        return decompressor.decompress(payload, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise BadChunk(f"chunk does not decompress: {exc}", chunk=h) from None


def verify_records(records: Sequence[Record]) -> list[VerifiedChunk]:
    """Decompress (capped) and hash every record; ``BadChunk`` names the first bad one.

    The payload is kept as sent, so storage keeps the sender's compression.
    """
    out: list[VerifiedChunk] = []
    for record in records:
        _raw_of(record)
        h, codec, raw_len, payload = record
        out.append(VerifiedChunk(hash=h, codec=codec, raw_size=raw_len, payload=payload))
    return out


def decode_to_raw(body: bytes | memoryview, max_records: int = 4096) -> dict[str, bytes]:
    """Client side of a download: parse, verify, and return the raw bytes by hash."""
    return {record[0]: _raw_of(record) for record in decode_records(body, max_records)}
