"""Download deltas (issue 7): the pure parts (range choice, the fetch codec round trip, the
client's request body) and the fetch handler's refusals over the real SyncAPI + SQLite store
(bad base, range out of bounds, another engagement's base: 4xx, nothing leaks)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from webkit import Env, in_memory, put, upload

from smartsyncd.client.chunkpacking import fetch_batches, fetch_body
from smartsyncd.client.deltabase import DELTA_SLACK, DeltaBase, base_range
from smartsyncd.client.wire import DeltaHint
from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_buffer, chunk_hash
from smartsyncd.core.chunkstream import (
    CODEC_DELTA,
    DELTA_MAX_PREFIX,
    aligned_range,
    decode_fetched,
    delta_encode_records,
    encode_records,
)
from smartsyncd.core.errors import BadChunk
from smartsyncd.core.manifest import content_id
from smartsyncd.core.model import ChunkRef


def csv(rows: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return "".join(
        f"2026-{1 + i % 12:02d},{rng.randrange(1000, 9999)},Invoice {i:08d},{rng.randrange(10**6) / 100:.2f}\n"
        for i in range(rows)
    ).encode()


def edit(data: bytes, seed: int) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    rng = random.Random(seed)
    for i in rng.sample(range(len(lines)), len(lines) // 100):
        lines[i] = lines[i].replace(",", ";", 1)
    return "".join(lines).encode()


def chunks_of(data: bytes) -> list[tuple[ChunkRef, bytes]]:
    return [(ref, bytes(piece)) for ref, piece in chunk_buffer(data)]


# -- range choice ----------------------------------------------------------------------------


def test_aligned_range_clips_to_the_base_and_is_never_empty() -> None:
    assert aligned_range(100_000, 50_000, 1_000_000, 8192) == (91_808, 158_192)
    assert aligned_range(0, 50_000, 1_000_000, 8192) == (0, 58_192)
    assert aligned_range(990_000, 50_000, 1_000_000, 8192) == (981_808, 1_000_000)
    assert aligned_range(5_000_000, 10, 1_000, 8192) == (999, 1_000)  # past the end: last byte
    lo, hi = aligned_range(0, 10 * DELTA_MAX_PREFIX, 100 * DELTA_MAX_PREFIX, 0)
    assert hi - lo == DELTA_MAX_PREFIX
    with pytest.raises(ValueError):
        aligned_range(0, 1, 0, 0)


def testbase_range_follows_the_shift_of_an_insert() -> None:
    old = csv(20_000, 1)
    new = b"X" * 5000 + old  # an insert at the start moves everything by 5000
    base = DeltaBase(content_id([r for r, _ in chunks_of(old)]), len(old),
                      tuple(r for r, _ in chunks_of(old)), tuple(r for r, _ in chunks_of(new)))
    offsets = []
    pos = 0
    for ref, _ in chunks_of(new):
        offsets.append((pos, ref.size))
        pos += ref.size
    # a chunk after an unchanged one lines up with the same bytes in the old version
    at, size = offsets[-1]
    lo, hi = base_range(base, at, size)
    assert lo == max(0, at - 5000 - DELTA_SLACK) and hi == len(old)
    assert new[at : at + size] in old[lo:hi]


# -- the codec round trip ----------------------------------------------------------------------


def test_fetch_round_trip_sends_small_deltas_and_rebuilds_exactly() -> None:
    old, new = csv(30_000, 2), edit(csv(30_000, 2), 3)
    old_refs = tuple(r for r, _ in chunks_of(old))
    new_pieces = chunks_of(new)
    base = DeltaBase(content_id(list(old_refs)), len(old), old_refs, tuple(r for r, _ in new_pieces))
    stored, refs, prefixes = [], {}, {}
    pos = 0
    for ref, raw in new_pieces:
        codec, payload = chunkstream.compress_chunk(raw)
        stored.append((ref.hash, codec, ref.size, payload))
        lo, hi = base_range(base, pos, ref.size)
        refs[ref.hash] = (base.content, lo, hi - lo)
        prefixes[(base.content, lo, hi - lo)] = old[lo:hi]
        pos += ref.size
    sent = delta_encode_records(stored, refs, prefixes)
    assert all(r[1] == CODEC_DELTA for r in sent)
    zstd_size = sum(len(r[3]) for r in stored)
    delta_size = sum(len(r[3]) for r in sent)
    assert delta_size * 10 < zstd_size, (delta_size, zstd_size)
    raw, failed = decode_fetched(encode_records(sent), prefixes)
    assert failed == [] and b"".join(raw[r.hash] for r, _ in new_pieces) == new

    # a receiver whose base bytes went bad: those chunks are reported, never returned
    bad = {k: bytes(reversed(v)) for k, v in prefixes.items()}
    raw, failed = decode_fetched(encode_records(sent), bad)
    assert raw == {} and sorted(failed) == sorted({r.hash for r, _ in new_pieces})
    # a delta against a range the receiver did not name is the server's error
    with pytest.raises(BadChunk):
        decode_fetched(encode_records(sent), {})


def test_a_delta_larger_than_the_stored_record_is_not_sent() -> None:
    raw = random.Random(4).randbytes(60_000)
    h = chunk_hash(raw)
    record = (h, chunkstream.CODEC_RAW, len(raw), raw)
    unrelated = random.Random(5).randbytes(70_000)
    ref = ("a" * 64, 0, len(unrelated))
    assert delta_encode_records([record], {h: ref}, {ref: unrelated}) == [record]


def test_client_request_names_each_base_once_and_bounds_base_bytes() -> None:
    hint = DeltaHint("b" * 64, 100, b"x" * 300)
    body, prefixes = fetch_body(["1" * 64, "2" * 64, "3" * 64], {"1" * 64: hint, "3" * 64: hint})
    assert body == {
        "chunks": ["1" * 64, "2" * 64, "3" * 64],
        "bases": ["b" * 64],
        "deltas": [[0, 0, 100, 300], [2, 0, 100, 300]],
    }
    assert prefixes == {("b" * 64, 100, 300): b"x" * 300}
    assert fetch_body(["1" * 64], {}) == ({"chunks": ["1" * 64]}, {})  # as before
    big = DeltaHint("b" * 64, 0, b"x" * DELTA_MAX_PREFIX)
    wanted = {f"{i:064x}": (1000, big) for i in range(60)}
    batches = list(fetch_batches(wanted))
    assert len(batches) == 3 and sum(map(len, batches)) == 60  # 24 MiB of bases per request


# -- the handler -------------------------------------------------------------------------------


async def _two_versions(env: Env, token: str) -> tuple[str, bytes, list[tuple[ChunkRef, bytes]]]:  # noqa: F811
    """Commit a CSV and a 1%-edited version of it at alpha/a.csv; returns the old content id,
    the old bytes and the new version's chunks."""
    old, new = csv(8_000, 6), edit(csv(8_000, 6), 7)
    old_pieces, new_pieces = chunks_of(old), chunks_of(new)
    await upload(env, token, *[d for _, d in old_pieces])
    await upload(env, token, *[d for _, d in new_pieces])
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token,
                       body={"batch": "b1", "changes": [put("a.csv", [c for c, _ in old_pieces])]})
    assert r.status == 200, r.body
    seq = r.json()["results"][0]["seq"]
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token,
                       body={"batch": "b2", "changes": [put("a.csv", [c for c, _ in new_pieces], seq)]})
    assert r.status == 200, r.body
    return content_id([c for c, _ in old_pieces]), old, new_pieces


