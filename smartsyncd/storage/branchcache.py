"""The branch office's chunk cache: chunks fetched from central, kept in the branch's packs.

A branch's pack rows (replayed from central) name central's pack files, which the branch does
not have. The chunks it fetched are written here as ordinary packs (``storage/packs.py``: temp
file, fsync, rename, fsync the folder), one pack per fetch from central, and indexed in memory:
hash -> (pack, offset, stored size, codec, raw size). Packs describe themselves, so the index
is rebuilt at start by reading each pack's record headers (``load``): nothing of the cache is
kept in the read-only database, and a crash can lose at most a pack not yet renamed, which is
fetched again. Only verified chunks are written (the caller checked every hash).

Blocking: the store runs it on its file pool (several threads: the index has a lock).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smartsyncd.core.model import VerifiedChunk
from smartsyncd.storage.api import StoredChunk
from smartsyncd.storage.packs import MAGIC, PackStore

_RECORD_HEADER = struct.Struct(">32sBII")  # as storage/packs.py writes them


@dataclass(frozen=True)
class CachedChunk:
    pack: str
    offset: int
    stored_size: int
    codec: int
    raw_size: int


class ChunkCache:
    """Verified chunks from central, per engagement, in packs under ``packs.root``."""

    def __init__(self, packs: PackStore) -> None:
        self.packs = packs
        self._index: dict[tuple[int, str], CachedChunk] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._index)

    def load(self) -> int:
        """Prepare the folder and index every pack in it; returns the number of chunks."""
        self.packs.prepare()
        root = self.packs.root
        found: dict[tuple[int, str], CachedChunk] = {}
        for engagement in os.listdir(root):
            if not engagement.isdigit():
                continue
            engagement_dir = os.path.join(root, engagement)
            for shard in _subfolders(engagement_dir):
                for entry in os.listdir(shard):
                    if entry.endswith(".pack") and len(entry) == 69:
                        found.update(_index_pack(int(engagement), entry[:-5], os.path.join(shard, entry)))
        with self._lock:
            self._index = found
        return len(found)

    def has(self, engagement_id: int, chunk_hash: str) -> bool:
        return (engagement_id, chunk_hash) in self._index

    def lacking(self, engagement_id: int, hashes: Iterable[str]) -> list[str]:
        """The hashes not cached yet, each once, in order."""
        return [h for h in dict.fromkeys(hashes) if (engagement_id, h) not in self._index]

    def add(self, engagement_id: int, chunks: Sequence[VerifiedChunk]) -> int:
        """Durably write the chunks not cached yet as one pack, then index them."""
        new = [c for c in chunks if not self.has(engagement_id, c.hash)]
        new = list({c.hash: c for c in new}.values())
        if not new:
            return 0
        pack = self.packs.write_pack(engagement_id, [(c.hash, c.codec, c.raw_size, c.payload) for c in new])
        with self._lock:
            for e in pack.entries:
                self._index[(engagement_id, e.hash)] = CachedChunk(
                    pack.name, e.offset, e.stored_size, e.codec, e.raw_size
                )
        return len(new)

    def read(self, engagement_id: int, hashes: Sequence[str]) -> dict[str, StoredChunk]:
        """The cached ones of ``hashes`` (absent ones are left out)."""
        by_pack: dict[str, list[tuple[str, CachedChunk]]] = {}
        for h in dict.fromkeys(hashes):
            where = self._index.get((engagement_id, h))
            if where is not None:
                by_pack.setdefault(where.pack, []).append((h, where))
        out: dict[str, StoredChunk] = {}
        for pack, wanted in by_pack.items():
            data = self.packs.read_ranges(engagement_id, pack, [(w.offset, w.stored_size) for _, w in wanted])
            for (h, w), payload in zip(wanted, data, strict=True):
                out[h] = StoredChunk(hash=h, codec=w.codec, raw_size=w.raw_size, payload=payload)
        return out


def _subfolders(folder: str) -> list[str]:
    return [p for p in (os.path.join(folder, n) for n in os.listdir(folder)) if os.path.isdir(p)]


def _index_pack(engagement_id: int, name: str, path: str) -> dict[tuple[int, str], CachedChunk]:
    """The records of one pack, read header by header (a short tail is ignored)."""
    out: dict[tuple[int, str], CachedChunk] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return out
        offset = len(MAGIC)
        while offset + _RECORD_HEADER.size <= size:
            f.seek(offset)
            digest, codec, raw_size, stored_size = _RECORD_HEADER.unpack(f.read(_RECORD_HEADER.size))
            offset += _RECORD_HEADER.size
            if offset + stored_size > size:
                break
            out[(engagement_id, digest.hex())] = CachedChunk(name, offset, stored_size, codec, raw_size)
            offset += stored_size
    return out
