"""Chunk packs: many chunks in one write-once file, one fsync per upload request.

A 256 MiB file is about 8,000 chunks; a file (and an fsync) per chunk would make uploads crawl.
So each ``store_chunks`` call writes the chunks it lacks into ONE pack file:

    <volume>/<engagement_id>/<first 2 hex of name>/<name>.pack     name: see below

A store has one or more volumes (``[storage] volumes``, docs/operations.md "Storage volumes"):
named folders, ``default`` being ``[storage] path``. Each engagement lives on one; the database
records which (``storage/volumes.py``) and ``PackStore`` keeps what it last learned in
``place``. A read that misses on that volume looks on the others before failing (``locate``):
another daemon (or ``smartsync-admin engagement move``) may have moved the engagement and
removed the old files, and a pack has the same name on every volume.

A pack starts with ``MAGIC`` and then holds records in the chunk stream format of
docs/protocol.md (32-byte hash, codec, raw_len, payload_len, payload), so a pack describes itself
and can be checked or re-indexed without the database. The metadata store records, per chunk,
(pack, payload offset, payload length); reads are plain ranged reads.

Writing is crash-safe (``durable.AtomicFile``): temp file in the shard folder, fsync, close,
rename, fsync the folder (and any new shard folders). Only after that does the caller commit the
pack and chunk rows, and only after that does the web layer acknowledge. A pack written but never
committed (crash in between) is an orphan: harmless, and collected later by gc. Packs are named by
content: the name is the BLAKE3 of the pack's magic and record headers (every chunk's verified
content hash, codec and lengths, in order), so the payload bytes are not hashed a second time
after each chunk was verified. Two daemons writing the same pack use the same name; their files
can differ only in how a payload was compressed, with every record at the same offset and
decoding to the same hashed bytes, so either file serves the same index rows.
Nothing here takes file locks (the root may be shared over NFS); the database is the only truth.

Everything here blocks: the store runs it on its file thread pool.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import blake3

from smartsyncd.storage.durable import DEFAULT_OPS, AtomicFile, FileOps, ensure_dir

MAGIC = b"SSPACK1\n"
DEFAULT_VOLUME = "default"
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
    volume: str = DEFAULT_VOLUME


class UnknownVolume(OSError):
    """The database names a volume this daemon's ``[storage] volumes`` does not list."""