@in_memory
async def test_fetch_with_a_base_answers_deltas_that_rebuild(env: Env) -> None:  # noqa: F811
    token = await env.login("alice")
    base, old, new_pieces = await _two_versions(env, token)
    reader = await env.login("rita")
    hashes = [c.hash for c, _ in new_pieces]
    ranges = [(0, len(old) - 1)] * len(hashes)
    deltas, prefixes = [], {}
    pos = 0
    for i, (ref, _) in enumerate(new_pieces):
        lo, hi = aligned_range(pos, ref.size, len(old), DELTA_SLACK)
        ranges[i] = (lo, hi)
        deltas.append([i, 0, lo, hi - lo])
        prefixes[(base, lo, hi - lo)] = old[lo:hi]
        pos += ref.size
    plain = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=reader, body={"chunks": hashes})
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=reader,
                       body={"chunks": hashes, "bases": [base], "deltas": deltas})
    assert r.status == 200, r.body
    assert len(r.body) * 5 < len(plain.body), (len(r.body), len(plain.body))
    raw, failed = decode_fetched(r.body, prefixes)
    assert failed == [] and [raw[h] for h in hashes] == [d for _, d in new_pieces]


@pytest.mark.parametrize(
    "mangle, status",
    [
        (lambda b: {**b, "bases": ["c" * 64]}, 400),  # not a version anywhere
        (lambda b: {**b, "deltas": [[0, 0, 10**9, 100]]}, 400),  # past the end of the base
        (lambda b: {**b, "deltas": [[0, 0, 0, 0]]}, 400),  # empty range
        (lambda b: {**b, "deltas": [[0, 0, 0, DELTA_MAX_PREFIX + 1]]}, 400),
        (lambda b: {**b, "deltas": [[0, 0, -1, 10]]}, 400),
        (lambda b: {**b, "deltas": [[5, 0, 0, 10]]}, 400),  # no such chunk
        (lambda b: {**b, "deltas": [[0, 1, 0, 10]]}, 400),  # no such base
        (lambda b: {**b, "deltas": [[0, 0, 0, True]]}, 400),
        # two ranges for one chunk (asked twice)
        (lambda b: {**b, "chunks": b["chunks"] * 2, "deltas": [[0, 0, 0, 10], [1, 0, 5, 10]]}, 400),
        (lambda b: {**b, "deltas": [[0, 0, 0, 10], [0, 0, 5, 10]]}, 413),  # more deltas than chunks
        # over 64 MiB of base ranges in one request
        (lambda b: {**b, "chunks": b["chunks"] * 65,
                    "deltas": [[i, 0, 0, DELTA_MAX_PREFIX] for i in range(65)]}, 413),
        (lambda b: {**b, "deltas": "all"}, 400),
        (lambda b: {**b, "bases": "x"}, 400),
        (lambda b: {k: v for k, v in b.items() if k != "bases"}, 400),
    ],
)
@in_memory
async def test_bad_base_ranges_are_4xx_json(env: Env, mangle: Any, status: int) -> None:  # noqa: F811
    token = await env.login("alice")
    base, _old, new_pieces = await _two_versions(env, token)
    body = {"chunks": [new_pieces[0][0].hash], "bases": [base], "deltas": [[0, 0, 0, 100]]}
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=token, body=body)
    assert r.status == 200
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=token, body=mangle(body))
    assert r.status == status, r.body
    assert r.json()["error"] in ("bad_request", "too_large")


