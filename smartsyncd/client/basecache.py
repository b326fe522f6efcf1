"""Compressed copies of synced versions, so a modified file can travel as a delta against them.

The server keeps every version; the client only has the current file on disk, edited in place.
To send an edit as a zstd delta against the previous version (core/chunkstream.py codec 2), the
client keeps a copy of the last synced version of compressible files in
``DIR/.smartsync/base/<content id>.zst`` (zstd level 1: a 64 MiB CSV costs about 20 MiB).

Limits: only files of at most ``MAX_FILE`` bytes whose sample compresses (already-compressed
files gain nothing from a delta that CDC dedup does not already give), and the decompressed copy
is capped at its recorded size. A copy is written only after its bytes were re-chunked and
found to have the expected content id, so a copy never lies about its version; if it did, the
server would refuse the delta (hash check) and nothing would be stored. Entries whose content
is no longer the base of any file are pruned after each sync.

Everything here blocks (the engine runs it on a thread).
"""

from __future__ import annotations

from pathlib import Path

import zstandard

from smartsyncd.client import osfs
from smartsyncd.client.localfs import fsync_dir
from smartsyncd.client.osfs import sync_file
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.manifest import content_id

MAX_FILE = 128 * 1024 * 1024
SAMPLE = 64 * 1024
_SUFFIX = ".zst"


def worth_keeping(path: Path, size: int) -> bool:
    """Small enough, and a sample from the middle compresses to under 3/4 of its size."""
    if not 0 < size <= MAX_FILE:
        return False
    try:
        with osfs.open_binary(path) as f:
            f.seek(max(0, size // 2 - SAMPLE // 2))
            sample = f.read(SAMPLE)
    except OSError:
        return False
    return bool(sample) and len(zstandard.ZstdCompressor(level=1).compress(sample)) * 4 < len(sample) * 3


class BaseCache:
    """The folder of base copies of one sync copy."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, content: str) -> Path:
        if len(content) != 64 or any(c not in "0123456789abcdef" for c in content):
            raise ValueError(f"not a content id: {content!r}")
        return self.root / (content + _SUFFIX)

    def has(self, content: str) -> bool:
        return osfs.is_file(self._path(content))

    def keep(self, path: Path, content: str, size: int) -> bool:
        """Store the file at ``path`` as the base copy of ``content`` if it is worth it and
        still has that content. Returns whether a copy exists afterwards."""
        if self.has(content):
            return True
        if not worth_keeping(path, size):
            return False
        try:
            data = osfs.read_bytes(path)
        except OSError:
            return False
        if len(data) != size or content_id([ref for ref, _ in chunk_buffer(data)]) != content:
            return False  # changed since it was synced: no copy rather than a wrong one
        osfs.make_folders(self.root, exist_ok=True)
        target = self._path(content)
        temp = target.with_suffix(".tmp")
        with osfs.open_binary(temp, "wb") as f:
            f.write(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data))
            f.flush()
            sync_file(f.fileno())
        osfs.replace(temp, target)
        fsync_dir(self.root)
        return True

    def load(self, content: str, size: int) -> bytes | None:
        """The bytes of ``content`` (``size`` bytes), or None when there is no usable copy."""
        try:
            frame = osfs.read_bytes(self._path(content))
        except OSError:
            return None
        try:
            data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
        except zstandard.ZstdError:
            return None
        return data if len(data) == size else None

    def prune(self, keep: set[str]) -> None:
        """Remove copies whose content is not in ``keep``."""
        try:
            names = osfs.list_names(self.root)
        except OSError:
            return
        for name in names:
            if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)] not in keep:
                try:
                    osfs.unlink(self.root / name)
                except OSError:
                    pass
