"""Record parsing of a streamed chunk upload (web/upload.py ``ChunkUploadStream.feed``).

Records are cut straight out of each arriving piece; a record split across pieces is gathered.
Whatever the piece boundaries (1 byte, inside a header, exactly at a record's end), the
batches hold exactly the records ``decode_records`` finds in the whole body, in order; a
header that breaks the format or the count cap refuses the body at once; a body that ends
inside a record is refused at ``finish``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.errors import BadChunk
from smartsyncd.web.limits import Limits
from smartsyncd.web.upload import ChunkUploadStream


def _records() -> list[chunkstream.Record]:
    out: list[chunkstream.Record] = []
    for size in (1, 40, 41, 5000, 70_000, 3):
        raw = os.urandom(size)
        out.append((chunk_hash(raw), chunkstream.CODEC_RAW, size, raw))
    text = b"abc" * 9000
    codec, payload = chunkstream.compress_chunk(text)
    out.append((chunk_hash(text), codec, len(text), payload))
    return out


RECORDS = _records()
BODY = chunkstream.encode_records(RECORDS)


def _stream(max_records: int = 4096) -> ChunkUploadStream:
    services: Any = SimpleNamespace(limits=Limits(chunks_per_request=max_records))
    return ChunkUploadStream(services, request=None, engagement="e", wants_continue=False)  # type: ignore[arg-type]


def _parsed(stream: ChunkUploadStream) -> list[chunkstream.Record]:
    stream._flush()
    out: list[chunkstream.Record] = []
    for batch in stream._queue.pending:
        assert batch is not None
        out.extend(batch)
    return out


def _feed(stream: ChunkUploadStream, body: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted(set(cuts)) + [len(body)]:
        if cut > start:
            stream.feed(body[start:cut])
            start = cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=40))
def test_any_piece_boundaries_give_the_same_records(cuts: list[int]) -> None:
    stream = _stream()
    _feed(stream, BODY, cuts)
    assert stream._error is None
    assert _parsed(stream) == chunkstream.decode_records(BODY)
    assert stream.records == len(RECORDS)
    assert not stream._buf and stream._head is None


def test_one_byte_at_a_time_and_boundaries_at_every_header() -> None:
    stream = _stream()
    _feed(stream, BODY, list(range(len(BODY))))
    assert _parsed(stream) == RECORDS
    ends, pos = [], 0
    for record in RECORDS:
        ends += [pos + 1, pos + chunkstream.HEADER_BYTES]  # inside and right after a header
        pos += chunkstream.HEADER_BYTES + len(record[3])
        ends.append(pos)
    stream = _stream()
    _feed(stream, BODY, ends)
    assert _parsed(stream) == RECORDS


@pytest.mark.parametrize("cut", [5, chunkstream.HEADER_BYTES, chunkstream.HEADER_BYTES + 11, len(BODY) - 1])
def test_a_body_ending_inside_a_record_is_left_unfinished(cut: int) -> None:
    stream = _stream()
    stream.feed(BODY[:cut])
    assert stream._buf or stream._head is not None  # finish() refuses it as truncated


def test_a_bad_header_in_a_later_piece_refuses_the_body() -> None:
    bad = bytearray(BODY)
    second = chunkstream.HEADER_BYTES + len(RECORDS[0][3])
    bad[second + 32] = 9  # unknown codec in the second record's header
    stream = _stream()
    _feed(stream, bytes(bad), [second + 10])
    assert isinstance(stream._error, BadChunk)
    assert not stream._buf and stream._head is None
    stream.feed(b"more bytes are read and dropped")
    assert isinstance(stream._error, BadChunk)


def test_the_count_cap_applies_to_split_records_too() -> None:
    stream = _stream(max_records=3)
    _feed(stream, BODY, [len(BODY) // 3, len(BODY) // 2])
    assert isinstance(stream._error, BadChunk)
    assert "more than 3 chunks" in str(stream._error)
