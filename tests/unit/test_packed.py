"""Large manifests without per-chunk objects (issue 15): ``core/packed.py``, the streamed
commit body (client/wire.py), the daemon's parse of it, the push's windows of wanted chunks
(client/wanted.py) and the store's windowed chunk check."""

from __future__ import annotations

import json
import random

import blake3
import pytest
import zstandard
from test_storage import (  # noqa: F401 - fixtures and helpers of the store suite
    backend,
    chunk,
    commit,
    content_of,
    full,
    on_sync_store,
    pg_cluster,
    put,
    state,
    sync_store,
)

from smartsyncd.client.wanted import Wanted
from smartsyncd.client.wire import CommitChange, commit_pieces, encode_commit, manifests_json
from smartsyncd.core import bodycodec, manifest
from smartsyncd.core.errors import BadRequest, MissingChunks
from smartsyncd.core.manifestlift import lift_manifests
from smartsyncd.core.model import ChunkRef
from smartsyncd.core.packed import JSON_PIECE_ENTRIES, PackedBuilder, PackedChunks, manifest_json
from smartsyncd.storage import commit as commit_module
from smartsyncd.web.errors import json_bytes
from smartsyncd.web.limits import Limits
from smartsyncd.web.manifestbatch import Wanted as ManifestWanted
from smartsyncd.web.manifestbatch import answer_bytes, manifests_answer
from smartsyncd.web.parse import parse_commit


def refs(n: int, seed: int = 1) -> tuple[ChunkRef, ...]:
    rng = random.Random(seed)
    return tuple(
        ChunkRef(blake3.blake3(rng.randbytes(8)).hexdigest(), rng.randint(1, 262144)) for _ in range(n)
    )


def test_packed_round_trips_and_compares_as_the_tuple() -> None:
    chunks = refs(1000)
    packed = PackedChunks.of(iter(chunks))  # built from an iterator: never a list first
    assert len(packed) == 1000
    assert list(packed) == list(chunks)
    assert packed == chunks and chunks == packed and packed == list(chunks)
    assert packed != chunks[:-1] and packed != chunks[:-1] + (chunks[0],)
    assert packed[0] == chunks[0] and packed[-1] == chunks[-1] and packed[500] == chunks[500]
    assert packed[10:20] == chunks[10:20] and isinstance(packed[10:20], PackedChunks)
    assert packed[::7] == chunks[::7]
    assert packed.binary == manifest.encode_binary(chunks)
    assert manifest.content_id(packed) == manifest.content_id(chunks)
    assert hash(packed) == hash(PackedChunks(packed.binary))
    assert packed.total_size() == sum(c.size for c in chunks)
    assert [(d.hex(), n) for d, n in packed.digests()] == [(c.hash, c.size) for c in chunks]
    with pytest.raises(IndexError):
        packed[1000]
    with pytest.raises(ValueError):
        PackedChunks(b"x" * 41)


def test_large_lists_are_packed_and_small_ones_stay_tuples() -> None:
    big, small = refs(manifest.PACK_MIN_ENTRIES + 1), refs(3)
    assert isinstance(manifest.make_manifest(big).chunks, PackedChunks)
    assert isinstance(manifest.make_manifest(small).chunks, tuple)
    assert manifest.make_manifest(big).content == manifest.content_id(big)
    assert isinstance(manifest.decode_binary(manifest.encode_binary(big)), PackedChunks)
    assert manifest.decode_binary(manifest.encode_binary(big)) == big
    parsed = manifest.chunks_from_json(manifest.chunks_to_json(big))
    assert isinstance(parsed, PackedChunks) and parsed == big
    ops = manifest.make_delta(big, big[:100] + small + big[100:])
    assert manifest.apply_delta(PackedChunks.of(big), ops) == big[:100] + small + big[100:]


