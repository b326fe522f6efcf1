"""How chunk transfers are packed into requests (docs/protocol.md "Limits"): fetches by raw
size, count and base bytes named; uploads by record size, count and base bytes; upload bodies
encoded (zstd or delta per chunk, whichever is smaller), or, to a server that takes it, as
one zstd stream over raw records when that is smaller (``encode_body``). Pure functions, run
in threads by :class:`smartsyncd.client.http.ServerAPI`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from smartsyncd.client.bodyproducer import PIECE_BYTES, Body, BodyBuffers, fill
from smartsyncd.client.wire import ChunkWanted, DeltaHint, UploadItem
from smartsyncd.core import bodycodec
from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.core.chunkstream import (
    CODEC_DELTA,
    CODEC_RAW,
    CODEC_ZSTD,
    STREAM_BODY_CAP,
    Record,
    compress_chunk,
    delta_payload,
    encode_records,
    record_pieces,
)
from smartsyncd.core.model import ChunkRef

# a request body of chunks: room for the engine's 16 MiB upload window and its record headers
# in one request (the server takes up to 32 MiB, docs/protocol.md "Limits")
UPLOAD_BODY_LIMIT = 24 * 1024 * 1024
FETCH_DATA_LIMIT = 16 * 1024 * 1024
# base bytes the deltas of one fetch may name (the client holds them while the request is out;
# the server allows 64 MiB)
FETCH_BASE_LIMIT = 24 * 1024 * 1024
# base bytes the delta records of one upload may name (the server allows 64 MiB per request)
UPLOAD_BASE_LIMIT = 48 * 1024 * 1024
CHUNKS_PER_REQUEST = 4096
RECORD_HEADER = 41  # hash 32 + codec 1 + raw_len 4 + payload_len 4
# An upload of at most this many raw bytes may go as one zstd stream (``encode_body``); larger
# ones (a large file's windows, a bulk upload) keep a frame per chunk, as fast as before.
STREAM_RAW_LIMIT = 4 * 1024 * 1024
# Up to this many raw bytes, the stream is compressed harder: zstd level 9 takes about 18 ms a
# MiB, nothing next to the link, and makes treq's first tree (253 KB) 57.3 KB instead of 64.2.
STREAM_HARD_BYTES = 1024 * 1024
STREAM_HARD_LEVEL = 9


def wanted_item(item: ChunkWanted) -> tuple[str, tuple[int, DeltaHint | None]]:
    if isinstance(item, str):
        return item, (MAX_CHUNK, None)
    if isinstance(item, ChunkRef):
        return item.hash, (item.size, None)
    if len(item) == 3:
        return item[0], (item[1], item[2])
    return item[0], (item[1], None)


def fetch_batches(wanted: Mapping[str, tuple[int, DeltaHint | None]]) -> Iterator[list[str]]:
    """Hashes in requests of at most ``FETCH_DATA_LIMIT`` raw bytes, ``CHUNKS_PER_REQUEST``
    chunks and ``FETCH_BASE_LIMIT`` bytes of base ranges."""
    batch: list[str] = []
    total = based = 0
    for digest, (size, hint) in wanted.items():
        size = min(max(size, 0), MAX_CHUNK)
        prefix = len(hint.prefix) if hint is not None else 0
        if batch and (
            total + size > FETCH_DATA_LIMIT or len(batch) >= CHUNKS_PER_REQUEST
            or based + prefix > FETCH_BASE_LIMIT
        ):
            yield batch
            batch, total, based = [], 0, 0
        batch.append(digest)
        total += size
        based += prefix
    if batch:
        yield batch


def fetch_body(
    batch: list[str], hints: Mapping[str, DeltaHint], stream: bool = False
) -> tuple[dict[str, object], dict[tuple[str, int, int], bytes]]:
    """The fetch request for ``batch`` (with ``bases``/``deltas`` for the hinted chunks) and
    the base ranges it names, by ``(base, offset, length)``. ``stream``: the answer may come
    as one zstd stream (core/fetchstream.py)."""
    body: dict[str, object] = {"chunks": batch, **({"stream": 1} if stream else {})}
    prefixes: dict[tuple[str, int, int], bytes] = {}
    bases: dict[str, int] = {}
    deltas: list[list[int]] = []
    for i, digest in enumerate(batch):
        hint = hints.get(digest)
        if hint is None or not hint.prefix:
            continue
        b = bases.setdefault(hint.base, len(bases))
        deltas.append([i, b, hint.offset, len(hint.prefix)])
        prefixes[(hint.base, hint.offset, len(hint.prefix))] = hint.prefix
    if deltas:
        body["bases"] = list(bases)
        body["deltas"] = deltas
    return body, prefixes


def upload_batches(chunks: Iterable[UploadItem]) -> Iterator[list[UploadItem]]:
    # Compression never grows a record (raw is sent when zstd does not help, a delta only when
    # it is smaller), so packing by raw size plus record headers keeps every body in the limit.
    # The base bytes a request's delta records name are capped per request (protocol.md,
    # Limits): counted with repeats, so the server's count (each range once) is never higher.
    batch: list[UploadItem] = []
    total = based = 0
    for item in chunks:
        cost = len(item[1]) + RECORD_HEADER
        base = len(item[2].prefix) if len(item) > 2 else 0
        if batch and (
            total + cost > UPLOAD_BODY_LIMIT or len(batch) >= CHUNKS_PER_REQUEST
            or based + base > UPLOAD_BASE_LIMIT
        ):
            yield batch
            batch, total, based = [], 0, 0
        batch.append(item)
        total += cost
        based += base
    if batch:
        yield batch


def encode_upload(batch: list[UploadItem]) -> bytes:
    return encode_records(_records(batch))


def encode_body(batch: list[UploadItem], stream: bool) -> tuple[list[bytes], bytes | None]:
    """The request body for ``batch``, as pieces sent in order (a record's header, its payload:
    an 8 MiB body is never joined into one buffer), and its ``Content-Encoding`` (None: a
    frame per chunk).

    With ``stream`` (the server takes ``Content-Encoding: zstd`` uploads), a batch of at most
    ``STREAM_RAW_LIMIT`` raw bytes in which some chunk compresses goes as one zstd frame over
    raw records (deltas and incompressible chunks as they are) when that is smaller: many
    small files compress across each other (issue 15: the chunk uploads of treq's first tree,
    78.1 KB, are 59.5 KB)."""
    records = _records(batch)
    plain = record_pieces(records)
    if not stream or not any(r[1] == CODEC_ZSTD for r in records):
        return plain, None
    size = sum(r[2] for r in records) + RECORD_HEADER * len(records)
    if size > STREAM_RAW_LIMIT:
        return plain, None
    # the compressible ones first and together: incompressible records among them would cost
    # the stream much of its gain (1,000 work papers of bench/wan.py: 2,083 KB as frames, the
    # same as one stream in scan order, 2,017 KB with the text papers first)
    raw = [(r[0], CODEC_RAW, r[2], bytes(item[1]))
           for r, item in zip(records, batch, strict=True) if r[1] == CODEC_ZSTD]
    body = encode_records(raw + [r for r in records if r[1] != CODEC_ZSTD])
    if len(body) > STREAM_BODY_CAP:
        return plain, None
    framed = bodycodec.compress(body, STREAM_HARD_LEVEL if size <= STREAM_HARD_BYTES else 3)
    if len(framed) < sum(map(len, plain)):
        return [framed], bodycodec.ENCODING.encode()
    return plain, None


def encode_request(
    batch: list[UploadItem], stream: bool, buffers: BodyBuffers
) -> tuple[Body, bytes | None, bytearray | None]:
    """``encode_body``, a large body joined into a buffer of ``buffers`` (also returned: give
    it back once the request is done; None for a small body, sent as its pieces)."""
    pieces, encoding = encode_body(batch, stream)
    size = sum(map(len, pieces))
    if size <= PIECE_BYTES:
        return pieces, encoding, None
    buffer = buffers.take(size)
    return [fill(buffer, pieces)], encoding, buffer


def _records(batch: list[UploadItem]) -> list[Record]:
    records = []
    for item in batch:
        digest, raw = item[0], item[1]
        codec, payload = compress_chunk(raw)
        if len(item) > 2:
            hint = item[2]
            delta = delta_payload(hint.base, hint.offset, hint.prefix, raw)
            if len(delta) < len(payload):
                codec, payload = CODEC_DELTA, delta
        records.append((digest, codec, len(raw), payload))
    return records
