"""Manifests: content ids, the binary storage form, strict JSON parsing, and deltas.

A manifest is the ordered chunk list of one file content (docs/protocol.md, "Content model").
Everything that arrives from the network goes through ``chunks_from_json`` or ``apply_delta``,
which refuse anything malformed with ``BadRequest``.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3

from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.core.errors import BadRequest
from smartsyncd.core.model import ChunkRef, Manifest
from smartsyncd.core.packed import PackedBuilder, PackedChunks

# a chunk list of more entries than this is kept packed (core/packed.py): 40 bytes per entry
# instead of a ChunkRef and its hex string (about 200 bytes); smaller ones stay tuples, which
# are faster to walk for the many small files of a folder
PACK_MIN_ENTRIES = 256

MANIFEST_DOMAIN = b"smartsync-manifest-v1\n"
ENTRY_BYTES = 40  # 32 hash bytes + 8 size bytes
DEFAULT_MAX_ENTRIES = 1_000_000
_HEX = frozenset("0123456789abcdef")


def content_id(chunks: Sequence[ChunkRef]) -> str:
    """BLAKE3-256 of the domain tag followed by each chunk's raw hash and 8-byte size."""
    return content_id_of_binary(encode_binary(chunks))


def content_id_of_binary(body: bytes) -> str:
    """The content id of a manifest given in its storage form (``encode_binary``'s bytes)."""
    hasher = blake3.blake3(MANIFEST_DOMAIN)
    hasher.update(body)  # not ``MANIFEST_DOMAIN + body``: a 20 GB file's manifest is 22 MB
    return hasher.hexdigest()


def make_manifest(chunks: Sequence[ChunkRef]) -> Manifest:
    """The manifest of a chunk list (size is the sum of the chunk sizes); packed when large."""
    refs = compact(chunks)
    return Manifest(content=content_id(refs), size=sum(c.size for c in refs), chunks=refs)


def compact(chunks: Sequence[ChunkRef]) -> Sequence[ChunkRef]:
    """``chunks`` as kept in bulk: a tuple when small, ``PackedChunks`` when large."""
    if isinstance(chunks, PackedChunks):
        return chunks
    if isinstance(chunks, PackedBuilder) and len(chunks) > PACK_MIN_ENTRIES:
        return chunks.done()
    if len(chunks) <= PACK_MIN_ENTRIES:
        return chunks if isinstance(chunks, tuple) else tuple(chunks)
    return PackedChunks.of(chunks)


def one_chunk_manifest(data: bytes) -> Manifest:
    """The manifest of content that is one chunk (1..MIN_CHUNK bytes: FastCDC never cuts
    below its minimum), hashed in one pass: the chunk's raw digest feeds the content id
    directly (equal to ``make_manifest([ChunkRef(chunk_hash(data), len(data))])``)."""
    digest = blake3.blake3(data).digest()
    size = len(data)
    content = content_id_of_binary(digest + size.to_bytes(8, "big"))
    return Manifest(content=content, size=size, chunks=(ChunkRef(digest.hex(), size),))


def encode_binary(chunks: Sequence[ChunkRef]) -> bytes:
    """The storage form: 40 bytes per entry (32-byte hash, 8-byte big-endian size)."""
    if isinstance(chunks, PackedChunks | PackedBuilder):
        return chunks.binary
    if len(chunks) == 1:  # most files of a folder of working papers: no join
        return bytes.fromhex(chunks[0].hash) + chunks[0].size.to_bytes(8, "big")
    return b"".join(bytes.fromhex(c.hash) + c.size.to_bytes(8, "big") for c in chunks)


def decode_binary(data: bytes) -> Sequence[ChunkRef]:
    """Inverse of ``encode_binary`` (packed when large); ``ValueError`` on a length that is
    not a multiple of 40."""
    if len(data) % ENTRY_BYTES:
        raise ValueError(f"binary manifest length {len(data)} is not a multiple of {ENTRY_BYTES}")
    if len(data) > PACK_MIN_ENTRIES * ENTRY_BYTES:
        return PackedChunks(data)
    view = memoryview(data)
    return tuple(
        ChunkRef(view[i : i + 32].hex(), int.from_bytes(view[i + 32 : i + 40], "big"))
        for i in range(0, len(data), ENTRY_BYTES)
    )


def chunks_to_json(chunks: Sequence[ChunkRef]) -> list[list]:
    """The wire form ``[[hash, size], ...]``."""
    return [[c.hash, c.size] for c in chunks]