def test_a_bad_entry_deep_in_a_large_json_manifest_is_named() -> None:
    wire = manifest.chunks_to_json(refs(manifest.PACK_MIN_ENTRIES + 50))
    wire[300] = [wire[300][0].upper(), wire[300][1]]
    with pytest.raises(BadRequest, match=r"manifest\[300\]: hash"):
        manifest.chunks_from_json(wire)
    wire[300] = [wire[301][0], 0]
    with pytest.raises(BadRequest, match=r"manifest\[300\]: size"):
        manifest.chunks_from_json(wire)
    with pytest.raises(BadRequest, match="more than 10"):
        manifest.chunks_from_json(wire, max_entries=10)


def test_manifest_json_is_the_wire_form_in_bounded_pieces() -> None:
    chunks = refs(3 * JSON_PIECE_ENTRIES + 5)
    pieces = list(manifest_json(chunks))
    expected = json.dumps(manifest.chunks_to_json(chunks), separators=(",", ":")).encode()
    assert b"".join(pieces) == expected
    # never one string: no piece holds more than one piece's worth of entries
    assert len(pieces) >= 4
    assert max(len(p) for p in pieces) <= JSON_PIECE_ENTRIES * 80
    assert b"".join(manifest_json(())) == b"[]"


def changes_with(big: tuple[ChunkRef, ...]) -> list[CommitChange]:
    return [
        CommitChange.delete("old.txt", 3),
        CommitChange("big.bin", "put", None, manifest=PackedChunks.of(big), mtime_ns=5, readonly=False),
        CommitChange("small.txt", "put", 7, manifest=refs(2, seed=9)),
        CommitChange("renamed.txt", "put", None, content="ab" * 32, size=10),
    ]


def test_the_commit_body_is_written_as_json_dumps_would() -> None:
    changes = changes_with(refs(2 * JSON_PIECE_ENTRIES))
    history = {"seq": 4, "hash": "cd" * 32}
    body = {"batch": "b-1", "changes": [c.to_json() for c in changes], "history": history}
    expected = json.dumps(body, separators=(",", ":")).encode()
    assert b"".join(commit_pieces("b-1", changes, history)) == expected
    data, encoding = encode_commit("b-1", changes, history, compress=True)
    assert encoding == b"zstd" and len(data) < len(expected)
    assert zstandard.frame_content_size(data) == len(expected)
    assert bodycodec.decode(data, "zstd", len(expected)) == expected
    # the daemon's cap holds for a body compressed as it was written (its size in the header)
    with pytest.raises(Exception, match="over the limit"):
        bodycodec.decode(data, "zstd", len(expected) - 1)
    plain, none = encode_commit("b-1", changes[:1], None, compress=False)
    assert none is None and json.loads(plain) == {"batch": "b-1", "changes": [changes[0].to_json()]}


def test_the_daemon_parses_a_large_manifest_packed() -> None:
    big = refs(manifest.PACK_MIN_ENTRIES * 4)
    data, _ = encode_commit("b-1", changes_with(big), None, compress=False)
    parsed = parse_commit(data, Limits())
    sent = parsed.manifests["big.bin"]
    assert isinstance(sent.chunks, PackedChunks) and sent.chunks == big
    assert sent.content == manifest.content_id(big)
    put_change = next(c for c in parsed.changes if c.path == "big.bin")
    assert put_change.size == sum(c.size for c in big) and put_change.mtime_ns == 5
    # one malformed entry: the full checks name the field (a JSON 400 at the route)
    wire = json.loads(data)
    wire["changes"][1]["manifest"][700][1] = 0
    with pytest.raises(BadRequest) as info:
        parse_commit(json.dumps(wire).encode(), Limits())
    assert info.value.details["field"] == "changes[1].manifest"


