"""Manifests: content id, binary and JSON forms, and deltas (including malformed input)."""

from __future__ import annotations

import json

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartsyncd.core.chunking import MAX_CHUNK, chunk_buffer
from smartsyncd.core.errors import BadRequest
from smartsyncd.core.manifest import (
    apply_delta,
    chunks_from_json,
    chunks_to_json,
    content_id,
    decode_binary,
    encode_binary,
    make_delta,
    make_manifest,
)
from smartsyncd.core.model import ChunkRef


def ref(n: int, size: int = 1000) -> ChunkRef:
    return ChunkRef(blake3.blake3(n.to_bytes(8, "big")).hexdigest(), size)


def test_content_id_matches_protocol_definition() -> None:
    chunks = [ref(1, 5), ref(2, MAX_CHUNK)]
    expected = blake3.blake3(
        b"smartsync-manifest-v1\n"
        + bytes.fromhex(chunks[0].hash)
        + (5).to_bytes(8, "big")
        + bytes.fromhex(chunks[1].hash)
        + MAX_CHUNK.to_bytes(8, "big")
    ).hexdigest()
    assert content_id(chunks) == expected
    assert content_id([]) == blake3.blake3(b"smartsync-manifest-v1\n").hexdigest()
    assert content_id(chunks) != content_id(chunks[::-1])
    assert content_id([ref(1, 5)]) != content_id([ref(1, 6)])


def test_make_manifest_of_real_data() -> None:
    data = bytes(range(256)) * 4000
    chunks = [r for r, _ in chunk_buffer(data)]
    m = make_manifest(chunks)
    assert m.size == len(data)
    assert m.chunks == tuple(chunks)
    assert m.content == content_id(chunks)
    assert make_manifest([]).size == 0


def test_binary_round_trip() -> None:
    chunks = (ref(1, 1), ref(2, MAX_CHUNK), ref(1, 1))
    blob = encode_binary(chunks)
    assert len(blob) == 120
    assert decode_binary(blob) == chunks
    assert decode_binary(b"") == ()
    with pytest.raises(ValueError):
        decode_binary(blob[:-1])


def test_json_round_trip() -> None:
    chunks = (ref(1, 1), ref(2, 300))
    value = json.loads(json.dumps(chunks_to_json(chunks)))
    assert chunks_from_json(value) == chunks
    assert chunks_from_json([]) == ()


BAD_MANIFESTS = [
    ({"a": 1}, "list"),
    ("abc", "list"),
    ([["ab", 1]], "hex"),
    ([[ref(1).hash.upper(), 1]], "hex"),
    ([[ref(1).hash[:-1] + "g", 1]], "hex"),
    ([[ref(1).hash, 0]], "outside"),
    ([[ref(1).hash, -1]], "outside"),
    ([[ref(1).hash, MAX_CHUNK + 1]], "outside"),
    ([[ref(1).hash, "1"]], "integer"),
    ([[ref(1).hash, 1.0]], "integer"),
    ([[ref(1).hash, True]], "integer"),
    ([[ref(1).hash]], "pair"),
    ([[ref(1).hash, 1, 2]], "pair"),
    ([ref(1).hash], "pair"),
    ([[1, 1]], "hex"),
]


@pytest.mark.parametrize(("value", "word"), BAD_MANIFESTS)
def test_malformed_manifest_refused(value: object, word: str) -> None:
    with pytest.raises(BadRequest) as info:
        chunks_from_json(value)
    assert word in info.value.message


def test_manifest_entry_limit() -> None:
    value = chunks_to_json([ref(i) for i in range(11)])
    assert len(chunks_from_json(value, max_entries=11)) == 11
    with pytest.raises(BadRequest, match="more than 10"):
        chunks_from_json(value, max_entries=10)


def test_single_chunk_edit_in_8000_is_a_small_delta() -> None:
    base = [ref(i, 32768) for i in range(8000)]
    new = list(base)
    new[4321] = ref(10**9, 30000)
    ops = make_delta(base, new)
    assert ops == [
        ["copy", 0, 4321],
        ["add", [[new[4321].hash, 30000]]],
        ["copy", 4322, 8000 - 4322],
    ]
    assert len(json.dumps(ops)) < 1024
    assert apply_delta(base, json.loads(json.dumps(ops))) == tuple(new)


def test_insert_and_truncate_deltas() -> None:
    base = [ref(i) for i in range(100)]
    inserted = base[:10] + [ref(-1 % 2**64)] + base[10:]
    assert len(make_delta(base, inserted)) == 3
    assert make_delta(base, base[:50]) == [["copy", 0, 50]]
    assert make_delta(base, []) == []
    assert make_delta([], base[:2]) == [["add", chunks_to_json(base[:2])]]


def test_repeated_chunks_prefer_continuing_run() -> None:
    zero = ref(0)
    base = [zero] * 1000
    assert make_delta(base, base) == [["copy", 0, 1000]]
    new = base[:500] + [ref(7)] + base[500:]
    ops = make_delta(base, new)
    assert len(ops) == 3
    assert apply_delta(base, ops) == tuple(new)


_refs = st.lists(st.integers(0, 30).map(lambda n: ref(n, 100 + n)), max_size=60)


@given(_refs, _refs)
def test_delta_round_trip(base: list[ChunkRef], new: list[ChunkRef]) -> None:
    ops = make_delta(base, new)
    assert apply_delta(base, ops) == tuple(new)
    assert apply_delta(base, json.loads(json.dumps(ops))) == tuple(new)
    assert len(ops) <= 2 * len(new) + 1


BASE = [ref(i) for i in range(10)]

BAD_OPS = [
    ({"copy": 1}, "must be a list"),
    ([["copy", 0]], "copy takes"),
    ([["copy", 0, 1, 2]], "copy takes"),
    ([["copy", -1, 2]], "outside"),
    ([["copy", 5, 6]], "outside"),
    ([["copy", 0, 0]], "outside"),
    ([["copy", 10, 1]], "outside"),
    ([["copy", "0", 1]], "integer"),
    ([["copy", 0, 1.5]], "integer"),
    ([["copy", False, 1]], "integer"),
    ([["add"]], "add takes"),
    ([["add", []]], "at least one"),
    ([["add", [["zz", 1]]]], "hex"),
    ([["add", [[ref(1).hash, 0]]]], "outside"),
    ([["move", 0, 1]], "unknown op"),
    ([[]], "must be a list"),
    (["copy"], "must be a list"),
    ([[1, 0, 1]], "must be a list"),
]


@pytest.mark.parametrize(("ops", "word"), BAD_OPS)
def test_malformed_delta_refused(ops: object, word: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_delta(BASE, ops)
    assert word in info.value.message


def test_delta_output_limit() -> None:
    ops = [["copy", 0, 10]] * 5
    assert len(apply_delta(BASE, ops, max_entries=50)) == 50
    with pytest.raises(BadRequest, match="more than 49"):
        apply_delta(BASE, ops, max_entries=49)
    with pytest.raises(BadRequest):
        apply_delta(BASE, [["copy", 0, 10], ["add", chunks_to_json(BASE[:2])]], max_entries=11)
