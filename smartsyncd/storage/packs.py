"""Chunk packs: many chunks in one write-once file, one fsync per upload request.

A 256 MiB file is about 8,000 chunks; a file (and an fsync) per chunk would make uploads crawl.
So each ``store_chunks`` call writes the chunks it lacks into ONE pack file:

    <root>/<engagement_id>/<first 2 hex of name>/<name>.pack     name = blake3 hex of the bytes

A pack starts with ``MAGIC`` and then holds records in the chunk stream format of
docs/protocol.md (32-byte hash, codec, raw_len, payload_len, payload), so a pack describes itself
and can be checked or re-indexed without the database. The metadata store records, per chunk,
(pack, payload offset, payload length); reads are plain ranged reads.

Writing is crash-safe (``durable.AtomicFile``): temp file in the shard folder, fsync, close,
rename, fsync the folder (and any new shard folders). Only after that does the caller commit the
pack and chunk rows, and only after that does the web layer acknowledge. A pack written but never
committed (crash in between) is an orphan: harmless, and collected later by gc. Packs are named by
content, so two daemons writing the same pack produce the same bytes under the same name.
Nothing here takes file locks (the root may be shared over NFS); the database is the only truth.

Everything here blocks: the store runs it on its file thread pool.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import blake3

from smartsyncd.storage.durable import DEFAULT_OPS, AtomicFile, FileOps, ensure_dir, fsync_dir

MAGIC = b"SSPACK1\n"
_RECORD_HEADER = struct.Struct(">32sBII")  # hash, codec, raw_len, payload_len


@dataclass(frozen=True)
class PackEntry:
    """Where one chunk's payload sits in a pack."""

    hash: str
    codec: int
    raw_size: int
    offset: int
    stored_size: int


@dataclass(frozen=True)
class WrittenPack:
    name: str
    size: int
    entries: tuple[PackEntry, ...]


class PackStore:
    """Write-once pack files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str, ops: FileOps = DEFAULT_OPS) -> None:
        self.root = os.path.abspath(root)
        self._ops = ops

    def prepare(self) -> None:
        ensure_dir(self.root, self._ops)

    def path_for(self, engagement_id: int, name: str) -> str:
        if len(name) != 64 or any(c not in "0123456789abcdef" for c in name):
            raise ValueError(f"not a pack name: {name!r}")
        return os.path.join(self.root, str(int(engagement_id)), name[:2], name + ".pack")

    def write_pack(self, engagement_id: int, chunks: Sequence[tuple[str, int, int, bytes]]) -> WrittenPack:
        """Durably write (hash hex, codec, raw_size, payload) records as one pack file."""
        if not chunks:
            raise ValueError("a pack needs at least one chunk")
        engagement_dir = os.path.join(self.root, str(int(engagement_id)))
        # The final shard folder is known only after hashing, so stream into the engagement
        # folder and rename into the shard: both are on the same file system.
        ensure_dir(engagement_dir, self._ops)
        hasher = blake3.blake3()
        entries: list[PackEntry] = []
        with AtomicFile(engagement_dir, ops=self._ops) as f:
            f.write(MAGIC)
            hasher.update(MAGIC)
            offset = len(MAGIC)
            for chunk_hash, codec, raw_size, payload in chunks:
                header = _RECORD_HEADER.pack(bytes.fromhex(chunk_hash), codec, raw_size, len(payload))
                f.write(header)
                f.write(payload)
                hasher.update(header)
                hasher.update(payload)
                offset += len(header)
                entries.append(PackEntry(chunk_hash, codec, raw_size, offset, len(payload)))
                offset += len(payload)
            name = hasher.hexdigest()
            final = self.path_for(engagement_id, name)
            ensure_dir(os.path.dirname(final), self._ops)
            f.commit(final)
            # The temp name left the engagement folder; make that durable too.
            fsync_dir(engagement_dir, self._ops)
        return WrittenPack(name=name, size=offset, entries=tuple(entries))

    def read_range(self, engagement_id: int, name: str, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset``; raise OSError if the pack is gone or too short."""
        return self.read_ranges(engagement_id, name, [(offset, size)])[0]

    def read_ranges(self, engagement_id: int, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read several (offset, size) ranges of one pack, opening it once, in the given order."""
        fd = os.open(self.path_for(engagement_id, name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            out = []
            for offset, size in ranges:
                data = os.pread(fd, size, offset)
                if len(data) != size:
                    raise OSError(f"pack {name} is truncated at offset {offset}")
                out.append(data)
            return out
        finally:
            os.close(fd)

    def exists(self, engagement_id: int, name: str) -> bool:
        return os.path.isfile(self.path_for(engagement_id, name))

    def probe(self) -> None:
        """Write, fsync and remove a small file in the root (the storage health check)."""
        probe = os.path.join(self.root, ".health-probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
