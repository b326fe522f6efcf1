"""Chunking: content-defined boundaries, size bounds, and exact reconstruction."""

from __future__ import annotations

import random

from smartsyncd.core.chunking import (
    AVG_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    chunk_buffer,
    chunk_hash,
    cut,
    make_chunker,
)


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_sizes_are_the_protocol_sizes() -> None:
    chunker = make_chunker()
    assert (chunker.min_size, chunker.avg_size, chunker.max_size) == (8192, 32768, 262144)
    assert (MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) == (8192, 32768, 262144)


def test_empty_data_has_no_chunks() -> None:
    assert cut(b"") == []
    assert chunk_buffer(b"") == []


def test_chunk_hash_is_blake3_hex() -> None:
    # BLAKE3 of the empty input (published test vector)
    assert chunk_hash(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert chunk_hash(memoryview(b"abc")) == chunk_hash(b"abc")


def test_concatenation_reproduces_input_and_sizes_in_bounds() -> None:
    data = _data(3 * 1024 * 1024)
    pieces = chunk_buffer(data)
    assert b"".join(bytes(p) for _, p in pieces) == data
    offsets = cut(data)
    assert [o for o, _ in offsets] == [sum(n for _, n in offsets[:i]) for i in range(len(offsets))]
    for ref, piece in pieces[:-1]:
        assert MIN_CHUNK <= ref.size <= MAX_CHUNK
        assert ref.size == len(piece)
        assert ref.hash == chunk_hash(piece)
    assert 0 < pieces[-1][0].size <= MAX_CHUNK


def test_uniform_data_hits_max_chunk() -> None:
    sizes = [n for _, n in cut(b"\0" * (MAX_CHUNK * 3 + 5))]
    assert max(sizes) <= MAX_CHUNK
    assert sum(sizes) == MAX_CHUNK * 3 + 5


def test_small_buffer_is_one_chunk() -> None:
    assert cut(b"hello") == [(0, 5)]


def test_insert_at_start_keeps_most_chunks() -> None:
    data = _data(4 * 1024 * 1024, seed=2)
    before = {ref.hash for ref, _ in chunk_buffer(data)}
    after = [ref.hash for ref, _ in chunk_buffer(_data(100, seed=3) + data)]
    changed = sum(1 for h in after if h not in before)
    assert len(before) > 50
    assert changed <= 2


def test_one_byte_flip_changes_at_most_two_chunks() -> None:
    data = bytearray(_data(4 * 1024 * 1024, seed=4))
    before = [ref.hash for ref, _ in chunk_buffer(bytes(data))]
    rng = random.Random(5)
    for _ in range(5):
        edited = bytearray(data)
        edited[rng.randrange(len(edited))] ^= 0xFF
        after = [ref.hash for ref, _ in chunk_buffer(bytes(edited))]
        assert len(set(after) - set(before)) <= 2
        assert len(set(before) - set(after)) <= 2