class PackStore:
    """Write-once pack files on named volumes; see the module docstring for the layout.
    ``root`` is the default volume's folder."""

    def __init__(self, root: str, ops: FileOps = DEFAULT_OPS, volumes: Mapping[str, str] | None = None) -> None:
        self.root = os.path.abspath(root)
        self._ops = ops
        self.volumes = {DEFAULT_VOLUME: self.root}
        self.volumes.update({name: os.path.abspath(path) for name, path in (volumes or {}).items()})
        self._placed: dict[int, str] = {}  # engagement id -> volume, as last learned

    def prepare(self) -> None:
        for folder in self.volumes.values():
            ensure_dir(folder, self._ops)

    def place(self, engagement_id: int, volume: str | None) -> None:
        """Remember that ``engagement_id`` lives on ``volume`` (None: the default)."""
        self._placed[int(engagement_id)] = volume or DEFAULT_VOLUME

    def volume_of(self, engagement_id: int) -> str:
        return self._placed.get(int(engagement_id), DEFAULT_VOLUME)

    def volume_root(self, volume: str) -> str:
        try:
            return self.volumes[volume]
        except KeyError:
            raise UnknownVolume(f"volume {volume!r} is not in [storage] volumes") from None

    def engagement_dir(self, engagement_id: int, volume: str | None = None) -> str:
        root = self.volume_root(volume or self.volume_of(engagement_id))
        return os.path.join(root, str(int(engagement_id)))

    def path_for(self, engagement_id: int, name: str, volume: str | None = None) -> str:
        if len(name) != 64 or any(c not in "0123456789abcdef" for c in name):
            raise ValueError(f"not a pack name: {name!r}")
        return os.path.join(self.engagement_dir(engagement_id, volume), name[:2], name + ".pack")

    def locate(self, engagement_id: int, name: str) -> str | None:
        """The volume holding this pack: the engagement's own first, then the others."""
        own = self.volume_of(engagement_id)
        for volume in sorted(self.volumes, key=lambda v: v != own):
            if os.path.isfile(self.path_for(engagement_id, name, volume)):
                return volume
        return None

    def write_pack(self, engagement_id: int, chunks: Sequence[tuple[str, int, int, bytes]]) -> WrittenPack:
        """Durably write (hash hex, codec, raw_size, payload) records as one pack file."""
        if not chunks:
            raise ValueError("a pack needs at least one chunk")
        writer = self.open_writer(engagement_id)
        try:
            writer.append(chunks)
            return writer.commit()
        finally:
            writer.abort()

    def open_writer(self, engagement_id: int, volume: str | None = None) -> PackWriter:
        """A pack written piece by piece (a streamed upload) on ``volume`` (default: where the
        engagement was last seen); see ``PackWriter``."""
        return PackWriter(self, engagement_id, volume or self.volume_of(engagement_id))

    def read_range(self, engagement_id: int, name: str, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset``; raise OSError if the pack is gone or too short."""
        return self.read_ranges(engagement_id, name, [(offset, size)])[0]

    def read_ranges(self, engagement_id: int, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read several (offset, size) ranges of one pack, opening it once, in the given order.
        A miss on the engagement's volume (moved meanwhile) is retried where the pack is now."""
        try:
            return self._read_ranges(self.path_for(engagement_id, name), name, ranges)
        except OSError:
            own = self.volume_of(engagement_id)
            found = self.locate(engagement_id, name)
            if found is None or found == own:
                raise
            self.place(engagement_id, found)
            return self._read_ranges(self.path_for(engagement_id, name, found), name, ranges)

    def _read_ranges(self, path: str, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
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

    def read_records(
        self, engagement_id: int, name: str, offset: int, expected: Sequence[tuple[bytes, int, int, int]]
    ) -> bytes | None:
        """The records stored back to back from ``offset`` (a record header's start), in one
        read, when every header there is ``expected``'s (hash, codec, raw_size, stored_size):
        the bytes are then the download's wire answer as is (docs/protocol.md). None when any
        header differs (a damaged or rewritten pack: the caller reads chunk by chunk)."""
        size = sum(_RECORD_HEADER.size + stored for _, _, _, stored in expected)
        data = self.read_range(engagement_id, name, offset, size)
        return data if records_match(data, expected) else None

    def exists(self, engagement_id: int, name: str) -> bool:
        return self.locate(engagement_id, name) is not None

    def probe(self) -> None:
        """Write, fsync and remove a small file in each volume (the storage health check). Each
        call has its own file: with one shared name, a concurrent call's unlink made another's
        fail (100 of 240 concurrent /healthz answered 503 on a healthy store)."""
        for root in self.volumes.values():
            probe = os.path.join(root, f".health-probe-{os.getpid()}-{uuid.uuid4().hex}")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)


def records_match(data: bytes, expected: Sequence[tuple[bytes, int, int, int]]) -> bool:
    """Whether ``data`` is exactly the records ``expected`` describes, header by header."""
    pos = 0
    for fields in expected:
        if len(data) - pos < _RECORD_HEADER.size or _RECORD_HEADER.unpack_from(data, pos) != fields:
            return False
        pos += _RECORD_HEADER.size + fields[3]
    return pos == len(data)


class PackWriter:
    """One pack being written as an upload streams in: ``append`` records as they are verified,
    then ``commit`` (fsync, rename to the content name, fsync the shard folder) or ``abort``
    (the temp file is removed). Blocking; use it from one file-pool thread at a time.

    The temp file lives in the engagement folder because the final shard is known only after
    hashing (same file system, so the rename is atomic). Durability of the pack needs the fsync
    of the file and of the folder that holds its final name; the engagement folder is not
    fsynced again: if a crash forgot the temp name's removal, a harmless orphan temp file is
    all that can come back, as after a crash before the rename.
    """

    def __init__(self, store: PackStore, engagement_id: int, volume: str = DEFAULT_VOLUME) -> None:
        self._store = store
        self._ops = store._ops
        self.engagement_id = int(engagement_id)
        self.volume = volume
        engagement_dir = store.engagement_dir(self.engagement_id, volume)
        ensure_dir(engagement_dir, self._ops)  # a stat when it exists; mkdir + fsync only once
        self._file = AtomicFile(engagement_dir, ops=self._ops)
        self._hasher = blake3.blake3()
        self._entries: list[PackEntry] = []
        self._offset = 0
        self._write(MAGIC)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hasher.update(data)
        self._offset += len(data)

    def _write_records(self, headers: list[bytes], parts: list[bytes | memoryview], size: int) -> None:
        self._file.write_many(parts)
        # the disk starts on these bytes while the next batch arrives: the fsync in ``commit``
        # (before the upload's answer) then waits for less (issue 15, s13: 5-7 ms -> ~2 ms
        # for 8 MiB on the bench VM)
        self._file.start_writeback(self._offset, size)
        self._hasher.update(b"".join(headers))  # the name covers the headers (module docstring)
        self._offset += size

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._offset

    def append(self, chunks: Iterable[tuple[str, int, int, bytes | memoryview]]) -> None:
        """Append (hash hex, codec, raw_size, payload) records (one ``writev`` per call, no
        joined copy of the payloads)."""
        headers: list[bytes] = []
        parts: list[bytes | memoryview] = []
        offset = self._offset
        for chunk_hash, codec, raw_size, payload in chunks:
            header = _RECORD_HEADER.pack(bytes.fromhex(chunk_hash), codec, raw_size, len(payload))
            headers.append(header)
            parts.append(header)
            parts.append(payload)
            offset += len(header)
            self._entries.append(PackEntry(chunk_hash, codec, raw_size, offset, len(payload)))
            offset += len(payload)
        if parts:
            self._write_records(headers, parts, offset - self._offset)

    def commit(self) -> WrittenPack:
        """Fsync, rename to ``<shard>/<name>.pack`` (the BLAKE3 of the magic and the record
        headers), fsync the shard folder."""
        if not self._entries:
            raise ValueError("a pack needs at least one chunk")
        name = self._hasher.hexdigest()
        final = self._store.path_for(self.engagement_id, name, self.volume)
        ensure_dir(os.path.dirname(final), self._ops)
        self._file.commit(final)
        return WrittenPack(name=name, size=self._offset, entries=tuple(self._entries), volume=self.volume)

    def abort(self) -> None:
        """Remove the temp file unless committed (safe to call more than once)."""
        self._file.abort()
