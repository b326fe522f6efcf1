"""A download's window answered with one read of its pack (issue 15, storage/spanread.py).

The pure parts (which runs of chunks lie back to back, the header check) and the route through
the real Site on a real SQLite store (webkit.py): chunks uploaded in one request and asked in
that order come back as the pack's bytes, byte for byte what ``encode_records`` makes; asked
in another order, spread over packs, or under a header that no longer matches the index, they
come back read chunk by chunk, and a damaged header is never sent."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from webkit import Env, in_memory, upload

from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import HEADER_BYTES, encode_records
from smartsyncd.storage.chunks import record_spans
from smartsyncd.storage.packs import PackStore, records_match

FETCH = "/v1/engagements/alpha/chunks/fetch"


def datas(n: int, seed: int = 0) -> list[bytes]:
    """Chunks of the two stored codecs: text (zstd) and noise (raw)."""
    return [(b"row %d,%d\n" % (seed, i)) * 300 if i % 2 else os.urandom(2000 + i) for i in range(n)]


def stored(data: bytes) -> chunkstream.Record:
    codec, payload = chunkstream.compress_chunk(data)
    return chunk_hash(data), codec, len(data), payload


# -- the pure parts --------------------------------------------------------------------------


def test_runs_back_to_back_in_order_are_one_span_per_pack(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path))
    records = [stored(d) for d in datas(8)]
    one, two = packs.write_pack(1, records[:5]), packs.write_pack(1, records[5:])
    where = {e.hash: (p.name, e.offset, e.stored_size, e.codec, e.raw_size)
             for p in (one, two) for e in p.entries}
    hashes = [r[0] for r in records]

    def spans(asked: list[str], max_bytes: int = 1 << 20, max_spans: int = 4,
              piece: int = 1 << 20) -> list[bytes] | None:
        found = record_spans(where, asked, HEADER_BYTES, max_bytes, max_spans, piece)
        if found is None:
            return None
        return [packs.read_records(1, *span) or b"?" for span in found]

    # each pack's run read whole: the wire's records, as ``encode_records`` makes them
    assert spans(hashes) == [encode_records(records[:5]), encode_records(records[5:])]
    assert spans(hashes[1:4]) == [encode_records(records[1:4])]
    first = record_spans(where, hashes, HEADER_BYTES, 1 << 20, 4, 1 << 20)
    assert first is not None and first[0][:2] == (one.name, one.entries[0].offset - HEADER_BYTES)
    # out of order, a gap, a duplicate: more runs, each one record
    for asked in ([hashes[1], hashes[0]], [hashes[0], hashes[2]], [hashes[0], hashes[0]]):
        assert spans(asked) == [encode_records([records[hashes.index(h)]]) for h in asked]
        assert record_spans(where, asked, HEADER_BYTES, 1 << 20, 1, 1 << 20) is None
    # over the byte cap or the run cap: None
    whole = len(encode_records(records))
    assert spans(hashes, max_bytes=whole - 1) is None and spans(hashes, max_bytes=whole) is not None
    assert spans(hashes, max_spans=1) is None and spans([]) is None
    # pieces cut at a size: each a whole number of records, a record larger than it alone
    sizes = [HEADER_BYTES + len(r[3]) for r in records]
    cut = sizes[0] + sizes[1]
    assert spans(hashes[:3], piece=cut) == [encode_records(records[:2]), encode_records(records[2:3])]
    assert spans(hashes[:2], piece=1) == [encode_records(records[:1]), encode_records(records[1:2])]


def test_a_header_that_differs_from_the_index_is_not_a_match() -> None:
    records = [stored(d) for d in datas(3)]
    data = encode_records(records)
    expected = [(bytes.fromhex(h), c, n, len(p)) for h, c, n, p in records]
    assert records_match(data, expected)
    for field in range(4):  # hash, codec, raw length, payload length
        wrong = [list(e) for e in expected]
        wrong[1][field] = b"\0" * 32 if field == 0 else wrong[1][field] + 1  # type: ignore[operator]
        assert not records_match(data, [tuple(w) for w in wrong])  # type: ignore[misc]
    assert not records_match(data + b"x", expected) and not records_match(data[:-1], expected)
    assert not records_match(data, expected[:2])


# -- the route -------------------------------------------------------------------------------


def _pack_file(root: Path) -> Path:
    found = [p for p in root.rglob("*.pack")]
    assert len(found) == 1, found
    return found[0]


@in_memory
async def test_a_window_in_upload_order_is_the_packs_bytes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await env.login("alice")
    chunks = datas(14)  # more than SPAN_MAX_PIECES: in reverse, read chunk by chunk
    # two uploads, two packs: the window is one read of each
    hashes = [c.hash for c in await upload(env, token, *chunks[:7]) + await upload(env, token, *chunks[7:])]
    plain = encode_records(stored(d) for d in chunks)
    read: list[str] = []
    original = PackStore.read_records

    def spy(self: PackStore, *args: object) -> bytes | None:  # the same answer, noted
        read.append(str(args[1]))
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PackStore, "read_records", spy)
    r = await env.call("POST", FETCH, token=token, body={"chunks": hashes})
    assert r.status == 200 and r.body == plain and len(read) == 2
    # another order: read chunk by chunk, the same records in the order asked
    turned = hashes[::-1]
    r = await env.call("POST", FETCH, token=token, body={"chunks": turned})
    assert r.status == 200 and r.body == encode_records(stored(d) for d in chunks[::-1])
    assert len(read) == 2
    # too few chunks for a span: as before
    r = await env.call("POST", FETCH, token=token, body={"chunks": hashes[:3]})
    assert r.status == 200 and r.body == encode_records(stored(d) for d in chunks[:3])


@in_memory
async def test_a_damaged_header_in_the_pack_is_never_sent(env: Env, tmp_path: Path) -> None:
    token = await env.login("alice")
    chunks = datas(10, seed=1)
    hashes = [c.hash for c in await upload(env, token, *chunks)]
    path = _pack_file(tmp_path)
    data = bytearray(path.read_bytes())
    first = data.index(bytes.fromhex(hashes[5]))
    codec_at = first + 32  # the fifth record's codec byte: 0/1 swapped
    data[codec_at] ^= 1
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))
    r = await env.call("POST", FETCH, token=token, body={"chunks": hashes})
    assert r.status == 200
    # read chunk by chunk: every header is the index's, as sent before this change
    assert r.body == encode_records(stored(d) for d in chunks)
    assert struct.unpack_from(">B", r.body, r.body.index(bytes.fromhex(hashes[5])) + 32)[0] == stored(
        chunks[5])[1]