def test_wanted_walks_files_in_bounded_windows() -> None:
    a, b = refs(25, seed=1), refs(10, seed=2)
    present = {a[0].hash}
    wanted = Wanted(present)
    wanted.add("a.bin", PackedChunks.of(a + a[:3]))  # a repeat of the first chunks at the end
    wanted.add("b.bin", b + a[5:7], had=a[5:7] + b[:2])  # a delta: the previous version's are not sent
    windows = list(wanted.windows(10))
    assert all(len(w) <= 10 for w in windows)
    sent = [h for w in windows for h in w]
    assert a[0].hash not in sent
    assert set(sent) == {c.hash for c in a[1:] + b[2:]}
    offset = sum(c.size for c in a[:4])
    assert windows[0][a[4].hash] == ("a.bin", offset, a[4].size)
    assert wanted.total_bytes() == sum(c.size for c in a[1:] + a[1:3] + b[2:])
    present.clear()  # a refusal asks again: the same set, now empty
    assert a[0].hash in next(wanted.windows(10))


@on_sync_store
async def test_a_large_manifest_is_checked_window_by_window(store, monkeypatch) -> None:
    monkeypatch.setattr(commit_module, "CHECK_WINDOW_ENTRIES", 3)
    e = await store.create_engagement("acme", "")
    pieces = [chunk(bytes([i]) * 100) for i in range(8)]
    await store.store_chunks(e.id, pieces[:6])
    content, size, chunk_refs = content_of(*pieces)
    with pytest.raises(MissingChunks) as info:  # missing ones of every window are named
        await commit(store, e.id, "b1", [put("f", None, content, size)], {"f": full(content, chunk_refs)})
    assert sorted(info.value.details["chunks"]) == sorted([pieces[6].hash, pieces[7].hash])
    await store.store_chunks(e.id, pieces[6:])
    # a chunk given two sizes, in different windows: its stored size tells the lie
    liar = chunk_refs[:6] + (ChunkRef(chunk_refs[0].hash, 99),) + chunk_refs[7:]
    lie_id = manifest.content_id(liar)
    with pytest.raises(BadRequest, match="99 bytes"):
        await commit(store, e.id, "b2", [put("f", None, lie_id, sum(c.size for c in liar))],
                     {"f": full(lie_id, liar)})
    assert await state(store, e.id) == (0, {}, 0)
    r = await commit(store, e.id, "b3", [put("f", None, content, size)], {"f": full(content, chunk_refs)})
    assert r.head == 1


def test_builder_appends_digests_and_refs_alike() -> None:
    chunks = refs(5)
    builder = PackedBuilder()
    for c in chunks[:2]:
        builder.append(c)
    for c in chunks[2:]:
        builder.append_digest(bytes.fromhex(c.hash), c.size)
    assert len(builder) == 5 and builder.done() == chunks
    # a scan appends to it and reads it back as a sequence (client/scanner.py)
    assert builder[-1] == chunks[-1] and builder[1:3] == chunks[1:3] and list(builder) == list(chunks)
    assert isinstance(manifest.make_manifest(builder).chunks, tuple)  # small: a tuple
    for c in refs(manifest.PACK_MIN_ENTRIES):
        builder.append(c)
    made = manifest.make_manifest(builder)
    assert isinstance(made.chunks, PackedChunks) and made.content == manifest.content_id(list(builder))


def test_large_manifests_are_lifted_from_the_body_bytes() -> None:
    big, small = refs(manifest.PACK_MIN_ENTRIES * 2), refs(3, seed=5)
    body = {"batch": 'odd "manifest":[ key', "changes": [
        {"path": "big", "kind": "put", "base": None,
         "manifest": manifest.chunks_to_json(big)},
        {"path": "small", "kind": "put", "base": None, "manifest": manifest.chunks_to_json(small)},
    ]}
    for separators in ((",", ":"), (", ", ": ")):  # a compact body and json.dumps' default
        data = json.dumps(body, separators=separators).encode()
        rest, lifted = lift_manifests(data, "m:", manifest.PACK_MIN_ENTRIES, 10**6)
        assert lifted == [big] and len(rest) < 1000
        back = json.loads(rest)
        assert back["changes"][0]["manifest"] == "m:0"
        assert back["batch"] == 'odd "manifest":[ key'  # a string is never cut
        assert back["changes"][1]["manifest"] == manifest.chunks_to_json(small)
        parsed = parse_commit(data, Limits())
        assert parsed.manifests["big"].chunks == big and parsed.batch == body["batch"]
        assert parsed.manifests["small"].chunks == small
    # over the entry limit: left for the strict parser, which refuses it
    data = json.dumps(body).encode()
    assert lift_manifests(data, "m:", 10, len(big) - 1) == (data, [])


