"""A new large file read once during the scan (issue 15): cut, hashed and handed to the early
upload (client/early.py) a window at a time, instead of a hashing pass in the scan and a
second read and hash in the push.

``FileStream`` is blocking (run each call in a thread, one at a time). The bytes it hands out
are the bytes it hashed, so what travels is what is named. The file's entry comes only from
``finish``, after the whole file was read and its stat is what it was when opened (the check
``Scanner._read`` makes): a file that changed while read raises ``FileChanging`` and is never
committed from these chunks (the caller lets the scan read it again the usual way; chunks
already sent are only unreferenced bytes on the server).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

from pyfastcdc import Chunk

from smartsyncd.client.localfs import same_stat
from smartsyncd.client.osfs import is_readonly, stat_path
from smartsyncd.client.scanner import FileChanging, ScannedFile, Scanner
from smartsyncd.core.chunking import chunk_hash, make_chunker
from smartsyncd.core.manifest import make_manifest
from smartsyncd.core.model import ChunkRef
from smartsyncd.core.packed import PackedBuilder

StreamedChunk = tuple[str, bytes]  # (hash, raw bytes)


class FileStream:
    """One new file, read front to back in pieces of about ``limit`` bytes (``read``)."""

    def __init__(self, scanner: Scanner, path: str) -> None:
        self.path = path
        self._full = os.path.join(os.fspath(scanner.root), scanner.local_name(path))
        self._open = scanner.open_file
        self._file: BinaryIO | None = None
        self._before: os.stat_result | None = None
        self._cuts: Iterator[Chunk] | None = None
        self.refs = PackedBuilder()  # 40 bytes a chunk, as the scan keeps them
        self.read_bytes = 0
        self.done = False

    def read(self, limit: int) -> list[StreamedChunk]:
        """The next chunks, about ``limit`` raw bytes of them (blocking); ``done`` after
        the last. Raises OSError when the file cannot be opened or read."""
        if self._cuts is None:
            self._file = self._open(self._full)
            self._before = os.fstat(self._file.fileno())
            self._cuts = iter(make_chunker().cut_stream(self._file))
        out: list[StreamedChunk] = []
        size = 0
        while size < limit:
            chunk = next(self._cuts, None)
            if chunk is None:
                self.done = True
                break
            data = bytes(chunk.data)  # the chunker reuses its buffer
            digest = chunk_hash(data)
            self.refs.append(ChunkRef(digest, len(data)))
            out.append((digest, data))
            size += len(data)
        self.read_bytes += size
        return out

    def finish(self) -> ScannedFile:
        """The file's entry, once every chunk was read (blocking); ``FileChanging`` when the
        file changed while it was read (its stat moved, or it did not end where it began)."""
        assert self.done and self._before is not None
        before = self._before
        self.close()
        after = stat_path(self._full, follow_symlinks=False)
        if not (
            same_stat(after, before.st_size, before.st_mtime_ns, before.st_ino)
            and self.read_bytes == before.st_size
        ):
            raise FileChanging(self.path)
        manifest = make_manifest(self.refs)
        return ScannedFile(
            content=manifest.content, size=manifest.size, path=self.path,
            mtime_ns=before.st_mtime_ns, inode=before.st_ino, chunks=manifest.chunks,
            hashed=True, readonly=is_readonly(before),
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._cuts = None

    def __enter__(self) -> FileStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
