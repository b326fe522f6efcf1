"""A chunk upload as one zstd stream (issue 15: a first upload of many small files compressed
across files): the real client and the real server Site in memory (tests/unit/clientkit.py and
webkit.py). A server that says so in its /missing answer gets small uploads as raw records in
one ``Content-Encoding: zstd`` body, stores each chunk compressed as a sender would have, and
gives back the same bytes; a bomb, a body over the caps, a damaged frame, data after it, a bad
record or another encoding is a JSON 4xx that stores nothing; a client that was not told sends
a frame per chunk, as before."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import zstandard
from clientkit import MemoryServer, driven
from webkit import Env, in_memory

from smartsyncd.client.bodyproducer import BodyBuffers
from smartsyncd.client.chunkpacking import (
    STREAM_RAW_LIMIT,
    encode_body,
    encode_request,
    encode_upload,
)
from smartsyncd.client.http import ServerAPI
from smartsyncd.core import bodycodec, chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_RAW, CODEC_ZSTD, STREAM_BODY_CAP, encode_records

CHUNKS = "/v1/engagements/alpha/chunks"
WORDS = [b"debit", b"credit", b"ledger", b"balance", b"accrual", b"invoice", b"audit", b"tax"]


def _text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += rng.choice(WORDS) + b" %d\n" % rng.randrange(10**6)
    return bytes(out[:size])


PREAMBLE = _text(random.Random(-1), 1500)  # what files of one tree share (a licence, imports)


def source_file(seed: int, size: int = 3000) -> bytes:
    """A small text file: its tree's preamble, then lines of its own."""
    return (PREAMBLE + _text(random.Random(seed), size))[:size]


def items(count: int, size: int = 3000) -> list[tuple[str, bytes]]:
    return [(chunk_hash(d), d) for d in (source_file(i, size) for i in range(count))]