@pytest.mark.parametrize("bad", [
    lambda e: [e[0].upper(), e[1]], lambda e: [e[0], 0], lambda e: [e[0], 262145],
    lambda e: [e[0], e[1], 1], lambda e: [e[0], 1.5], lambda e: {"h": e[0]},
])
def test_a_malformed_large_manifest_is_not_lifted_and_is_refused(bad) -> None:
    wire = manifest.chunks_to_json(refs(manifest.PACK_MIN_ENTRIES * 2))
    wire[400] = bad(wire[400])
    data = json.dumps({"batch": "b", "changes": [
        {"path": "f", "kind": "put", "base": None, "manifest": wire}]}).encode()
    assert lift_manifests(data, "m:", 1, 10**6) == (data, [])
    with pytest.raises(BadRequest) as info:
        parse_commit(data, Limits())
    assert info.value.details["field"] == "changes[0].manifest"


def test_a_forged_placeholder_is_only_a_string() -> None:
    data = json.dumps({"batch": "b", "changes": [
        {"path": "f", "kind": "put", "base": None, "manifest": "m:0"}]}).encode()
    with pytest.raises(BadRequest, match="list"):
        parse_commit(data, Limits())


def test_the_client_packs_large_chunk_lists_of_a_manifests_answer() -> None:
    big, small = refs(manifest.PACK_MIN_ENTRIES * 3), refs(2, seed=4)
    answer = {"manifests": [
        {"content": manifest.content_id(big), "size": 1, "chunks": manifest.chunks_to_json(big)},
        {"content": manifest.content_id(small), "size": 1, "chunks": manifest.chunks_to_json(small)},
    ], "missing": [], "deferred": []}
    data = manifests_json(json.dumps(answer).encode())
    assert isinstance(data, dict)
    first, second = data["manifests"]
    assert isinstance(first["chunks"], PackedChunks) and first["chunks"] == big
    assert second["chunks"] == manifest.chunks_to_json(small)
    assert manifest.chunks_from_json(first["chunks"]) is first["chunks"]
    with pytest.raises(BadRequest, match="more than 10"):
        manifest.chunks_from_json(first["chunks"], max_entries=10)


def test_the_daemon_writes_a_manifests_answer_from_packed_lists() -> None:
    big, small = refs(manifest.PACK_MIN_ENTRIES * 3), refs(2, seed=4)
    found = {m.content: m for m in (manifest.make_manifest(big), manifest.make_manifest(small))}
    wanted = [ManifestWanted(c, None) for c in found] + [ManifestWanted("ef" * 32, None)]
    answer = manifests_answer(wanted, found, 10**8)
    assert isinstance(answer.body["manifests"][0]["chunks"], PackedChunks)  # type: ignore[index]
    as_lists = {"manifests": [
        {"content": m.content, "size": m.size, "chunks": manifest.chunks_to_json(m.chunks)}
        for m in found.values()
    ], "missing": ["ef" * 32], "deferred": []}
    expected = json_bytes(as_lists)
    assert answer_bytes(answer.body, compress=False) == (expected, False)
    data, compressed = answer_bytes(answer.body, compress=True)
    assert compressed and bodycodec.decode(data, "zstd", len(expected)) == expected
    # the size cap counts the packed list's JSON: just under it, the second one is deferred
    capped = manifests_answer(wanted, found, len(json_bytes(as_lists["manifests"][0])) + 2)
    assert capped.body["deferred"] == [manifest.content_id(small)]
