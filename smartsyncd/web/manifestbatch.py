"""Many manifests in one answer (``POST /v1/engagements/<eng>/manifests``, docs/protocol.md
"Pull"): the request parsed, and the answer built from the manifests the store found.

Pure functions: ``parse_manifest_request`` is cheap enough for the reactor; ``manifests_answer``
(deltas against bases, sizes) and ``answer_bytes`` run on the CPU pool. A large chunk list stays
packed (core/packed.py) and is written, and compressed, piece by piece: a 20 GB file's manifest
is never a list of lists nor a second whole copy of its JSON on the daemon. The answer stops before ``max_bytes`` of
JSON (the first manifest always goes); the ones left out are listed as ``deferred`` for the
client to ask again, the unknown ones as ``missing``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from smartsyncd.core import bodycodec, manifest
from smartsyncd.core.errors import BadRequest
from smartsyncd.core.model import Manifest
from smartsyncd.core.packed import PackedChunks, manifest_json
from smartsyncd.web.bodies import expect_object, get_list
from smartsyncd.web.errors import json_bytes
from smartsyncd.web.parse import hash_field
from smartsyncd.web.shapes import JsonObject


@dataclass(frozen=True)
class Wanted:
    """One manifest asked for, and the version the caller has (for a delta)."""

    content: str
    base: str | None


def parse_manifest_request(body: object, limit: int) -> list[Wanted]:
    """``{"files": [{"content": id, "base": id?}, ...]}``: at most ``limit`` entries (413),
    each a 64-hex content id (400 naming the field); repeats are answered once."""
    items = get_list(expect_object(body), "files", max_len=limit)
    out: dict[str, Wanted] = {}
    for i, item in enumerate(items):
        f = f"files[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"field {f!r} must be an object with a content id", field=f)
        content = hash_field(item.get("content"), f + ".content")
        base = item.get("base")
        if base is not None:
            base = hash_field(base, f + ".base")
        out.setdefault(content, Wanted(content, base if base != content else None))
    return list(out.values())


@dataclass(frozen=True)
class ManifestsAnswer:
    body: JsonObject
    served: list[tuple[str, int]]  # (content, size) of each manifest in the answer


def manifests_answer(
    wanted: list[Wanted], found: Mapping[str, Manifest], max_bytes: int
) -> ManifestsAnswer:
    """The answer: each found manifest whole, or as a delta against its base where that is
    smaller (the base must be found too), in the order asked, up to ``max_bytes``."""
    answers: list[JsonObject] = []
    served: list[tuple[str, int]] = []
    missing: list[str] = []
    deferred: list[str] = []
    total = 0
    for w in wanted:
        m = found.get(w.content)
        if m is None:
            missing.append(w.content)
            continue
        if deferred:
            deferred.append(w.content)
            continue
        item = _one(w, m, found.get(w.base) if w.base is not None else None)
        size = item_size(item) + 1
        if answers and total + size > max_bytes:
            deferred.append(w.content)
            continue
        total += size
        answers.append(item)
        served.append((m.content, m.size))
    body = {"manifests": answers, "missing": missing, "deferred": deferred}
    return ManifestsAnswer(body, served)


def _one(w: Wanted, found: Manifest, base: Manifest | None) -> JsonObject:
    # a large chunk list stays packed: written piece by piece by ``answer_bytes``
    full = found.chunks if isinstance(found.chunks, PackedChunks) else manifest.chunks_to_json(found.chunks)
    if base is not None:
        ops = manifest.make_delta(base.chunks, found.chunks)
        if len(json_bytes(ops)) < _json_size(full):
            return {"content": w.content, "size": found.size,
                    "delta": {"base": base.content, "ops": ops}}
    return {"content": w.content, "size": found.size, "chunks": full}


def _json_size(chunks: object) -> int:
    if isinstance(chunks, PackedChunks):
        return sum(len(piece) for piece in manifest_json(chunks))
    return len(json_bytes(chunks))


def item_size(item: JsonObject) -> int:
    """Bytes of ``item`` in the answer."""
    return sum(len(piece) for piece in _item_pieces(item))


def _item_pieces(item: JsonObject) -> Iterator[bytes]:
    chunks = item.get("chunks")
    if not isinstance(chunks, PackedChunks):
        yield json_bytes(item)
        return
    yield json_bytes({k: v for k, v in item.items() if k != "chunks"})[:-1] + b',"chunks":'
    yield from manifest_json(chunks)
    yield b"}"


def answer_pieces(body: JsonObject) -> Iterator[bytes]:
    """The answer's JSON (as ``json_bytes`` would write it) in pieces, each large chunk list
    from its packed form, never as lists."""
    yield b'{"manifests":['
    items = body["manifests"]
    assert isinstance(items, list)
    for n, item in enumerate(items):
        if n:
            yield b","
        assert isinstance(item, dict)
        yield from _item_pieces(item)
    yield b'],"missing":' + json_bytes(body["missing"]) + b',"deferred":' + json_bytes(body["deferred"]) + b"}"


def answer_bytes(body: JsonObject, compress: bool) -> tuple[bytes, bool]:
    """The answer's bytes, zstd-compressed as written when ``compress`` (the client accepts
    it) and worth it; blocking: the route runs it on the CPU pool."""
    size = sum(len(piece) for piece in answer_pieces(body))
    if compress and size >= bodycodec.MIN_COMPRESS:
        return bodycodec.compress_pieces(answer_pieces(body), size), True
    return b"".join(answer_pieces(body)), False
