"""Crash-safe file writes: temp file, fsync, rename, fsync the folder.

A file written here is either absent or complete after a crash or power loss, never truncated:
the bytes go to a temp file in the destination folder (same file system, so the rename is
atomic), the file is fsynced and closed (both checked), renamed over the final name, and the
folder is fsynced so the rename itself survives. New folders are fsynced into their parents.

A failed fsync means the data may be gone (PostgreSQL's "fsyncgate"): it is never retried on the
same descriptor; the temp file is removed and the error propagates.

All OS calls go through a ``FileOps`` object so tests can record the order of the calls. These
functions block: callers on the reactor thread run them in a thread pool.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence

from smartsyncd.runtime import writeback

_TEMP_SUFFIX = ".tmp"
# Buffers per writev call (POSIX allows at least 16; Linux 1024).
_IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16))


class FileOps:
    """The OS calls the durable helpers make (a seam for tests that check their order)."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def writev(self, fd: int, buffers: Sequence[bytes | memoryview]) -> int:
        """Write several buffers in one call (no joined copy); may write fewer bytes."""
        if not hasattr(os, "writev"):  # Windows: one write per buffer
            return sum(self.write(fd, b) for b in buffers)
        return os.writev(fd, buffers)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Ask the kernel to start writing ``length`` bytes at ``offset`` to disk, without
        waiting (Linux; elsewhere nothing). Never a durability step: only ``fsync`` is; it
        leaves the final fsync less to write, so an upload's answer comes sooner."""
        writeback.start_writeback(fd, offset, length)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.mkdir(path, mode)


DEFAULT_OPS = FileOps()


def fsync_dir(path: str, ops: FileOps = DEFAULT_OPS) -> None:
    """Fsync a folder so that names created, renamed or removed in it are durable."""
    fd = ops.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def ensure_dir(path: str, ops: FileOps = DEFAULT_OPS, mode: int = 0o755) -> list[str]:
    """Create ``path`` and any missing parents, fsyncing each parent after a child is made.

    Returns the folders created (outermost first). An existing folder is left alone.
    """
    path = os.path.abspath(path)
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created: list[str] = []
    for folder in reversed(missing):
        try:
            ops.mkdir(folder, mode)
        except FileExistsError:
            # Another writer (thread or daemon) made it first; it is still ours to fsync.
            if not os.path.isdir(folder):
                raise
        fsync_dir(os.path.dirname(folder), ops)
        created.append(folder)
    return created


class AtomicFile:
    """A temp file in ``folder`` that becomes a named file only on ``commit``.

    Usage: ``f = AtomicFile(folder); f.write(...); f.commit(final_name)``; on any error call
    ``abort()`` (or use it as a context manager, which aborts unless committed).
    """

    def __init__(self, folder: str, *, mode: int = 0o644, ops: FileOps = DEFAULT_OPS) -> None:
        self.folder = folder
        self._ops = ops
        self.temp_path = os.path.join(folder, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        self._fd: int | None = ops.open(
            self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode
        )
        self.size = 0
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise ValueError("file already closed")
        view = memoryview(data)
        while view:
            written = self._ops.write(self._fd, view)
            view = view[written:]
            self.size += written

    def write_many(self, parts: Sequence[bytes | memoryview]) -> None:
        """``write`` each of ``parts`` in order, with one ``writev`` per ``_IOV_MAX`` of them
        (no joined copy of the pieces); a short write is finished piece by piece."""
        if self._fd is None:
            raise ValueError("file already closed")
        for start in range(0, len(parts), _IOV_MAX):
            group = parts[start : start + _IOV_MAX]
            written = self._ops.writev(self._fd, group)
            self.size += written
            for i, part in enumerate(group):
                if written >= len(part):
                    written -= len(part)
                    continue
                self.write(memoryview(part)[written:])
                for rest in group[i + 1 :]:
                    self.write(rest)
                break

    def start_writeback(self, offset: int, length: int) -> None:
        """Start writing the given range of what was written to disk (``FileOps.start_writeback``)."""
        if self._fd is not None and length > 0:
            self._ops.start_writeback(self._fd, offset, length)

    def commit(self, final_path: str) -> None:
        """Fsync, close, rename to ``final_path`` (in the same folder) and fsync the folder."""
        if self._fd is None:
            raise ValueError("file already closed")
        try:
            fd, self._fd = self._fd, None
            try:
                self._ops.fsync(fd)
            finally:
                self._ops.close(fd)
            self._ops.rename(self.temp_path, final_path)
        except BaseException:
            self._remove_temp()
            raise
        self._done = True
        fsync_dir(os.path.dirname(final_path) or ".", self._ops)

    def abort(self) -> None:
        if self._done:
            return
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self._ops.close(fd)
            except OSError:
                pass
        self._remove_temp()
        self._done = True

    def _remove_temp(self) -> None:
        try:
            self._ops.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def write_durably(
    path: str,
    data: bytes | Iterable[bytes],
    *,
    mode: int = 0o644,
    ops: FileOps = DEFAULT_OPS,
) -> None:
    """Write ``data`` (bytes or an iterable of byte strings) to ``path`` crash-safely.

    The folder must exist (see ``ensure_dir``). ``mode`` applies to the new file (for a key
    file use 0o600: the permission is set at creation, never widened later).
    """
    folder = os.path.dirname(os.path.abspath(path))
    with AtomicFile(folder, mode=mode, ops=ops) as f:
        if isinstance(data, bytes | bytearray | memoryview):
            f.write(data)
        else:
            for piece in data:
                f.write(piece)
        f.commit(os.path.abspath(path))


def is_temp_name(name: str) -> bool:
    """True for the names AtomicFile uses for its temp files (for cleanup and gc)."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)