def is_hash(value: object) -> bool:
    """True for a 64-character lowercase hex string."""
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def _entry(value: object, where: str) -> ChunkRef:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BadRequest(f"{where} must be a [hash, size] pair")
    h, size = value
    if not is_hash(h):
        raise BadRequest(f"{where}: hash must be 64 lowercase hex characters")
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadRequest(f"{where}: size must be an integer")
    if not 0 < size <= MAX_CHUNK:
        raise BadRequest(f"{where}: size {size} is outside 1..{MAX_CHUNK}")
    return ChunkRef(h, size)


def chunks_from_json(
    value: object, *, max_entries: int = DEFAULT_MAX_ENTRIES, field: str = "manifest"
) -> Sequence[ChunkRef]:
    """Parse ``[[hash, size], ...]`` strictly (packed when large); ``BadRequest`` names the
    first problem."""
    if isinstance(value, PackedChunks):  # lifted from the body, each entry checked there
        if len(value) > max_entries:
            raise BadRequest(f"{field} has {len(value)} entries, more than {max_entries}")
        return value
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{field} must be a list of [hash, size] pairs")
    if len(value) > max_entries:
        raise BadRequest(f"{field} has {len(value)} entries, more than {max_entries}")
    entries = (_entry(item, f"{field}[{i}]") for i, item in enumerate(value))
    return PackedChunks.of(entries) if len(value) > PACK_MIN_ENTRIES else tuple(entries)


def make_delta(base: Sequence[ChunkRef], new: Sequence[ChunkRef]) -> list[list]:
    """Ops that turn ``base`` into ``new``: ``["copy", start, count]`` / ``["add", [[h, s], ...]]``.

    Linear time: each entry of ``new`` is looked at once, runs of consecutive base entries
    become one copy.
    """
    first: dict[ChunkRef, int] = {}
    for i, ref in enumerate(base):
        first.setdefault(ref, i)
    ops: list[list] = []
    pending: list[list] = []
    next_base = -1  # where the previous copy ended: preferred start of the next run
    i = 0
    while i < len(new):
        ref = new[i]
        if 0 <= next_base < len(base) and base[next_base] == ref:
            start = next_base
        elif ref in first:
            start = first[ref]
        else:
            pending.append([ref.hash, ref.size])
            i += 1
            continue
        count = 1
        while (
            i + count < len(new)
            and start + count < len(base)
            and base[start + count] == new[i + count]
        ):
            count += 1
        if pending:
            ops.append(["add", pending])
            pending = []
        ops.append(["copy", start, count])
        next_base = start + count
        i += count
    if pending:
        ops.append(["add", pending])
    return ops


def _int_field(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{where} must be an integer")
    return value


def apply_delta(
    base: Sequence[ChunkRef], ops: object, max_entries: int = DEFAULT_MAX_ENTRIES
) -> Sequence[ChunkRef]:
    """Apply delta ops to ``base``; ``BadRequest`` on any malformed op or out-of-range copy."""
    if not isinstance(ops, list | tuple):
        raise BadRequest("delta ops must be a list")
    out: list[ChunkRef] = []
    for n, op in enumerate(ops):
        where = f"delta op {n}"
        if not isinstance(op, list | tuple) or not op or not isinstance(op[0], str):
            raise BadRequest(f"{where} must be a list starting with 'copy' or 'add'")
        if op[0] == "copy":
            if len(op) != 3:
                raise BadRequest(f'{where}: copy takes ["copy", start, count]')
            start = _int_field(op[1], f"{where} start")
            count = _int_field(op[2], f"{where} count")
            if start < 0 or count < 1 or start + count > len(base):
                raise BadRequest(
                    f"{where}: copy {start}+{count} is outside the base of {len(base)} entries"
                )
            if len(out) + count > max_entries:
                raise BadRequest(f"delta yields more than {max_entries} entries")
            out.extend(base[start : start + count])
        elif op[0] == "add":
            if len(op) != 2:
                raise BadRequest(f'{where}: add takes ["add", [[hash, size], ...]]')
            added = chunks_from_json(op[1], max_entries=max_entries - len(out), field=where)
            if not added:
                raise BadRequest(f"{where}: add needs at least one entry")
            out.extend(added)
        else:
            raise BadRequest(f"{where}: unknown op {op[0][:20]!r}")
    return compact(out)
