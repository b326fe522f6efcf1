"""A ``chunks/fetch`` answer as one zstd stream (issue 15: a clone's small files compressed
across files, core/fetchstream.py). The pure parts without a reactor; the route through the
real Site in memory (webkit.py); the real client against it (clientkit.py): a client that asks
``"stream": 1`` and accepts zstd gets one frame in which the small compressible chunks travel
raw, ahead of the rest; any other request gets the answer as before; a damaged or oversized
stream is a clear ProtocolError and a clone writes nothing."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import zstandard
from clientkit import ENG, MemoryServer, driven, files_of
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from webkit import Env, in_memory, put, upload

from smartsyncd.client.errors import ProtocolError
from smartsyncd.client.manifestanswer import snapshot_files
from smartsyncd.core import bodycodec, chunkstream, fetchstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_DELTA, CODEC_RAW, CODEC_ZSTD, Record, encode_records
from smartsyncd.core.errors import BadChunk
from smartsyncd.core.manifest import chunks_from_json, content_id

FETCH = "/v1/engagements/alpha/chunks/fetch"
WORDS = ["fees", "rent", "payroll", "accrual", "tested", "agreed", "variance", "ledger"]


def paper(seed: int, size: int = 3000) -> bytes:
    """A small text work paper (rows of a lead schedule): compresses alone, better together."""
    rng = random.Random(seed)
    rows = "".join(f"{rng.randrange(1000, 9999)},{rng.choice(WORDS)},{rng.choice(WORDS)},"
                   f"{rng.randrange(10**7) / 100:.2f}\n" for _ in range(size // 20 + 1))
    return rows.encode()[:size]


def stored(data: bytes) -> Record:
    """The record as the store keeps it (compressed by its sender)."""
    codec, payload = chunkstream.compress_chunk(data)
    return chunk_hash(data), codec, len(data), payload


def decoded(frame: bytes) -> list[Record]:
    return chunkstream.decode_records(bodycodec.decode(frame, "zstd", chunkstream.STREAM_BODY_CAP))


# -- the pure parts --------------------------------------------------------------------------


def test_small_compressed_chunks_go_raw_and_first_the_rest_as_stored() -> None:
    texts = [stored(paper(i)) for i in range(4)]
    noise = stored(os.urandom(3000))
    large = stored(paper(99, fetchstream.STREAM_CHUNK_MAX + 1))
    delta = (chunk_hash(b"d"), CODEC_DELTA, 1, b"\0" * 50)  # passed along, never opened
    assert {r[1] for r in texts + [large]} == {CODEC_ZSTD} and noise[1] == CODEC_RAW
    records = [noise, texts[0], large, texts[1], delta, texts[0], texts[2], texts[3]]
    ordered = fetchstream.stream_records(records)
    assert ordered is not None
    # the text papers raw, in the order asked (each once), then the others as stored
    assert ordered[:4] == [(h, CODEC_RAW, n, paper(i)) for i, (h, _, n, _) in enumerate(texts)]
    assert ordered[4:] == [noise, large, delta]


def test_nothing_to_decompress_or_a_damaged_frame_stays_as_stored() -> None:
    noise = [stored(os.urandom(3000)) for _ in range(3)]
    assert fetchstream.stream_records(noise) is None
    assert fetchstream.stream_answer(noise) is None
    good = stored(paper(1))
    damaged = (good[0], CODEC_ZSTD, good[2], good[3][:-4] + b"\xff\xff\xff\xff")
    lying = (good[0], CODEC_ZSTD, good[2] + 1, good[3])  # the frame states another size
    assert fetchstream.stream_records([damaged, lying]) is None
    ordered = fetchstream.stream_records([damaged, stored(paper(2))])
    assert ordered is not None and ordered[1] == damaged


def test_the_raw_budget_bounds_what_is_decompressed() -> None:
    texts = [stored(paper(i, 4000)) for i in range(10)]
    ordered = fetchstream.stream_records(texts, budget=10_000)
    assert ordered is not None
    assert [r[1] for r in ordered] == [CODEC_RAW] * 2 + [CODEC_ZSTD] * 8


def test_pieces_make_one_frame_of_the_ordered_records_stating_its_size() -> None:
    records = [stored(paper(i, 6000)) for i in range(40)] + [stored(os.urandom(5000))]
    ordered = fetchstream.stream_records(records)
    assert ordered is not None
    encoder = fetchstream.StreamEncoder(ordered, first=4096, piece=50_000)
    pieces = []
    while not encoder.done:
        pieces.append(encoder.next_piece())
    assert len(pieces) == 6  # 4 KiB first, then about 50 KB a piece, of whole records
    with pytest.raises(ValueError):
        encoder.next_piece()
    frame = b"".join(pieces)
    plain = encode_records(ordered)
    assert zstandard.frame_content_size(frame) == len(plain) == encoder.raw_bytes
    assert decoded(frame) == ordered
    # compressed across the papers: well under the stored frames
    assert len(frame) * 100 < fetchstream.plain_size(records) * 95


def test_indexed_records_round_trip_and_bad_positions_are_refused() -> None:
    datas = [paper(i) for i in range(5)]
    asked = [chunk_hash(d) for d in datas]
    records = [stored(d) for d in datas]
    index = fetchstream.positions([*asked, asked[0]])
    assert index == {h: i for i, h in enumerate(asked)}
    assert fetchstream.by_hash(fetchstream.encode_indexed(records, index), asked) == encode_records(records)
    bad = [
        fetchstream.encode_indexed(records, {**index, asked[2]: 5}),  # a position not asked
        fetchstream.encode_indexed(records, {**index, asked[2]: 1}),  # one position twice
        fetchstream.encode_indexed(records, index)[:-1],  # cut short
        fetchstream.encode_indexed(records, index) + b"\0" * 5,  # a header cut short
        fetchstream.encode_indexed([(asked[0], 7, 3000, b"x")], index),  # an unknown codec
    ]
    for body in bad:
        with pytest.raises(BadChunk):
            fetchstream.by_hash(body, asked)
    with pytest.raises(BadChunk, match="more than 2"):
        fetchstream.by_hash(fetchstream.encode_indexed(records, index), asked, max_records=2)


# -- the route ---------------------------------------------------------------------------------


async def _stored(env: Env, token: str, datas: list[bytes]) -> list[str]:
    return [c.hash for c in await upload(env, token, *datas)]


@in_memory
async def test_the_answer_is_one_stream_only_when_asked_and_accepted(env: Env) -> None:
    token = await env.login("alice")
    datas = [paper(i) for i in range(30)] + [os.urandom(2000)]
    hashes = await _stored(env, token, datas)
    plain = encode_records(stored(d) for d in datas)
    zstd = {"Accept-Encoding": "zstd"}
    r = await env.call("POST", FETCH, token=token, body={"chunks": hashes, "stream": 1}, headers=zstd)
    assert r.status == 200, r.body
    assert r.headers.getRawHeaders("content-encoding") == ["zstd"]
    assert r.headers.getRawHeaders("content-type") == ["application/x-smartsync-chunks-indexed"]
    assert len(r.body) * 100 < len(plain) * 90
    # records by position in the request: the hashes are the client's, not sent again
    body = fetchstream.by_hash(bodycodec.decode(r.body, "zstd", 1 << 20), hashes)
    assert [(h, c) for h, c, _, _ in chunkstream.decode_records(body)] == [
        (h, CODEC_RAW) for h in hashes]
    assert chunkstream.decode_to_raw(body) == dict(zip(hashes, datas, strict=True))
    # not accepted, not asked, or asked off: the answer as before, byte for byte
    for body, headers in [({"chunks": hashes, "stream": 1}, {}), ({"chunks": hashes}, zstd),
                          ({"chunks": hashes, "stream": 0}, zstd)]:
        r = await env.call("POST", FETCH, token=token, body=body, headers=headers)
        assert r.status == 200 and r.headers.getRawHeaders("content-encoding") in (None, [""])
        assert r.body == plain


@in_memory
async def test_a_small_answer_streams_only_when_that_is_smaller(env: Env) -> None:
    # one small paper its sender compressed hard: the stream would save the 28 bytes of its
    # hash, less than its own headers cost; sixteen (one piece): worth it
    token = await env.login("alice")
    data = paper(1)
    hard = (chunk_hash(data), CODEC_ZSTD, len(data), zstandard.ZstdCompressor(level=19).compress(data))
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token, data=encode_records([hard]))
    assert r.status == 200, r.body
    zstd = {"Accept-Encoding": "zstd"}
    r = await env.call("POST", FETCH, token=token, body={"chunks": [hard[0]], "stream": 1},
                       headers=zstd)
    assert r.status == 200 and r.headers.getRawHeaders("content-encoding") in (None, [""])
    assert r.body == encode_records([hard])
    some = await _stored(env, token, [paper(i) for i in range(16)])
    r = await env.call("POST", FETCH, token=token, body={"chunks": some, "stream": 1}, headers=zstd)
    assert r.status == 200 and r.headers.getRawHeaders("content-encoding") == ["zstd"]
    assert len(bodycodec.decode(r.body, "zstd", 1 << 20)) < fetchstream.FIRST_PIECE


@pytest.mark.parametrize("value", ["yes", -1, [1], 1.5])
@in_memory
async def test_a_bad_stream_field_is_a_json_400(env: Env, value: Any) -> None:
    token = await env.login("alice")
    hashes = await _stored(env, token, [paper(1)])
    r = await env.call("POST", FETCH, token=token, body={"chunks": hashes, "stream": value},
                       headers={"Accept-Encoding": "zstd"})
    assert r.status == 400 and r.json()["error"] == "bad_request", r.body


# -- the client ----------------------------------------------------------------------------------


@driven
async def test_the_client_gets_the_same_chunks_in_fewer_bytes(server: MemoryServer) -> None:
    api = await server.api("alice")
    batch = {chunk_hash(d): d for d in (paper(i) for i in range(60))}
    await api.upload_chunks(ENG, list(batch.items()))
    before = api.bytes_received
    assert await api.fetch_chunks(ENG, list(batch)) == batch
    plain = api.bytes_received - before
    before = api.bytes_received
    assert await api.fetch_chunks(ENG, list(batch), stream=True) == batch
    assert (api.bytes_received - before) * 100 < plain * 95


class _Mangled:
    """A response whose body is replaced by ``mangle(body)``."""

    def __init__(self, response: Any, mangle: Any) -> None:
        self._response, self._mangle = response, mangle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def content(self) -> Deferred[bytes]:
        d: Deferred[bytes] = self._response.content()
        return d.addCallback(self._mangle)

    def deliverBody(self, protocol: Any) -> None:
        """The mangled body to ``protocol`` (what ``treq.collect`` and the client's large-body
        reader use)."""

        def deliver(body: bytes) -> None:
            protocol.dataReceived(body)
            protocol.connectionLost(Failure(ResponseDone()))

        self.content().addCallback(deliver)


class _Damaging:
    """The client's HTTP, with the body of each chunk fetch answer (and of the first chunks
    a clone asks beside its snapshot) mangled on the way."""

    def __init__(self, http: Any, mangle: Any) -> None:
        self._http, self._mangle = http, mangle

    def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._http.request(method, url, **kw)
        if url.endswith(("/chunks/fetch", "/snapshot/chunks")):
            d.addCallback(_Mangled, self._mangle)
        return d


def _cut(body: bytes) -> bytes:
    return body[:-7]


def _flipped(body: bytes) -> bytes:
    return body[:40] + bytes([body[40] ^ 0xFF]) + body[41:]


def _bomb(body: bytes) -> bytes:
    """A frame header stating 512 MiB of content (over the client's 256 MiB cap)."""
    header = zstandard.frame_header_size(body)  # replaced by: single segment, 8-byte size
    return b"\x28\xb5\x2f\xfd\xe0" + (512 << 20).to_bytes(8, "little") + body[header:]


@pytest.mark.parametrize("mangle", [_cut, _flipped, _bomb])
@driven
async def test_a_damaged_or_oversized_stream_is_refused_and_a_clone_writes_nothing(
    server: MemoryServer, tmp_path: Path, mangle: Any
) -> None:
    source = await server.api("alice")
    papers = {f"WP {i:03}.csv": paper(i) for i in range(40)}
    origin = await server.clone(source, tmp_path / "a")
    for name, data in papers.items():
        (tmp_path / "a" / name).write_bytes(data)
    await origin.sync(source)
    origin.close()
    api = await server.api("bob")
    api._http = _Damaging(api._http, mangle)
    with pytest.raises(ProtocolError, match="does not decode"):
        await server.clone(api, tmp_path / "b")
    assert not (tmp_path / "b").exists() or files_of(tmp_path / "b") == {}


# -- a clone's snapshot without the content ids it can derive ------------------------------------


@in_memory
async def test_a_lean_snapshot_leaves_out_only_the_content_ids_of_files_with_lists(env: Env) -> None:
    token = await env.login("alice")
    refs = await upload(env, token, paper(1), paper(2), paper(3, 20_000))
    files = [put("a.csv", refs[:1]), put("b.csv", refs[1:2]), put("c.csv", refs[1:])]
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token,
                       body={"batch": "b1", "changes": files})
    assert r.status == 200, r.body
    snap = "/v1/engagements/alpha/snapshot?chunks=1"
    full = (await env.call("GET", snap, token=token)).json()["files"]
    lean = (await env.call("GET", snap + "&lean=1", token=token)).json()["files"]
    assert [f["content"] for f in full] == [f["content"] for f in files]
    assert all("chunks" in f for f in full)
    # the same entries, less the content ids: each is its chunk list's
    assert lean == [{k: v for k, v in f.items() if k != "content"} for f in full]
    for entry, f in zip(lean, files, strict=True):
        assert content_id(chunks_from_json(entry["chunks"])) == f["content"]