@in_memory
async def test_another_engagements_base_is_refused_and_leaks_nothing(env: Env) -> None:  # noqa: F811
    token = await env.login("alice")
    base, _old, new_pieces = await _two_versions(env, token)
    # eve administers beta only: alpha's version is not a base she may name from beta, and
    # the answer is the same as for a content that exists nowhere
    eve = await env.login("eve")
    secret = chunks_of(b"beta's own file " * 5000)
    await env.call("POST", "/v1/engagements/beta/chunks", token=eve,
                   data=encode_records(chunkstream_record(d) for _, d in secret))
    refs = [c for c, _ in secret]
    r = await env.call("POST", "/v1/engagements/beta/commit", token=eve,
                       body={"batch": "e1", "changes": [put("f.txt", refs)]})
    assert r.status == 200, r.body
    asked = {"chunks": [refs[0].hash], "bases": [base], "deltas": [[0, 0, 0, 100]]}
    r = await env.call("POST", "/v1/engagements/beta/chunks/fetch", token=eve, body=asked)
    unknown = await env.call("POST", "/v1/engagements/beta/chunks/fetch", token=eve,
                             body={**asked, "bases": ["d" * 64]})
    assert r.status == unknown.status == 400
    assert r.json()["error"] == unknown.json()["error"] == "bad_request"
    assert r.json()["message"].replace(base, "X") == unknown.json()["message"].replace("d" * 64, "X")
    # and alpha's chunks cannot be fetched through beta by naming alpha's base
    r = await env.call("POST", "/v1/engagements/beta/chunks/fetch", token=eve,
                       body={"chunks": [new_pieces[0][0].hash], "bases": [base], "deltas": [[0, 0, 0, 100]]})
    assert r.status in (400, 404) and b"beta's own" not in r.body
    # alpha itself is invisible to eve, with or without bases
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=eve, body=asked)
    assert r.status == 404 and r.json()["error"] == "not_found"


def chunkstream_record(data: bytes) -> tuple[str, int, int, bytes]:
    codec, payload = chunkstream.compress_chunk(data)
    return chunk_hash(data), codec, len(data), payload


@in_memory
async def test_random_base_fields_are_answered_200_or_4xx_never_5xx(env: Env) -> None:  # noqa: F811
    token = await env.login("alice")
    base, old, new_pieces = await _two_versions(env, token)
    rng = random.Random(8)
    hashes = [c.hash for c, _ in new_pieces]

    def value() -> Any:
        return rng.choice([
            rng.randrange(-3, 5), rng.randrange(len(old) + 10), 2**64, -(2**63), 1.5, True, None,
            "x", base, [], {}, rng.randrange(DELTA_MAX_PREFIX + 2),
        ])

    statuses = set()
    for _ in range(80):
        deltas: Any = [
            [value() for _ in range(rng.choice([3, 4, 4, 4, 5]))] for _ in range(rng.randrange(4))
        ]
        bases: Any = rng.choice([[base], [base, "e" * 64], [], ["E" * 64], [1], "x", None])
        body = {"chunks": hashes[: rng.randrange(1, 4)], "bases": bases, "deltas": deltas}
        r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=token, body=body)
        statuses.add(r.status)
        assert r.status in (200, 400, 413), (body, r.body)
        if r.status == 200:
            records = chunkstream.decode_records(r.body)
            assert [rec[0] for rec in records] == body["chunks"]
        else:
            assert r.json()["error"] in ("bad_request", "too_large")
    assert {200, 400} <= statuses
