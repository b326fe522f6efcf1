"""The streamed commit parse (core/manifestlift.py ``StreamLifter``, core/bodycodec.py
``decode_pieces``, web/parse.py ``parse_encoded_commit``) against the one-shot path: the same
lifted body and packed lists at every split point of a small body, the same commit or the same
error for good, bad and oddly spelled bodies, compressed or not."""

from __future__ import annotations

import json
from typing import Any

import pytest
import zstandard

from smartsyncd.core import bodycodec, manifest
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.errors import SyncError
from smartsyncd.core.manifestlift import NotLiftable, StreamLifter, lift_manifests
from smartsyncd.core.model import ChunkRef
from smartsyncd.web.limits import Limits
from smartsyncd.web.parse import parse_commit, parse_encoded_commit


def refs(n: int, seed: int = 0) -> list[ChunkRef]:
    return [ChunkRef(chunk_hash(f"{seed}/{i}".encode()), 1000 + i) for i in range(n)]


def body(*files: tuple[str, Any], batch: str = 'b "manifest":[ in a string', spaced: bool = False) -> bytes:
    changes = [{"path": p, "kind": "put", "base": None, "manifest": m} for p, m in files]
    changes.append({"path": "gone.txt", "kind": "delete", "base": 3})
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps({"batch": batch, "changes": changes}, separators=separators).encode()


def streamed(data: bytes, pieces: list[bytes], min_entries: int, max_entries: int = 10**6) -> Any:
    lifter = StreamLifter("m:", min_entries, max_entries)
    for piece in pieces:
        lifter.feed(piece)
    return lifter.finish()


SMALL = body(("a", manifest.chunks_to_json(refs(5))), ("b", manifest.chunks_to_json(refs(2, 1))),
             ("c", manifest.chunks_to_json(refs(4, 2))), ("d", []))


@pytest.mark.parametrize("data", [SMALL, body(("a", manifest.chunks_to_json(refs(6))), spaced=True)])
def test_every_split_point_lifts_as_the_one_shot_path(data: bytes) -> None:
    expected = lift_manifests(data, "m:", 4, 10**6)
    assert expected[1]  # SMALL: "a" and "c" lifted, "b" (2 entries) and "d" (empty) left as text
    for cut in range(len(data) + 1):
        assert streamed(data, [data[:cut], data[cut:]], 4) == expected, cut
    for size in (1, 2, 3, 7, 64):
        assert streamed(data, [data[i : i + size] for i in range(0, len(data), size)], 4) == expected


@pytest.mark.parametrize("bad", [
    lambda e: [e[0].upper(), e[1]], lambda e: [e[0], 0], lambda e: [e[0], 262145],
    lambda e: [e[0], e[1], 1], lambda e: [e[0], 1.5], lambda e: {"h": e[0]},
])
def test_a_bad_entry_before_and_after_the_minimum(bad: Any) -> None:
    wire = manifest.chunks_to_json(refs(12))
    early = [*wire[:2], bad(wire[2]), *wire[3:]]
    data = body(("a", early))
    # before min_entries entries: left as text, the same as the one-shot path
    for cut in range(len(data) + 1):
        assert streamed(data, [data[:cut], data[cut:]], 4) == lift_manifests(data, "m:", 4, 10**6)
    late = [*wire[:8], bad(wire[8]), *wire[9:]]
    data = body(("a", late))
    with pytest.raises(NotLiftable):  # after: the caller goes the one-shot way
        streamed(data, [data[:100], data[100:]], 4)
    with pytest.raises(NotLiftable):  # too many entries
        streamed(body(("a", wire)), [body(("a", wire))], 4, max_entries=10)


def outcome(parse: Any) -> Any:
    try:
        parsed = parse()
    except SyncError as e:
        return type(e), e.message, e.details
    return parsed.batch, parsed.changes, parsed.manifests, parsed.check


def zstd(data: bytes, **kw: Any) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(data)


BIG = manifest.chunks_to_json(refs(manifest.PACK_MIN_ENTRIES * 3))
ESCAPED = json.dumps(BIG[:300]).replace('"' + BIG[5][0][:1], '"\\u00' + BIG[5][0][:1].encode().hex(), 1)


@pytest.mark.parametrize("data", [
    body(("big", BIG), ("small", BIG[:3])),
    body(("big", BIG), spaced=True),
    body(("big", [*BIG[:400], [BIG[400][0], 0], *BIG[401:]])),  # bad size: refused, naming the field
    body(("big", [*BIG[:400], [BIG[400][0].upper(), 5], *BIG[401:]])),
    body(("big", BIG), ("big", BIG)),  # the same path twice
    body(("big", "m:0")),  # a forged placeholder is a string
    json.dumps({"batch": "b", "changes": [{"path": "e", "kind": "put", "base": None,
                                           "manifest": "PLACE"}]}).replace('"PLACE"', ESCAPED).encode(),
    b'{"batch": "b", "changes": [{"path": "x", "kind": "put", "base": null, "manifest": [' + b"[" * 40,
    b"[1, 2]",
])
def test_the_streamed_parse_gives_the_one_shot_result(data: bytes) -> None:
    limits = Limits()
    expected = outcome(lambda: parse_commit(data, limits))
    for encoding, sent in ((None, data), ("zstd", zstd(data)), ("zstd", zstd(data, write_content_size=False))):
        assert outcome(lambda s=sent, e=encoding: parse_encoded_commit(s, e, limits)) == expected
    big = parse_encoded_commit(zstd(body(("big", BIG))), "zstd", limits).manifests["big"].chunks
    assert isinstance(big, manifest.PackedChunks) and big == BIG_REFS


BIG_REFS = refs(manifest.PACK_MIN_ENTRIES * 3)


def test_decoding_limits_hold_piece_by_piece() -> None:
    data = SMALL * 20
    frame = zstd(data)
    assert b"".join(bodycodec.decode_pieces(frame, "zstd", len(data), piece=100)) == data
    assert max(len(p) for p in bodycodec.decode_pieces(frame, "zstd", len(data), piece=100)) <= 100
    for sent, cap, error in [
        (frame, len(data) - 1, "TooLarge"),  # declared over the cap: refused before decompressing
        (zstd(data, write_content_size=False), len(data) - 1, "TooLarge"),  # counted as it comes
        (frame + b"x", len(data), "BadRequest"),  # data after the frame
        (frame[:-3], len(data), "BadRequest"),  # cut short
        (b"not zstd", len(data), "BadRequest"),
    ]:
        with pytest.raises(SyncError) as info:
            b"".join(bodycodec.decode_pieces(sent, "zstd", cap))
        assert type(info.value).__name__ == error
        with pytest.raises(type(info.value)):
            bodycodec.decode(sent, "zstd", cap)
    with pytest.raises(SyncError, match="Content-Encoding"):
        list(bodycodec.decode_pieces(data, "gzip", len(data)))
    with pytest.raises(SyncError, match="limit"):
        list(bodycodec.decode_pieces(data, None, len(data) - 1))
    checked = zstd(data, write_checksum=True)
    assert b"".join(bodycodec.decode_pieces(checked, "zstd", len(data))) == data
