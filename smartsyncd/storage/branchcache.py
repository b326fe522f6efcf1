"""The branch office's chunk cache: chunks fetched from central, kept in the branch's packs.

A branch's pack rows (replayed from central) name central's pack files, which the branch does
not have. The chunks it fetched are written here as ordinary packs (``storage/packs.py``: temp
file, fsync, rename, fsync the folder), one pack per fetch from central, and indexed in memory:
hash -> (pack, offset, stored size, codec, raw size). Packs describe themselves, so the index
is rebuilt at start by reading each pack's record headers (``load``): nothing of the cache is
kept in the read-only database, and a crash can lose at most a pack not yet renamed, which is
fetched again. Only verified chunks are written (the caller checked every hash).

With a size limit (``[branch] cache_max_bytes``) ``trim`` removes whole packs, least recently
read first, those of engagements the branch does not carry before those it does, never a pack
holding a chunk of a carried engagement's head (``protected``), until the packs take at most
``TRIM_TO`` of the limit. The index entries go first, then the files; a read that raced with
the removal finds the chunk lacking, and the next fetch brings it again. The last read of each
pack is kept in memory (at start: the file's modification time).

Blocking: the store runs it on its file pool (several threads: the index has a lock).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from smartsyncd.core.model import VerifiedChunk
from smartsyncd.storage.api import StoredChunk
from smartsyncd.storage.packs import MAGIC, PackStore

_RECORD_HEADER = struct.Struct(">32sBII")  # as storage/packs.py writes them
TRIM_TO = 0.9  # a trim frees down to this share of the limit, so it does not run at every fetch


@dataclass(frozen=True)
class CachedChunk:
    pack: str
    offset: int
    stored_size: int
    codec: int
    raw_size: int


@dataclass
class _PackUse:
    size: int
    last_read: float
    hashes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrimReport:
    packs: int
    chunks: int
    bytes_freed: int
    bytes_kept: int


class ChunkCache:
    """Verified chunks from central, per engagement, in packs under ``packs.root``."""

    def __init__(self, packs: PackStore) -> None:
        self.packs = packs
        self._index: dict[tuple[int, str], CachedChunk] = {}
        self._packs: dict[tuple[int, str], _PackUse] = {}
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """What the cache's packs take on disk."""
        with self._lock:
            return sum(p.size for p in self._packs.values())

    def __len__(self) -> int:
        return len(self._index)

    def load(self) -> int:
        """Prepare the folder and index every pack in it; returns the number of chunks."""
        self.packs.prepare()
        root = self.packs.root
        found: dict[tuple[int, str], CachedChunk] = {}
        packs: dict[tuple[int, str], _PackUse] = {}
        for engagement in os.listdir(root):
            if not engagement.isdigit():
                continue
            engagement_dir = os.path.join(root, engagement)
            for shard in _subfolders(engagement_dir):
                for entry in os.listdir(shard):
                    if entry.endswith(".pack") and len(entry) == 69:
                        path = os.path.join(shard, entry)
                        records = _index_pack(int(engagement), entry[:-5], path)
                        found.update(records)
                        info = os.stat(path)
                        packs[(int(engagement), entry[:-5])] = _PackUse(
                            info.st_size, info.st_mtime, [h for _, h in records]
                        )
        with self._lock:
            self._index = found
            self._packs = packs
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
            self._packs[(engagement_id, pack.name)] = _PackUse(
                pack.size, time.time(), [e.hash for e in pack.entries]
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
        now = time.time()
        for pack, wanted in by_pack.items():
            try:
                data = self.packs.read_ranges(engagement_id, pack, [(w.offset, w.stored_size) for _, w in wanted])
            except FileNotFoundError:
                continue  # trimmed meanwhile: lacking, fetched again
            with self._lock:
                use = self._packs.get((engagement_id, pack))
                if use is not None:
                    use.last_read = now
            for (h, w), payload in zip(wanted, data, strict=True):
                out[h] = StoredChunk(hash=h, codec=w.codec, raw_size=w.raw_size, payload=payload)
        return out

    def trim(self, max_bytes: int, carried: set[int], protected: set[tuple[int, str]]) -> TrimReport:
        """Remove packs until they take at most ``TRIM_TO * max_bytes`` (see the module
        docstring); ``carried``: engagement ids, ``protected``: their head chunks."""
        victims: list[tuple[int, str]] = []
        freed = chunks = 0
        with self._lock:
            total = sum(p.size for p in self._packs.values())
            if total <= max_bytes:
                return TrimReport(0, 0, 0, total)
            target = int(max_bytes * TRIM_TO)
            order = sorted(self._packs.items(), key=lambda kv: (kv[0][0] in carried, kv[1].last_read))
            for key, use in order:
                if total <= target:
                    break
                if any((key[0], h) in protected for h in use.hashes):
                    continue
                victims.append(key)
                total -= use.size
                freed += use.size
                del self._packs[key]
                for h in use.hashes:
                    where = self._index.get((key[0], h))
                    if where is not None and where.pack == key[1]:
                        del self._index[(key[0], h)]
                        chunks += 1
        for engagement_id, name in victims:
            try:
                os.unlink(self.packs.path_for(engagement_id, name))
            except FileNotFoundError:
                pass
        return TrimReport(len(victims), chunks, freed, total)


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
