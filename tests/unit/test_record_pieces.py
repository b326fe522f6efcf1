"""A chunk stream parsed from the pieces it arrived in (core/chunkstream.py
``decode_record_pieces``, client/fetchanswer.py; issue 15, the loopback download).

Every way of cutting a stream into pieces (inside a header, inside a payload, one byte a piece)
gives the records ``decode_records`` gives for the joined stream, a cut stream the same
``BadChunk``, and ``decode_answer`` the same raw chunks whole or in pieces, with or without
delta bases."""

from __future__ import annotations

import os
import random

import pytest

from smartsyncd.client.fetchanswer import decode_answer
from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import (
    HEADER_BYTES,
    BadChunk,
    decode_record_pieces,
    decode_records,
    encode_records,
)

CHUNKS_TYPE = "application/x-smartsync-chunks"


def datas(n: int) -> list[bytes]:
    """Noise (raw records) and text (zstd records), of several sizes."""
    return [os.urandom(100 + 977 * i) if i % 2 else b"line %d\n" % i * (50 + 31 * i) for i in range(n)]


def stream(n: int = 12) -> tuple[list[bytes], bytes]:
    """``n`` chunks and their chunk stream, as the daemon stores them (raw or zstd)."""
    raw = datas(n)
    return raw, encode_records((chunk_hash(d), *chunkstream.compress_chunk(d)[:1], len(d),
                                chunkstream.compress_chunk(d)[1]) for d in raw)


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def test_any_cut_gives_the_records_of_the_joined_stream() -> None:
    _, body = stream()
    whole = decode_records(body)
    rnd = random.Random(7)
    cuts = [
        [],
        [HEADER_BYTES // 2],  # inside the first header
        [HEADER_BYTES + 10],  # inside the first payload
        list(range(1, len(body))),  # one byte a piece
        *[[rnd.randrange(1, len(body)) for _ in range(k)] for k in (3, 30, 300) for _ in range(5)],
    ]
    for points in cuts:
        assert decode_record_pieces(cut(body, points)) == whole
    assert decode_record_pieces([b"", body[:5], b"", body[5:], b""]) == whole  # empty pieces
    assert decode_record_pieces([]) == []


@pytest.mark.parametrize(("end", "message"), [
    (HEADER_BYTES - 1, "inside a record header"),
    (HEADER_BYTES + 1, "inside a payload"),
])
def test_a_cut_stream_is_refused_as_whole(end: int, message: str) -> None:
    _, body = stream(2)
    short = body[:end]
    with pytest.raises(BadChunk, match=message):
        decode_records(short)
    with pytest.raises(BadChunk, match=message):
        decode_record_pieces(cut(short, [end // 2]))


def test_the_record_cap_holds_in_pieces() -> None:
    _, body = stream(5)
    with pytest.raises(BadChunk, match="more than 4 chunks"):
        decode_record_pieces(cut(body, [100, 5000]), max_records=4)


def test_decode_answer_in_pieces_verifies_as_whole() -> None:
    raw, body = stream()
    asked = [chunk_hash(d) for d in raw]
    pieces = cut(body, list(range(4000, len(body), 4000)))
    assert decode_answer(pieces, CHUNKS_TYPE, asked, {}) == decode_answer(body, CHUNKS_TYPE, asked, {})
    assert decode_answer(pieces, CHUNKS_TYPE, asked, {})[0] == dict(zip(asked, raw, strict=True))
    # a flipped byte in the last (raw) payload, cut across two pieces: refused, naming it
    damaged = bytearray(body)
    damaged[-1] ^= 1
    with pytest.raises(BadChunk, match="does not hash") as refused:
        decode_answer(cut(bytes(damaged), [len(body) - 3]), CHUNKS_TYPE, asked, {})
    assert refused.value.details.get("chunk") == asked[-1]


def test_decode_answer_with_delta_bases_takes_pieces_too() -> None:
    base = os.urandom(30_000)
    new = base[:20_000] + b"changed" + base[20_000:]
    h = chunk_hash(new)
    payload = chunkstream.delta_payload("c" * 64, 0, base, new)
    body = encode_records([(h, chunkstream.CODEC_DELTA, len(new), payload)])
    prefixes = {("c" * 64, 0, len(base)): base}
    whole = decode_answer(body, CHUNKS_TYPE, [h], prefixes)
    assert whole == ({h: new}, [])
    assert decode_answer(cut(body, [7, 100, 1000]), CHUNKS_TYPE, [h], prefixes) == whole