@in_memory
async def test_a_snapshot_flag_of_another_value_is_a_400_naming_it(env: Env) -> None:
    token = await env.login("alice")
    for query, field in (("chunks=yes", "chunks"), ("chunks=2", "chunks"),
                         ("chunks=1&lean=true", "lean")):
        r = await env.call("GET", f"/v1/engagements/alpha/snapshot?{query}", token=token)
        assert r.status == 400, (query, r.body)
        assert r.json()["error"] == "bad_request" and r.json()["field"] == field
    assert (await env.call("GET", "/v1/engagements/alpha/snapshot?chunks=0&lean=0",
                           token=token)).status == 200


@driven
async def test_a_client_derives_the_content_ids_and_checks_the_rest(
    server: MemoryServer, tmp_path: Path
) -> None:
    source = await server.api("alice")
    origin = await server.clone(source, tmp_path / "a")
    papers = {f"WP {i:03}.csv": paper(i) for i in range(12)}
    for name, data in papers.items():
        (tmp_path / "a" / name).write_bytes(data)
    await origin.sync(source)
    origin.close()
    api = await server.api("bob")
    snapshot = await api.snapshot(ENG, chunks=True)
    assert {f.content for f in snapshot.files} == set(api.snapshot_manifests)
    assert {f.path for f in snapshot.files} == set(papers)
    for f in snapshot.files:
        assert api.snapshot_manifests[f.content].size == f.size == len(papers[f.path])
    copy = await server.clone(api, tmp_path / "b")
    copy.close()
    assert files_of(tmp_path / "b") == papers
    # a lean entry whose size does not match its list is refused, not written
    items: list[object] = [{"path": "x", "seq": 1, "size": 5, "mtime": 0,
                            "chunks": [[chunk_hash(b"abcd"), 4]]}]
    with pytest.raises(ProtocolError, match="does not match"):
        snapshot_files(items, True)
    with pytest.raises(ProtocolError):
        snapshot_files([{"path": "x", "seq": 1, "size": 4, "mtime": 0}], True)
