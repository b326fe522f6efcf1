"""A chunk list kept in the manifest's storage form: 40 bytes per entry, not a Python object.

A 20 GB file is about 600,000 chunks; as a tuple of ``ChunkRef``s (a 64-character hex string
and an int each) that is about 200 bytes per chunk, 120 MB, held by the scan, the push and the
daemon's commit and download alike. ``PackedChunks`` holds the binary form of
``manifest.encode_binary`` (32-byte BLAKE3 digest, 8-byte big-endian size) and makes a
``ChunkRef`` only for the entry asked for, so what is kept in bulk costs 40 bytes per chunk.
It is a read-only ``Sequence[ChunkRef]``: it compares equal to any sequence of the same entries.
``manifest_json`` writes its wire form (``[["hash", size], ...]``) piece by piece from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from smartsyncd.core.model import ChunkRef

ENTRY = 40  # 32 digest bytes + 8 size bytes
JSON_PIECE_ENTRIES = 4096  # entries per piece of ``manifest_json``: about 300 KB of text


class PackedChunks(Sequence[ChunkRef]):
    """An immutable chunk list backed by its binary storage form."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % ENTRY:
            raise ValueError(f"packed chunk list length {len(data)} is not a multiple of {ENTRY}")
        self._data = bytes(data)

    @classmethod
    def of(cls, chunks: Iterable[ChunkRef]) -> PackedChunks:
        """Pack ``chunks`` (consumed once, as it goes: never held as a list)."""
        if isinstance(chunks, PackedChunks):
            return chunks
        if isinstance(chunks, PackedBuilder):
            return chunks.done()
        builder = PackedBuilder()
        for c in chunks:
            builder.append(c)
        return builder.done()

    @property
    def binary(self) -> bytes:
        """The storage form (``manifest.encode_binary``)."""
        return self._data

    def __len__(self) -> int:
        return len(self._data) // ENTRY

    @overload
    def __getitem__(self, index: int) -> ChunkRef: ...

    @overload
    def __getitem__(self, index: slice) -> PackedChunks: ...

    def __getitem__(self, index: int | slice) -> ChunkRef | PackedChunks:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return PackedChunks(self._data[start * ENTRY : max(start, stop) * ENTRY])
            return PackedChunks.of(self[i] for i in range(start, stop, step))
        return _entry(self._data, index)

    def __iter__(self) -> Iterator[ChunkRef]:
        data = self._data
        for at in range(0, len(data), ENTRY):
            yield ChunkRef(data[at : at + 32].hex(), int.from_bytes(data[at + 32 : at + ENTRY], "big"))

    def digests(self) -> Iterator[tuple[bytes, int]]:
        """(32-byte digest, size) per entry, without making hex strings."""
        data = self._data
        for at in range(0, len(data), ENTRY):
            yield data[at : at + 32], int.from_bytes(data[at + 32 : at + ENTRY], "big")

    def total_size(self) -> int:
        return sum(size for _, size in self.digests())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedChunks):
            return self._data == other._data
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"PackedChunks({len(self)} entries)"


def _entry(data: bytes | bytearray, index: int) -> ChunkRef:
    """Entry ``index`` (negative from the end) of packed ``data`` as a ``ChunkRef``."""
    n = len(data) // ENTRY
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError("packed chunk index out of range")
    at = index * ENTRY
    return ChunkRef(data[at : at + 32].hex(), int.from_bytes(data[at + 32 : at + ENTRY], "big"))


class PackedBuilder(Sequence[ChunkRef]):
    """A growing packed chunk list (``done`` gives the ``PackedChunks``): what a scan appends
    a file's chunks to, 40 bytes each, instead of a list of ``ChunkRef``s."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @overload
    def __getitem__(self, index: int) -> ChunkRef: ...

    @overload
    def __getitem__(self, index: slice) -> PackedChunks: ...

    def __getitem__(self, index: int | slice) -> ChunkRef | PackedChunks:
        return PackedChunks(bytes(self._buf))[index] if isinstance(index, slice) else self._at(index)

    def _at(self, index: int) -> ChunkRef:
        return _entry(self._buf, index)

    def __iter__(self) -> Iterator[ChunkRef]:
        return iter(self.done())

    @property
    def binary(self) -> bytes:
        return bytes(self._buf)

    def append(self, chunk: ChunkRef) -> None:
        self._buf += bytes.fromhex(chunk.hash)
        self._buf += chunk.size.to_bytes(8, "big")

    def append_digest(self, digest: bytes, size: int) -> None:
        self._buf += digest
        self._buf += size.to_bytes(8, "big")

    def __len__(self) -> int:
        return len(self._buf) // ENTRY

    def done(self) -> PackedChunks:
        return PackedChunks(bytes(self._buf))


def pack(chunks: Sequence[ChunkRef]) -> PackedChunks:
    """``chunks`` as a ``PackedChunks`` (itself when it already is one)."""
    return PackedChunks.of(chunks)


def manifest_json(chunks: Sequence[ChunkRef]) -> Iterator[bytes]:
    """The wire form ``[["hash", size], ...]`` (as ``json.dumps(chunks_to_json(...),
    separators=(",", ":"))``) in pieces of ``JSON_PIECE_ENTRIES`` entries, so a large
    manifest is never a list of lists nor one string."""
    packed = pack(chunks)
    data = packed.binary
    yield b"["
    for start in range(0, len(data), JSON_PIECE_ENTRIES * ENTRY):
        part = data[start : start + JSON_PIECE_ENTRIES * ENTRY]
        text = ",".join(
            f'["{part[at : at + 32].hex()}",{int.from_bytes(part[at + 32 : at + ENTRY], "big")}]'
            for at in range(0, len(part), ENTRY)
        )
        yield (b"," if start else b"") + text.encode("ascii")
    yield b"]"
