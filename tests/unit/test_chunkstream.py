"""The chunk stream format: round trips, and every kind of malformed or hostile record refused."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
import zstandard

from smartsyncd.core.chunking import MAX_CHUNK, chunk_hash
from smartsyncd.core.chunkstream import (
    HEADER_BYTES,
    compress_chunk,
    decode_records,
    decode_to_raw,
    encode_records,
    verify_records,
)
from smartsyncd.core.errors import BadChunk


def record(raw: bytes) -> tuple[str, int, int, bytes]:
    codec, payload = compress_chunk(raw)
    return (chunk_hash(raw), codec, len(raw), payload)


def test_compress_only_when_it_helps() -> None:
    text = b"Trial balance 2026 " * 2000
    codec, payload = compress_chunk(text)
    assert codec == 1
    assert zstandard.frame_content_size(payload) == len(text)
    noise = os.urandom(50_000)
    assert compress_chunk(noise) == (0, noise)


def test_round_trip() -> None:
    chunks = [b"a" * 40_000, os.urandom(MAX_CHUNK), b"x", bytes(range(256)) * 100]
    body = encode_records(record(c) for c in chunks)
    parsed = decode_records(body)
    assert [r[0] for r in parsed] == [chunk_hash(c) for c in chunks]
    assert [r[1] for r in parsed] == [1, 0, 0, 1]
    verified = verify_records(parsed)
    assert [(v.hash, v.codec, v.raw_size) for v in verified] == [r[:3] for r in parsed]
    assert [v.payload for v in verified] == [r[3] for r in parsed]  # kept as sent
    raw = decode_to_raw(body)
    assert raw == {chunk_hash(c): c for c in chunks}
    assert decode_records(b"") == []


def test_header_layout() -> None:
    raw = b"hello"
    body = encode_records([(chunk_hash(raw), 0, 5, raw)])
    assert len(body) == HEADER_BYTES + 5 == 32 + 1 + 4 + 4 + 5
    assert body[:32] == bytes.fromhex(chunk_hash(raw))
    assert body[32] == 0
    assert struct.unpack(">II", body[33:41]) == (5, 5)


def test_zstd_bomb_refused_without_allocating() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * (100 << 20))
    bomb_no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (100 << 20))
    for payload in (bomb, bomb_no_size):
        body = encode_records([("ab" * 32, 1, MAX_CHUNK, payload)])
        records = decode_records(body)  # parses: the payload itself is small
        tracemalloc.start()
        try:
            with pytest.raises(BadChunk) as info:
                verify_records(records)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * MAX_CHUNK
        assert info.value.details["chunk"] == "ab" * 32


def test_large_window_refused() -> None:
    # a streamed frame keeps its 32 MiB window even for 1000 bytes; plain zstd would accept it
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=25, write_content_size=0)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    raw = b"w" * 1000
    frame = compressor.compress(raw) + compressor.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 25
    assert zstandard.ZstdDecompressor().decompress(frame, max_output_size=1000) == raw
    with pytest.raises(BadChunk, match="memory"):
        verify_records([(chunk_hash(raw), 1, 1000, frame)])


def test_wrong_hash_refused() -> None:
    good = record(b"a" * 10_000)
    bad = ("00" * 32,) + good[1:]
    with pytest.raises(BadChunk, match="hash") as info:
        verify_records([good, bad])
    assert info.value.details["chunk"] == "00" * 32
    raw_bad = ("00" * 32, 0, 3, b"abc")
    with pytest.raises(BadChunk, match="hash"):
        decode_to_raw(encode_records([raw_bad]))


def test_declared_length_mismatch_refused() -> None:
    raw = b"b" * 10_000
    frame = compress_chunk(raw)[1]
    with pytest.raises(BadChunk):
        verify_records([(chunk_hash(raw), 1, 9_999, frame)])
    with pytest.raises(BadChunk):
        verify_records([(chunk_hash(raw), 1, 10_001, frame)])


def test_trailing_data_after_frame_refused() -> None:
    raw = b"c" * 10_000
    frame = compress_chunk(raw)[1]
    with pytest.raises(BadChunk):
        verify_records([(chunk_hash(raw), 1, len(raw), frame + frame)])
    with pytest.raises(BadChunk):
        verify_records([(chunk_hash(raw), 1, len(raw), b"not zstd")])


def test_truncated_body_refused() -> None:
    body = encode_records([record(b"d" * 20_000), record(os.urandom(5000))])
    for cut in (1, 10, HEADER_BYTES - 1, len(body) - 1, len(body) - 4999):
        with pytest.raises(BadChunk, match="truncated"):
            decode_records(body[:cut])


def _header(codec: int, raw_len: int, payload_len: int) -> bytes:
    return struct.pack(">32sBII", b"\x11" * 32, codec, raw_len, payload_len)


@pytest.mark.parametrize(
    ("body", "word"),
    [
        (_header(9, 5, 5) + b"hello", "codec"),
        (_header(2, 5, 5) + b"hello", "delta"),
        (_header(0, 0, 0), "outside"),
        (_header(1, MAX_CHUNK + 1, 10) + b"x" * 10, "outside"),
        (_header(0, 5, 4) + b"hell", "raw"),
        (_header(0, 5, 6) + b"hello!", "raw"),
        (_header(1, 100, 100 + 1025) + b"x" * 1125, "larger"),
    ],
)
def test_malformed_records_refused(body: bytes, word: str) -> None:
    with pytest.raises(BadChunk, match=word) as info:
        decode_records(body)
    assert info.value.details["chunk"] == "11" * 32


def test_too_many_records_refused() -> None:
    body = encode_records([record(bytes([i])) for i in range(5)])
    assert len(decode_records(body, max_records=5)) == 5
    with pytest.raises(BadChunk, match="more than 4"):
        decode_records(body, max_records=4)


def _csv_like(rows: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    return b"".join(b"2026-01-%02d,4711-%03d,%d.%02d\n" % (1 + i % 28, i % 500, rng.randrange(10**5), i % 100)
                    for i in range(rows))


def test_delta_record_round_trip_and_is_small() -> None:
    from smartsyncd.core.chunkstream import CODEC_DELTA, delta_payload, delta_ref

    old = _csv_like(4000, 1)
    new = bytearray(old)
    new[5000:5004] = b"9999"
    raw = bytes(new[:60_000])
    base = "ab" * 32
    payload = delta_payload(base, 0, old[:64_000], raw)
    assert len(payload) < 200  # against compress_chunk's several KB
    rec = (chunk_hash(raw), CODEC_DELTA, len(raw), payload)
    body = encode_records([rec])
    parsed = decode_records(body)
    assert delta_ref(parsed[0]) == (base, 0, 64_000)
    prefixes = {(base, 0, 64_000): old[:64_000]}
    [verified] = verify_records(parsed, prefixes)
    assert verified.codec in (0, 1) and verified.raw_size == len(raw)  # stored self-contained
    assert decode_to_raw(body, prefixes=prefixes) == {chunk_hash(raw): raw}


def test_delta_record_refused_without_its_base_or_with_a_wrong_one() -> None:
    from smartsyncd.core.chunkstream import CODEC_DELTA, DELTA_MAX_PREFIX, delta_payload

    old = _csv_like(3000, 2)
    raw = old[:50_000]
    base = "cd" * 32
    rec = (chunk_hash(raw), CODEC_DELTA, len(raw), delta_payload(base, 0, old[:60_000], raw))
    with pytest.raises(BadChunk, match="base range"):
        verify_records([rec])
    with pytest.raises(BadChunk):  # a different prefix decodes to other bytes (or not at all)
        verify_records([rec], {(base, 0, 60_000): _csv_like(3000, 3)[:60_000]})
    too_long = struct.pack(">32sQI", bytes(32), 0, DELTA_MAX_PREFIX + 1) + b"x" * 20
    with pytest.raises(BadChunk, match="outside"):
        verify_records([(chunk_hash(raw), CODEC_DELTA, len(raw), too_long)], {})
