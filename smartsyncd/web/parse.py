"""Request parsing: typed values out of request bodies, headers and query arguments.

Pure functions (no store, no reactor): a wrong type or shape is a ``BadRequest`` naming the
field, a body or list over its limit a ``TooLarge``. ``parse_commit`` may run on the CPU pool
(``parse_json_off_reactor`` decides by size); the rest is cheap enough for the reactor.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeGuard

from twisted.web.server import Request

from smartsyncd.core import bodycodec, chunking, chunkstream, manifest
from smartsyncd.core.errors import BadRequest, TooLarge
from smartsyncd.core.jsonvalue import JSONDict, JSONValue
from smartsyncd.core.manifestlift import NotLiftable, StreamLifter, lift_manifests
from smartsyncd.core.model import MTIME_NS_MAX, MTIME_NS_MIN, ChunkRef, HistoryCheck, ProposedChange
from smartsyncd.core.packed import PackedBuilder, PackedChunks
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import PutManifest
from smartsyncd.web.bodies import (
    expect_object,
    get_int,
    get_list,
    get_str,
    parse_json,
    query_str,
    read_body,
)
from smartsyncd.web.history import check_from_body
from smartsyncd.web.limits import Limits
from smartsyncd.web.pool import RunBlocking

COPY_HEADER = b"smartsync-copy"
_COPY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
INLINE_JSON_BYTES = 16 * 1024  # larger JSON bodies are parsed on the CPU pool

# A base range of a delta: (content id of the base version, offset, length).
BaseRange = tuple[str, int, int]


@dataclass(frozen=True)
class ParsedCommit:
    batch: str
    changes: tuple[ProposedChange, ...]
    manifests: dict[str, PutManifest]
    check: HistoryCheck | None = None  # the copy's view of the log (web/history.py)
    report: object = None  # the copy's report folded in, unparsed (web/copyreport.py)
    chunks: object = None  # small uploads carried along, unparsed (web/inlinechunks.py)


def hash_field(value: object, field: str) -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise BadRequest(f"field {field!r} must be a 64-character lowercase hex hash", field=field)
    return value


def hash_list(body: object, limit: int) -> list[str]:
    obj = expect_object(body)
    items = get_list(obj, "chunks", max_len=limit)
    return [hash_field(h, f"chunks[{i}]") for i, h in enumerate(items)]


def fetch_refs(body: object, wanted: list[str], max_bytes: int) -> dict[str, BaseRange]:
    """The optional base ranges of a fetch (docs/protocol.md): ``"bases": [content id, ...]``
    and ``"deltas": [[chunk index, base index, offset, length], ...]`` -> hash -> (base,
    offset, length). At most ``max_bytes`` of base ranges in all (``413``)."""
    obj = expect_object(body)
    if obj.get("deltas") is None:
        return {}
    items = get_list(obj, "deltas", max_len=len(wanted))
    bases = [hash_field(b, f"bases[{j}]") for j, b in enumerate(get_list(obj, "bases", max_len=len(wanted)))]
    refs: dict[str, BaseRange] = {}
    total = 0
    for k, item in enumerate(items):
        f = f"deltas[{k}]"
        if not _four_ints(item):
            raise BadRequest(f"field {f!r} must be [chunk index, base index, offset, length]", field=f)
        i, b, offset, length = item
        if not (0 <= i < len(wanted) and 0 <= b < len(bases)):
            raise BadRequest(f"field {f!r} names a chunk or base index out of range", field=f)
        if offset < 0 or not 0 < length <= chunkstream.DELTA_MAX_PREFIX:
            raise BadRequest(
                f"field {f!r} needs offset >= 0 and length 1..{chunkstream.DELTA_MAX_PREFIX}", field=f
            )
        if refs.setdefault(wanted[i], (bases[b], offset, length)) != (bases[b], offset, length):
            raise BadRequest(f"field {f!r} names a second base range for one chunk", field=f)
        total += length
    if total > max_bytes:
        raise TooLarge(f"the deltas name over {max_bytes} bytes of base ranges; ask for fewer", limit=max_bytes)
    return refs


def _four_ints(item: JSONValue) -> TypeGuard[list[int]]:
    return isinstance(item, list) and len(item) == 4 and all(type(x) is int for x in item)


def _with_field(e: BadRequest, field: str) -> BadRequest:
    return BadRequest(e.message, **{**e.details, "field": field})


def parse_commit(body: bytes, limits: Limits) -> ParsedCommit:
    """Parse and type-check a commit body (pure; the caller may run it off the reactor).

    Unknown keys are ignored; a wrong type is a BadRequest naming the field; paths are
    normalized (InvalidPath names the path). Delta ops are kept raw: storage applies them.
    """
    # large manifests are packed from the bytes, never parsed into lists (core/manifestlift.py)
    marker = secrets.token_hex(16) + ":"
    body, lifted = lift_manifests(body, marker, manifest.PACK_MIN_ENTRIES, manifest.DEFAULT_MAX_ENTRIES)
    return _parse_lifted(body, lifted, marker, limits)


def parse_encoded_commit(body: bytes, encoding: str | None, limits: Limits) -> ParsedCommit:
    """``parse_commit`` of a body still in its ``Content-Encoding``: decompressed piece by
    piece into a ``StreamLifter``, so a 20 GB file's commit (about 45 MB of JSON, 25 MB sent)
    is never whole once decompressed, only its packed manifest (40 bytes per chunk) and the
    rest of the body. A body the stream cannot lift (core/manifestlift.py ``NotLiftable``: it
    is bad or oddly spelled) is decoded whole and parsed by ``parse_commit``, which refuses or
    accepts it as before. Pure; for the CPU pool."""
    marker = secrets.token_hex(16) + ":"
    lifter = StreamLifter(marker, manifest.PACK_MIN_ENTRIES, manifest.DEFAULT_MAX_ENTRIES)
    try:
        for piece in bodycodec.decode_pieces(body, encoding, limits.json_body):
            lifter.feed(piece)
        rest, lifted = lifter.finish()
    except NotLiftable:
        return parse_commit(bodycodec.decode(body, encoding, limits.json_body), limits)
    del lifter
    return _parse_lifted(rest, lifted, marker, limits)


def _parse_lifted(body: bytes, lifted: list[PackedChunks], marker: str, limits: Limits) -> ParsedCommit:
    obj = expect_object(parse_json(body))
    batch = get_str(obj, "batch", max_len=128, non_empty=True)
    items = get_list(obj, "changes", max_len=limits.changes_per_commit)
    changes: list[ProposedChange] = []
    manifests: dict[str, PutManifest] = {}

    def manifest_of(item: JSONDict) -> object:
        value = item.get("manifest")
        if lifted and type(value) is str and value.startswith(marker):
            return lifted[int(value[len(marker) :])]
        return value

    for i, raw in enumerate(items):
        fast = _plain_change(raw, manifest_of)
        if fast is not None:
            changes.append(fast[0])
            if fast[1] is not None:
                manifests[fast[0].path] = fast[1]
            continue
        f = f"changes[{i}]"
        item = expect_object(raw, f)
        path = normalize_path(get_str(item, "path", f"{f}.path"))
        kind = get_str(item, "kind", f"{f}.kind")
        base = get_int(item, "base", f"{f}.base", minimum=0, nullable=True)
        if kind == "delete":
            changes.append(ProposedChange(path=path, kind="delete", base=base))
            continue
        if kind != "put":
            raise BadRequest(f"field '{f}.kind' must be \"put\" or \"delete\"", field=f"{f}.kind")
        full, delta = manifest_of(item), item.get("delta")
        if full is not None and delta is not None:
            raise BadRequest(f"{f} has both 'manifest' and 'delta'", field=f)
        chunks = None
        size: int | None
        if full is not None:
            try:
                chunks = manifest.chunks_from_json(full, field=f"{f}.manifest")
            except BadRequest as e:
                raise _with_field(e, f"{f}.manifest") from None
        if chunks is not None and item.get("content") is None and item.get("size") is None:
            # the compact form: content id and size follow from the full manifest
            content = manifest.content_id(chunks)
            size = sum(c.size for c in chunks)
        else:
            content = hash_field(item.get("content"), f"{f}.content")
            size = get_int(item, "size", f"{f}.size", minimum=0)
        assert size is not None
        mtime_ns, readonly = file_attributes(item, f)
        changes.append(
            ProposedChange(
                path=path, kind="put", base=base, content=content, size=size,
                mtime_ns=mtime_ns, readonly=readonly,
            )
        )
        if chunks is not None:
            manifests[path] = PutManifest(content=content, chunks=chunks)
        elif delta is not None:
            d = expect_object(delta, f"{f}.delta")
            delta_base = hash_field(d.get("base"), f"{f}.delta.base")
            ops = get_list(d, "ops", f"{f}.delta.ops")
            manifests[path] = PutManifest(content=content, delta_base=delta_base, delta_ops=tuple(ops))
    return ParsedCommit(batch=batch, changes=tuple(changes), manifests=manifests, check=check_from_body(obj),
                        report=obj.get("report"), chunks=obj.get("chunks"))


def file_attributes(item: JSONDict, f: str) -> tuple[int | None, bool | None]:
    """A put's optional ``mtime`` (integer nanoseconds since 1970-01-01 UTC, up to 2^63 - 1)
    and ``readonly`` (true/false); null or absent is "not known" (issue 16)."""
    mtime_ns = get_int(item, "mtime", f"{f}.mtime", minimum=MTIME_NS_MIN, nullable=True, required=False)
    readonly = item.get("readonly")
    if readonly is not None and type(readonly) is not bool:
        raise BadRequest(f"field '{f}.readonly' must be true, false or null", field=f"{f}.readonly")
    return mtime_ns, readonly


def _plain_attributes(raw: JSONDict) -> tuple[int | None, bool | None] | None:
    """``file_attributes`` for the fast path: None when either is malformed (the full checks
    then name the field)."""
    mtime_ns, readonly = raw.get("mtime"), raw.get("readonly")
    if mtime_ns is not None and (type(mtime_ns) is not int or not MTIME_NS_MIN <= mtime_ns <= MTIME_NS_MAX):
        return None
    if readonly is not None and type(readonly) is not bool:
        return None
    return mtime_ns, readonly


def _sent_manifest(item: JSONDict) -> object:
    return item.get("manifest")


def _plain_change(
    raw: object, manifest_of: Callable[[JSONDict], object] = _sent_manifest
) -> tuple[ProposedChange, PutManifest | None] | None:
    """The two shapes a sync sends nearly always, checked without building field names: a
    delete, and a put with a full manifest only (content id and size derived). ``None`` for
    anything else, valid or not: ``parse_commit``'s full checks then decide and name the field.
    It accepts only what those checks accept, and gives the same result."""
    if type(raw) is not dict:
        return None
    path = raw.get("path")
    if type(path) is not str or "base" not in raw:
        return None
    base = raw["base"]
    if base is not None and (type(base) is not int or base < 0):
        return None
    kind = raw.get("kind")
    if kind == "delete":
        return ProposedChange(path=normalize_path(path), kind="delete", base=base), None
    full = manifest_of(raw)
    if (
        kind != "put"
        or not isinstance(full, list | PackedChunks)
        or len(full) > manifest.DEFAULT_MAX_ENTRIES
        or raw.get("delta") is not None
        or raw.get("content") is not None
        or raw.get("size") is not None
    ):
        return None
    attributes = _plain_attributes(raw)
    if attributes is None:
        return None
    if isinstance(full, PackedChunks):
        return _plain_put(path, base, attributes, full)
    refs: list[ChunkRef] = []
    packed = PackedBuilder()  # a large manifest: 40 bytes per entry (core/packed.py)
    large = len(full) > manifest.PACK_MIN_ENTRIES
    for entry in full:
        if type(entry) is not list or len(entry) != 2:
            return None
        h, n = entry
        if type(n) is not int or not 0 < n <= chunking.MAX_CHUNK or not manifest.is_hash(h):
            return None
        if large:
            packed.append_digest(bytes.fromhex(h), n)
        else:
            refs.append(ChunkRef(h, n))
    return _plain_put(path, base, attributes, packed.done() if large else tuple(refs))


def _plain_put(
    path: str, base: int | None, attributes: tuple[int | None, bool | None],
    chunks: Sequence[ChunkRef],
) -> tuple[ProposedChange, PutManifest]:
    content = manifest.content_id(chunks)
    path = normalize_path(path)
    size = sum(c.size for c in chunks)
    return (
        ProposedChange(
            path=path, kind="put", base=base, content=content, size=size,
            mtime_ns=attributes[0], readonly=attributes[1],
        ),
        PutManifest(content=content, chunks=chunks),
    )


def content_encoding(request: Request) -> str | None:
    raw = request.requestHeaders.getRawHeaders(b"content-encoding")
    return raw[0].decode("latin-1") if raw else None


def json_body(request: Request, limit: int) -> bytes:
    """A small JSON body, decoded from its ``Content-Encoding`` (zstd), capped at ``limit``."""
    body = read_body(request, limit)
    return bodycodec.decode(body, content_encoding(request), limit)


def copy_header(request: Request) -> str | None:
    """The sync copy id of a ``Smartsync-Copy`` header (None if absent); malformed is a 400."""
    raw = request.requestHeaders.getRawHeaders(COPY_HEADER)
    if not raw:
        return None
    value = raw[0].decode("latin-1").strip()
    if not _COPY_ID.fullmatch(value):
        raise BadRequest("the Smartsync-Copy header must be 1-64 letters, digits, '-' or '_'")
    return value


def parse_time(text: str, field: str) -> datetime:
    """ISO 8601; a time without zone is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field} must be an ISO 8601 time such as 2026-03-31T17:00:00Z", field=field) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def query_path(request: Request) -> str:
    raw = query_str(request, "path")
    if raw is None:
        raise BadRequest("query argument 'path' is missing", field="path")
    return normalize_path(raw)


async def parse_json_off_reactor(run_blocking: RunBlocking, body: bytes) -> JSONValue:
    """``parse_json`` inline for a small body, on the CPU pool for a larger one (a 1 MiB
    body of empty lists takes about 0.15 s to parse)."""
    if len(body) > INLINE_JSON_BYTES:
        return await run_blocking(parse_json, body)
    return parse_json(body)