class EncodingAPI(ServerAPI):
    """The real ServerAPI; remembers each chunk upload's ``Content-Encoding``."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.upload_encodings: list[bytes | None] = []

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        if path.endswith("/chunks"):
            self.upload_encodings.append(kw.get("encoding"))
        return await super()._request(method, path, **kw)


# -- the client's body --------------------------------------------------------------------


def test_small_compressible_batch_goes_as_one_smaller_stream() -> None:
    batch = items(60)
    plain = encode_upload(list(batch))
    pieces, encoding = encode_body(list(batch), stream=True)
    body = b"".join(pieces)
    assert encoding == b"zstd" and len(pieces) == 1
    assert len(body) * 100 < len(plain) * 90  # across files: well under a frame per chunk
    records = chunkstream.decode_records(bodycodec.decode(body, "zstd", STREAM_BODY_CAP))
    assert [(h, codec, payload) for h, codec, _, payload in records] == [
        (h, CODEC_RAW, d) for h, d in batch
    ]
    pieces, encoding = encode_body(list(batch), stream=False)
    assert (b"".join(pieces), encoding) == (plain, None)


def test_a_mixed_batch_streams_its_compressible_records_first() -> None:
    # text papers among incompressible ones (a .docx, a .pdf): in scan order the stream
    # would cost as much as a frame per chunk; the text ones go first and together
    rng = random.Random(7)
    text = items(40)
    noise = [(chunk_hash(d), d) for d in (rng.randbytes(3000) for _ in range(20))]
    batch = [item for pair in zip(text[:20], noise, strict=True) for item in pair] + text[20:]
    plain = encode_upload(list(batch))
    pieces, encoding = encode_body(list(batch), stream=True)
    body = b"".join(pieces)
    assert encoding == b"zstd" and len(body) < len(plain)
    records = chunkstream.decode_records(bodycodec.decode(body, "zstd", STREAM_BODY_CAP))
    assert [(h, codec, payload) for h, codec, _, payload in records] == [
        (h, CODEC_RAW, d) for h, d in text] + [(h, CODEC_RAW, d) for h, d in noise]


def test_incompressible_or_large_batches_keep_a_frame_per_chunk() -> None:
    noise = [(chunk_hash(d), d) for d in (os.urandom(3000) for _ in range(20))]
    pieces, encoding = encode_body(list(noise), stream=True)
    assert (b"".join(pieces), encoding) == (encode_upload(list(noise)), None)
    # a header and a payload per record, the payload the chunk's own bytes (no copy)
    assert len(pieces) == 2 * len(noise) and all(p is d for p, (_, d) in zip(pieces[1::2], noise, strict=True))
    big = items(STREAM_RAW_LIMIT // 30000 + 1, 30000)  # over the stream's raw limit
    pieces, encoding = encode_body(list(big), stream=True)
    assert encoding is None
    assert [r[1] for r in chunkstream.decode_records(b"".join(pieces))] == [CODEC_ZSTD] * len(big)


# -- round trip through the real server --------------------------------------------------------


@driven
async def test_stream_upload_is_stored_compressed_and_reads_back(server: MemoryServer) -> None:
    api: EncodingAPI = await server.api("alice", EncodingAPI)
    batch = items(60)
    hashes = [h for h, _ in batch]
    assert await api.missing_chunks("alpha", hashes) == hashes  # its answer says "zstd"
    assert api.stream_chunks
    sent = await api.upload_chunks("alpha", list(batch))
    assert api.upload_encodings == [b"zstd"]
    assert sent < len(encode_upload(list(batch)))
    assert await api.missing_chunks("alpha", hashes) == []
    before = api.bytes_received
    got = await api.fetch_chunks("alpha", hashes)
    assert got == dict(batch)
    # the store compressed the raw records: the download is a fraction of the raw bytes
    assert api.bytes_received - before < sum(len(d) for _, d in batch) // 2


@driven
async def test_a_client_not_told_sends_a_frame_per_chunk(server: MemoryServer) -> None:
    # as against an older server, whose /missing answer has no "zstd" (or none was asked)
    api: EncodingAPI = await server.api("alice", EncodingAPI)
    batch = items(20)
    await api.upload_chunks("alpha", list(batch))
    assert api.upload_encodings == [None] and not api.stream_chunks
    assert await api.fetch_chunks("alpha", [h for h, _ in batch]) == dict(batch)


@in_memory
async def test_an_older_client_body_is_still_taken(env: Env) -> None:
    token = await env.login("alice")
    batch = items(5)
    r = await env.call("POST", CHUNKS, token=token, data=encode_upload(list(batch)))
    assert r.status == 200 and r.json()["stored"] == 5


# -- refusals --------------------------------------------------------------------------------


def _raw_body(batch: list[tuple[str, bytes]]) -> bytes:
    return encode_records((h, CODEC_RAW, len(d), d) for h, d in batch)


def _no_size(data: bytes) -> bytes:
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return cobj.compress(data) + cobj.flush()


BATCH = items(8)
GOOD = bodycodec.compress(_raw_body(BATCH))
WRONG = [(BATCH[0][0], BATCH[1][1]), *BATCH[1:]]  # a record that does not hash to its name
# over the decoded cap: records of zeros (not valid chunks either) in a small frame
ZEROS = b"\0" * (STREAM_BODY_CAP + 1)


@pytest.mark.parametrize(
    "data, encoding, status, code",
    [
        (bodycodec.compress(ZEROS), "zstd", 413, "too_large"),  # a bomb that states its size
        (_no_size(ZEROS), "zstd", 413, "too_large"),  # ... and one that does not
        (os.urandom(STREAM_BODY_CAP + 1), "zstd", 413, "too_large"),  # over the cap as sent
        (GOOD[:-5], "zstd", 400, "bad_request"),  # damaged: cut short
        (GOOD[:20] + bytes([GOOD[20] ^ 0xFF]) + GOOD[21:], "zstd", 400, None),  # damaged inside
        (GOOD + b"more", "zstd", 400, "bad_request"),  # data after the frame
        (GOOD + GOOD, "zstd", 400, "bad_request"),  # a second frame
        (bodycodec.compress(_raw_body(WRONG)), "zstd", 400, "bad_chunk"),
        (bodycodec.compress(_raw_body(BATCH)[:-1]), "zstd", 400, "bad_chunk"),  # truncated record
        (GOOD, "gzip", 400, "bad_request"),  # an encoding the server does not take
    ],
)
@in_memory
async def test_bad_stream_bodies_are_refused_and_store_nothing(
    env: Env, data: bytes, encoding: str, status: int, code: str | None
) -> None:
    token = await env.login("alice")
    r = await env.call("POST", CHUNKS, token=token, data=data,
                       headers={"Content-Encoding": encoding})
    assert r.status == status, r.body
    assert r.headers.getRawHeaders("content-type") == ["application/json"]
    if code is not None:
        assert r.json()["error"] == code
    hashes = [h for h, _ in BATCH]
    r = await env.call("POST", CHUNKS + "/missing", token=token, body={"chunks": hashes})
    assert r.status == 200 and r.json()["missing"] == hashes
    # the same chunks sent right are then stored
    r = await env.call("POST", CHUNKS, token=token, data=GOOD, headers={"Content-Encoding": "zstd"})
    assert r.status == 200 and r.json()["stored"] == len(BATCH), r.body


# -- a new copy's first upload -------------------------------------------------------------------


@driven
async def test_a_new_copys_first_upload_streams_without_asking(
    server: MemoryServer, tmp_path: Any
) -> None:
    # the clone and the first sync are two runs of the command: two API objects. The first
    # upload asks no /missing question (client/scan.py first_upload), so only what the
    # registration's answer said, kept in the copy's state, tells it the server takes a stream.
    cloning: EncodingAPI = await server.api("alice", EncodingAPI)
    copy = await server.clone(cloning, tmp_path / "a")
    assert copy.state.takes_zstd_uploads()
    copy.close()
    for i in range(60):
        (tmp_path / "a" / f"paper-{i:02}.txt").write_bytes(source_file(i))
    syncing: EncodingAPI = await server.api("alice", EncodingAPI)
    asked: list[str] = []
    missing = syncing.missing_chunks

    async def noting_missing(eng: str, hashes: Any) -> list[str]:
        asked.append(eng)
        return await missing(eng, hashes)

    syncing.missing_chunks = noting_missing  # type: ignore[method-assign]
    copy = server.open(tmp_path / "a")
    report = await copy.sync(syncing)
    assert report.uploaded == 60 and asked == []
    assert b"zstd" in syncing.upload_encodings
    copy.close()
    # the server has every file as written
    other = await server.clone(await server.api("bob"), tmp_path / "b")
    other.close()
    for i in range(60):
        assert (tmp_path / "b" / f"paper-{i:02}.txt").read_bytes() == source_file(i)


def test_a_large_body_is_joined_into_a_reused_buffer() -> None:
    """Over 1 MiB, the request body is one view of a buffer from ``BodyBuffers``, the same
    bytes as the records joined; the buffer is reused by the next request while another is
    out, and none is kept once nothing is out. A small body goes as its pieces."""
    buffers = BodyBuffers(keep=2)
    big = [(chunk_hash(d), d) for d in (os.urandom(100_000) for _ in range(15))]
    body, encoding, buffer = encode_request(list(big), False, buffers)
    assert encoding is None and buffer is not None
    assert b"".join(body) == encode_upload(list(big))
    other = encode_request(list(big[:12]), False, buffers)[2]  # a second request out
    assert other is not None and other is not buffer
    buffers.give(buffer)
    assert buffers.kept == 1
    again = encode_request(list(big[3:]), False, buffers)
    assert again[2] is buffer and b"".join(again[0]) == encode_upload(list(big[3:]))
    buffers.give(other)
    buffers.give(buffer)
    assert buffers.kept == 0  # nothing out: nothing kept
    small = items(5)
    pieces, _, none = encode_request(list(small), False, buffers)
    assert none is None and b"".join(pieces) == encode_upload(list(small))
