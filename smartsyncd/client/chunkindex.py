"""Where each chunk of a synced file sits locally (hash -> path, offset, size), so a pull copies
a chunk it already has instead of fetching it. Kept compact because it grows with every local
chunk (a 20 GiB file is about 550,000).

A small file's chunks go in a dict: a key is the digest's first 16 bytes, a value 16 packed
bytes with the path as a number, about 120 bytes an entry against about 300 for a dict of
strings and tuples. A file of at least ``SEGMENT_MIN`` chunks is added whole (``add``) as a
packed *segment*: a sorted ``array`` of 64-bit keys (the digest's first 44 bits, then the
entry's position) and, per position, its offset and size: 20 bytes per chunk and no Python
object per chunk, found by ``bisect`` in C. A new segment is merged into the one before it
while that is no more than twice as large (up to ``SEGMENT_MAX`` entries), so a lookup searches
few segments. A prefix collision is harmless: what is read locally is checked against the full
hash (``localfs.read_chunk``) and fetched when it does not match."""

from __future__ import annotations

import heapq
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from smartsyncd.core.model import ChunkRef
from smartsyncd.core.packed import PackedChunks

_VALUE = struct.Struct("<IQI")  # path number, offset, size
KEY_BYTES = 16
SEGMENT_MIN = 1024  # a file of this many chunks or more is kept as a packed segment
_POS_BITS = 20
SEGMENT_MAX = 1 << _POS_BITS  # entries of one segment (a key keeps the position in 20 bits)
_POS_MASK = (1 << _POS_BITS) - 1
_SORT_BLOCK = 1 << 16
_PREFIX_HEX = (64 - _POS_BITS) // 4  # 11 hex digits: the digest's first 44 bits

Location = tuple[str, int, int]


class _Segment:
    """Sorted keys ``prefix << 20 | position``; per position an offset and a size; the path
    number of each run of positions (``starts`` ascending, ``paths`` alongside)."""

    __slots__ = ("keys", "offsets", "sizes", "starts", "paths")

    def __init__(self, keys: array[int], offsets: array[int], sizes: array[int],
                 starts: list[int], paths: list[int]) -> None:
        self.keys, self.offsets, self.sizes = keys, offsets, sizes
        self.starts, self.paths = starts, paths

    def find(self, prefix: int) -> tuple[int, int, int] | None:
        """(path number, offset, size) of the first entry with this prefix, or None."""
        keys = self.keys
        i = bisect_left(keys, prefix << _POS_BITS)
        if i == len(keys) or keys[i] >> _POS_BITS != prefix:
            return None
        pos = keys[i] & _POS_MASK
        return self.paths[bisect_right(self.starts, pos) - 1], self.offsets[pos], self.sizes[pos]

    def __len__(self) -> int:
        return len(self.offsets)


def _segment(number: int, chunks: Iterable[ChunkRef], offset: int) -> tuple[_Segment, int]:
    """A file's chunks (the caller keeps them under ``SEGMENT_MAX``), the first at ``offset``,
    as a segment; and the offset after the last."""
    offsets, sizes = array("Q"), array("I")
    prefixes = array("Q")
    if isinstance(chunks, PackedChunks):
        for digest, size in chunks.digests():
            prefixes.append(int.from_bytes(digest[:8], "big") >> _POS_BITS)
            offsets.append(offset)
            sizes.append(size)
            offset += size
    else:
        for chunk in chunks:
            prefixes.append(int(chunk.hash[:_PREFIX_HEX], 16))
            offsets.append(offset)
            sizes.append(chunk.size)
            offset += chunk.size
    return _Segment(_sorted_keys(prefixes), offsets, sizes, [0], [number]), offset


def build_segments(number: int, chunks: Sequence[ChunkRef]) -> list[_Segment]:
    """The segments of a large file (path ``number``, at least ``SEGMENT_MIN`` chunks): pure
    CPU work, about 0.8 s for 20 GiB, so a pull runs it on a thread (``ChunkIndex.number``
    before, ``ChunkIndex.add_segments`` after, both on the caller's thread)."""
    out: list[_Segment] = []
    offset = 0
    for start in range(0, len(chunks), SEGMENT_MAX):
        part = chunks if len(chunks) <= SEGMENT_MAX else chunks[start : start + SEGMENT_MAX]
        segment, offset = _segment(number, part, offset)
        out.append(segment)
    return out


