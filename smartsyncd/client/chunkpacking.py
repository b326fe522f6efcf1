"""How chunk transfers are packed into requests (docs/protocol.md "Limits"): fetches by raw
size, count and base bytes named; uploads by record size, count and base bytes; upload bodies
encoded (zstd or delta per chunk, whichever is smaller). Pure functions, run in threads by
:class:`smartsyncd.client.http.ServerAPI`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from smartsyncd.client.wire import ChunkWanted, DeltaHint, UploadItem
from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.core.chunkstream import (
    CODEC_DELTA,
    compress_chunk,
    delta_payload,
    encode_records,
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
    batch: list[str], hints: Mapping[str, DeltaHint]
) -> tuple[dict[str, object], dict[tuple[str, int, int], bytes]]:
    """The fetch request for ``batch`` (with ``bases``/``deltas`` for the hinted chunks) and
    the base ranges it names, by ``(base, offset, length)``."""
    body: dict[str, object] = {"chunks": batch}
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
    return encode_records(records)

