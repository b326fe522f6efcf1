"""The pull's compact chunk index (client/chunkindex.py): the first location of a hash wins,
paths come back as given, and it holds a fraction of what a dict of strings and tuples did; a
large file's packed segment answers as a dict would, across segments and merges."""

from __future__ import annotations

import sys

import pytest

from smartsyncd.client import chunkindex
from smartsyncd.client.chunkindex import SEGMENT_MIN, ChunkIndex
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.model import ChunkRef
from smartsyncd.core.packed import PackedChunks


def test_first_location_wins_and_round_trips() -> None:
    index = ChunkIndex()
    a, b = chunk_hash(b"a"), chunk_hash(b"b")
    index.setdefault(a, ("Lead/ä.xlsx", 2**40, 65536))
    index.setdefault(a, ("other.xlsx", 0, 65536))
    index.setdefault(b, ("Lead/ä.xlsx", 7, 9))
    assert index[a] == ("Lead/ä.xlsx", 2**40, 65536) and index[b] == ("Lead/ä.xlsx", 7, 9)
    assert a in index and chunk_hash(b"c") not in index and 7 not in index and len(index) == 2


def test_an_entry_costs_well_under_a_dict_of_strings_and_tuples() -> None:
    digests = [chunk_hash(i.to_bytes(4, "big")) for i in range(2000)]
    index = ChunkIndex()
    plain: dict[str, tuple[str, int, int]] = {}
    for i, d in enumerate(digests):
        index.setdefault(d, ("big.zip", i * 32768, 32768))
        plain.setdefault(d, ("big.zip", i * 32768, 32768))

    def size(mapping: dict[object, object]) -> int:
        return sys.getsizeof(mapping) + sum(
            sys.getsizeof(k) + sys.getsizeof(v) + sum(sys.getsizeof(x) for x in v)
            if isinstance(v, tuple) else sys.getsizeof(k) + sys.getsizeof(v)
            for k, v in mapping.items())

    assert size(index._where) * 2 < size(plain)  # type: ignore[arg-type]


def _file(seed: int, n: int, size: int = 1000) -> list[ChunkRef]:
    return [ChunkRef(chunk_hash(f"{seed}/{i}".encode()), size + i % 7) for i in range(n)]


def _plain_index(files: list[tuple[str, list[ChunkRef]]]) -> dict[str, tuple[str, int, int]]:
    plain: dict[str, tuple[str, int, int]] = {}
    for path, chunks in files:
        offset = 0
        for c in chunks:
            plain.setdefault(c.hash, (path, offset, c.size))
            offset += c.size
    return plain


def test_large_files_become_segments_with_the_same_answers_as_a_dict() -> None:
    shared = _file(9, 50)
    files = [
        ("small.txt", _file(1, 10) + shared[:5]),
        ("big.zip", _file(2, SEGMENT_MIN) + shared),  # a segment
        ("big2.zip", shared + _file(3, 3 * SEGMENT_MIN)),  # larger: stays its own segment
        ("big3.zip", _file(4, SEGMENT_MIN + 1)),  # merged into the one before (no more than 2x)
        ("late.txt", shared + _file(5, 3)),  # small, after: earlier places win
    ]
    index = ChunkIndex()
    for n, (path, chunks) in enumerate(files):
        index.add(path, PackedChunks.of(chunks) if n % 2 else chunks)
    assert len(index._segments) == 2
    for digest, where in _plain_index(files).items():
        assert digest in index and index[digest] == where
    missing = chunk_hash(b"nowhere")
    assert missing not in index
    with pytest.raises(KeyError):
        index[missing]


def test_a_repeated_chunk_in_one_large_file_finds_its_first_place() -> None:
    chunks = _file(1, SEGMENT_MIN)
    twice = chunks + chunks[:3]
    index = ChunkIndex()
    index.add("a.bin", twice)
    assert index[chunks[1].hash] == ("a.bin", chunks[0].size, chunks[1].size)


def test_a_file_past_the_segment_limit_keeps_its_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkindex, "SEGMENT_MAX", 1500)
    monkeypatch.setattr(chunkindex, "_SORT_BLOCK", 256)  # keys sorted in blocks, then merged
    chunks = _file(7, 4000)
    index = ChunkIndex()
    index.add("huge.bin", PackedChunks.of(chunks))
    assert len(index._segments) == 3  # 1500 + 1500 + 1000: none merges past the limit
    for digest, where in _plain_index([("huge.bin", chunks)]).items():
        assert index[digest] == where


def test_a_segment_costs_about_20_bytes_a_chunk() -> None:
    index = ChunkIndex()
    index.add("big.zip", PackedChunks.of(_file(1, 20_000)))
    (segment,) = index._segments
    held = sum(sys.getsizeof(a) for a in (segment.keys, segment.offsets, segment.sizes))
    assert held < 21 * 20_000