def _sorted_keys(prefixes: array[int]) -> array[int]:
    """The keys ``prefix << 20 | position``, sorted: blocks of ``_SORT_BLOCK`` sorted as lists,
    then merged into the array as they come, so no list of every key exists at once (550,000
    Python ints are 22 MB)."""
    blocks = [
        array("Q", sorted(p << _POS_BITS | pos for pos, p in enumerate(prefixes[at : at + _SORT_BLOCK], at)))
        for at in range(0, len(prefixes), _SORT_BLOCK)
    ]
    return blocks[0] if len(blocks) == 1 else array("Q", heapq.merge(*blocks))


def _merge(a: _Segment, b: _Segment) -> _Segment:
    """``a`` then ``b`` as one segment (``a``'s entries first: an equal prefix finds ``a``'s)."""
    shift = len(a)
    keys = array("Q", heapq.merge(a.keys, (k + shift for k in b.keys)))
    return _Segment(keys, a.offsets + b.offsets, a.sizes + b.sizes,
                    a.starts + [s + shift for s in b.starts], a.paths + b.paths)


class ChunkIndex:
    """hash (hex) -> (path, offset, size); the first location recorded for a hash wins."""

    def __init__(self) -> None:
        self._where: dict[bytes, bytes] = {}
        self._segments: list[_Segment] = []
        self._paths: list[str] = []
        self._numbers: dict[str, int] = {}

    @staticmethod
    def _key(digest: str) -> bytes:
        return bytes.fromhex(digest[: KEY_BYTES * 2])

    def _number(self, path: str) -> int:
        number = self._numbers.get(path)
        if number is None:
            number = self._numbers[path] = len(self._paths)
            self._paths.append(path)
        return number

    def add(self, path: str, chunks: Sequence[ChunkRef]) -> None:
        """Record where each chunk of the file ``path`` sits (``chunks`` in file order)."""
        if len(chunks) < SEGMENT_MIN:
            offset = 0
            for chunk in chunks:
                self.setdefault(chunk.hash, (path, offset, chunk.size))
                offset += chunk.size
            return
        self.add_segments(build_segments(self.number(path), chunks))

    def number(self, path: str) -> int:
        """The number ``build_segments`` needs for ``path`` (given on the reactor)."""
        return self._number(path)

    def add_segments(self, segments: list[_Segment]) -> None:
        """Add a large file's segments built by ``build_segments`` (off the reactor)."""
        for segment in segments:
            self._add_segment(segment)

    def _add_segment(self, segment: _Segment) -> None:
        segments = self._segments
        while segments and len(segments[-1]) <= 2 * len(segment) \
                and len(segments[-1]) + len(segment) <= SEGMENT_MAX:
            segment = _merge(segments.pop(), segment)
        segments.append(segment)

    def setdefault(self, digest: str, location: Location) -> None:
        if digest in self:
            return
        path, offset, size = location
        self._where[self._key(digest)] = _VALUE.pack(self._number(path), offset, size)

    def _find(self, digest: str) -> Location | None:
        value = self._where.get(self._key(digest))
        if value is not None:
            number, offset, size = _VALUE.unpack(value)
            return self._paths[number], offset, size
        if self._segments:
            prefix = int(digest[:_PREFIX_HEX], 16)
            for segment in self._segments:
                found = segment.find(prefix)
                if found is not None:
                    return self._paths[found[0]], found[1], found[2]
        return None

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self._find(digest) is not None

    def __getitem__(self, digest: str) -> Location:
        found = self._find(digest)
        if found is None:
            raise KeyError(digest)
        return found

    def __len__(self) -> int:
        """Entries recorded (a hash repeated in large files counts once per place)."""
        return len(self._where) + sum(len(s) for s in self._segments)
