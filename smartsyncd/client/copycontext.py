"""What every part of the sync engine shares about one local copy (``CopyContext``).

The scan, push, early upload, pull, watch and server-contact parts (``client/scan.py`` ...)
each take this object, never ``SyncCopy`` itself: the folder, its state database, how
blocking work leaves the reactor, the scanner, the clock and the copy's settings, plus the
few file operations more than one part performs (conflict names, base copies, guarded moves).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smartsyncd.client import osfs
from smartsyncd.client.basecache import BaseCache
from smartsyncd.client.localfs import move_no_replace, same_stat
from smartsyncd.client.scanner import ScannedFile, Scanner
from smartsyncd.client.state import ClientState, FileRecord
from smartsyncd.core.conflicts import conflict_name
from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.model import ChunkRef
from smartsyncd.core.paths import normalize_path
from smartsyncd.runtime.blocking import RunBlocking  # deferToThread; synchronous in tests

log = Logger(namespace="smartsyncd.client.engine")

WINDOW_BYTES = 8 * 1024 * 1024  # assemble/fetch/upload in windows of this many raw bytes
# A sync's scan examines this many files per blocking step; between steps the chunks of new
# small files read so far start uploading (``client/early.py``), so scan and upload overlap.
SCAN_STEP = 256
# ... and once this many new files have their chunks on the server, they are committed as one
# batch while the scan goes on (the last ones go with the push, after the scan)
EARLY_COMMIT_FILES = 2000
BASE_MIN_FILE = 64 * 1024  # smaller files are cheap to send whole: no base copy
# ...unless this copy just uploaded an edit of it: a file edited once is likely edited again,
# and its next edit then travels as a delta of a few hundred bytes, not the whole file
EDITED_BASE_MIN_FILE = 2 * 1024
# an mtime this close to "now" may not change on a quick same-size edit (coarse file system
# timestamps): such files are re-read once on the next scan
RACY_NS = 1_000_000_000


@dataclass
class CopyContext:
    """One copy's folder, state and settings, shared by the engine's parts."""

    directory: Path
    state: ClientState
    run: RunBlocking
    scanner: Scanner
    clock: IReactorTime
    user: str
    engagement: str
    copy_id: str
    window_bytes: int = WINDOW_BYTES
    early_commit_files: int = EARLY_COMMIT_FILES
    base_cache: BaseCache = field(init=False)
    # probed once per open (casefold.py): the folder may be a different volume next time
    case_insensitive: bool | None = None
    # this sync's own commit was the log's head (push.own_head): the pull has nothing to ask
    pulled_through: int | None = None

    def __post_init__(self) -> None:
        self.base_cache = BaseCache(self.directory / ".smartsync" / "base")

    async def last_seq(self) -> int:
        seq: int = await self.run(lambda: self.state.last_seq)
        return seq

    def seconds(self) -> float:
        return self.clock.seconds()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.seconds(), UTC)

    def cache_mtime(self, mtime_ns: int) -> int:
        """The mtime to keep in the stat cache, or -1 when it is too recent to trust: a
        same-size edit within the file system's timestamp granularity would keep the same
        mtime ("racily clean", as git calls it), so such a file is re-read once next time."""
        now_ns = int(self.seconds() * 1_000_000_000)
        return mtime_ns if now_ns - mtime_ns >= RACY_NS else -1

    def record(
        self, entry: ScannedFile, seq: int, at: str, chunks: Sequence[ChunkRef] | None
    ) -> FileRecord:
        """The state row of ``entry`` synced as ``seq`` at path ``at``."""
        return FileRecord(
            path=at, seq=seq, content=entry.content, size=entry.size,
            mtime_ns=self.cache_mtime(entry.mtime_ns), inode=entry.inode, chunks=chunks,
        )

    def local(self, path: str) -> Path:
        """Where the wire path ``path`` is on disk: under its local spelling when this copy
        made it with a decomposed (NFD) name (``Scanner.local_name``)."""
        return self.directory / self.scanner.local_name(path)

    # -- blocking file operations (run through ``run``) ---------------------------------------

    def taken(self, candidate: str) -> bool:
        return osfs.lexists(self.local(candidate)) or self.state.get(candidate) is not None

    def conflict_target(self, path: str) -> str:
        return conflict_name(path, self.user, self.now(), self.taken)

    def keep_bases(
        self, items: Iterable[tuple[str, str, int]], min_size: int = BASE_MIN_FILE
    ) -> None:
        """Keep base copies of synced versions of at least ``min_size`` bytes for the next
        delta (an optimization only: a failure leaves no copy and the next edit travels as
        plain chunks)."""
        for path, content, size in items:
            if size >= min_size:
                try:
                    self.base_cache.keep(self.local(path), content, size)
                except OSError as e:
                    log.warn("no base copy of {path}: {why}", path=path, why=str(e))

    def prune_bases(self) -> None:
        if osfs.is_dir(self.base_cache.root) and any(osfs.list_names(self.base_cache.root)):
            self.base_cache.prune({r.content for r in self.state.all_files().values()})

    def move_if_unchanged(self, path: str, target: str, entry: ScannedFile) -> bool:
        source = self.local(path)
        try:
            st = osfs.stat_path(source, follow_symlinks=False)
        except OSError:
            return False
        if not same_stat(st, entry.size, entry.mtime_ns, entry.inode):
            return False  # edited again: the pull will make a local conflict copy instead
        try:
            move_no_replace(source, self.local(target))
        except OSError:
            return False
        return True


def offsets(chunks: Iterable[ChunkRef]) -> Iterator[tuple[ChunkRef, int]]:
    """Each chunk with its offset in the file."""
    offset = 0
    for chunk in chunks:
        yield chunk, offset
        offset += chunk.size


def remote_path_ok(path: str) -> bool:
    """A path from the server must be a valid relative path before it touches the disk."""
    try:
        return normalize_path(path) == path
    except InvalidPath:
        return False
