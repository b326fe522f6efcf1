"""Many manifests in one answer (``POST /v1/engagements/<eng>/manifests``, docs/protocol.md
"Pull"): the request parsed, and the answer built from the manifests the store found.

Pure functions: ``parse_manifest_request`` is cheap enough for the reactor; ``manifests_answer``
(deltas against bases, sizes) runs on the CPU pool. The answer stops before ``max_bytes`` of
JSON (the first manifest always goes); the ones left out are listed as ``deferred`` for the
client to ask again, the unknown ones as ``missing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smartsyncd.core import manifest
from smartsyncd.core.errors import BadRequest
from smartsyncd.core.model import Manifest
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
        size = len(json_bytes(item)) + 1
        if answers and total + size > max_bytes:
            deferred.append(w.content)
            continue
        total += size
        answers.append(item)
        served.append((m.content, m.size))
    body = {"manifests": answers, "missing": missing, "deferred": deferred}
    return ManifestsAnswer(body, served)


def _one(w: Wanted, found: Manifest, base: Manifest | None) -> JsonObject:
    full = manifest.chunks_to_json(found.chunks)
    if base is not None:
        ops = manifest.make_delta(base.chunks, found.chunks)
        if len(json_bytes(ops)) < len(json_bytes(full)):
            return {"content": w.content, "size": found.size,
                    "delta": {"base": base.content, "ops": ops}}
    return {"content": w.content, "size": found.size, "chunks": full}
