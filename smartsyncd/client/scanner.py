"""Scan a sync folder: which files exist, and the content id of each (blocking; run on a thread).

For each file the (size, mtime_ns, inode) triple is compared with the synced base; when equal
the file is reported unchanged with the base's content id *without opening it*, which is what
makes a no-op sync of thousands of files cheap. Otherwise the file is cut with FastCDC and each
chunk hashed. Files are opened only through the ``open_file`` hook (tests count the calls).

Unreadable folders make the scan *incomplete*: the planner then plans no deletes, because a
file we could not see is unknown, never deleted. Names that break the path rules, symlinks,
special files, case twins and files that keep changing while read are skipped with a reason.
A decomposed (NFD) name, as macOS stores some, is reported under its NFC form (the name on the
wire) and its local spelling kept in ``spellings`` (wire path -> local path, files and
folders): every later access to the file goes through ``local_name``. Two names of one folder
that are equal after NFC are never merged: one is skipped.
Paths the ignore rules name (built-in defaults plus the copy's ``.smartsyncignore``, read afresh
each scan) are listed in ``ignored`` and not read; ignored folders are not walked.

Folders travel through their files; a folder holding no file (nor folder) that syncs, and a
folder synced as a folder entry, is reported as a folder entry too (``FOLDER_CONTENT``, size 0:
docs/protocol.md "Folder entries"), one spelling per fold key like files.
"""

from __future__ import annotations

import os
import stat as statmod
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from smartsyncd.client import osfs
from smartsyncd.client.localfs import TEMP_PREFIX, same_stat
from smartsyncd.client.osfs import is_readonly, open_fd, stat_path
from smartsyncd.client.state import STATE_DIR, FileRecord
from smartsyncd.core.chunking import MIN_CHUNK, chunk_hash, make_chunker
from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.ignore import IGNORE_FILE, MAX_RULES_BYTES, EngagementRules, IgnoreRules
from smartsyncd.core.manifest import make_manifest, one_chunk_manifest
from smartsyncd.core.model import FOLDER_CONTENT, ChunkRef, is_folder
from smartsyncd.core.packed import PackedBuilder
from smartsyncd.core.paths import ancestors, fold_key, normalize_path
from smartsyncd.core.planner import LocalEntry

OpenFile = Callable[[str], BinaryIO]
RECENT_BYTES = 64 * 1024 * 1024


def _open_binary(path: str) -> BinaryIO:
    return osfs.open_binary(path)


@dataclass(frozen=True, kw_only=True)
class ScannedFile(LocalEntry):
    """A file on disk: content id and size (planner view), plus stat and chunks.

    ``chunks`` is None for a file found unchanged (take them from the base row);
    ``hashed`` says the file was read this scan.
    """

    path: str
    mtime_ns: int
    inode: int
    chunks: Sequence[ChunkRef] | None = None
    hashed: bool = False
    readonly: bool = False  # the read-only attribute (``osfs.is_readonly``)


@dataclass
class ScanResult:
    entries: dict[str, ScannedFile] = field(default_factory=dict)
    complete: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # unreadable folders/files
    files: list[str] = field(default_factory=list)  # every regular file seen (case twins too)
    # paths whose entry the sync already recorded as synced while the scan went on (early
    # commits): their state rows are fresh
    recorded: set[str] = field(default_factory=set)
    rules: IgnoreRules = field(default_factory=IgnoreRules.parse)
    ignored: list[str] = field(default_factory=list)  # folders end with "/"
    # wire (NFC) path -> local spelling, for the files and folders whose names differ
    spellings: dict[str, str] = field(default_factory=dict)
    folders: list[tuple[str, os.stat_result]] = field(default_factory=list)  # every folder walked
    unlisted: set[str] = field(default_factory=set)  # folders that could not be listed

    @property
    def changed(self) -> list[str]:
        return [p for p, e in self.entries.items() if e.hashed]


class FileChanging(Exception):
    """The file changed while it was read."""


class Scanner:
    """Scans ``root`` against the synced base rows."""

    def __init__(self, root: Path, *, open_file: OpenFile = _open_binary, retries: int = 1) -> None:
        self.root = root
        self._prefix = os.path.join(os.fspath(root), "")  # root + "/" for joining fast
        self.open_file = open_file
        self.retries = retries
        # bytes of small files read by the last scan, by chunk hash (at most RECENT_BYTES):
        # an upload right after the scan takes them from here instead of reading and
        # hashing every small file a second time
        self.recent: dict[str, bytes] = {}
        self._recent_bytes = 0
        # the local spelling of each wire path whose name is decomposed here (from the last
        # walk, or the state database before the first one)
        self.spellings: dict[str, str] = {}
        # the engagement's server-published rules, set at the start of each sync
        self.engagement_rules: EngagementRules | None = None

    def local_name(self, path: str) -> str:
        """The path on disk for the wire path ``path`` (its folders' local spellings too)."""
        if not self.spellings:
            return path
        found = self.spellings.get(path)
        if found is not None:
            return found
        for folder in reversed(ancestors(path)):
            found = self.spellings.get(folder)
            if found is not None:
                return found + path[len(folder):]
        return path

    # -- whole-folder scan ---------------------------------------------------------------------

    def scan(self, base: Mapping[str, FileRecord]) -> ScanResult:
        job = self.begin(base)
        job.step(len(job.todo))
        return job.result

    def begin(self, base: Mapping[str, FileRecord]) -> ScanJob:
        """Walk the folder (blocking); the files are examined by ``ScanJob.step``, so a
        caller can start uploading what the first steps read while later steps run."""
        errors: list[tuple[str, str]] = []
        rules = load_rules(self.root, errors).with_engagement(self.engagement_rules)
        result = ScanResult(rules=rules, errors=errors)
        self.forget_recent()
        found: list[tuple[str, os.stat_result]] = []
        self._walk(self.root, "", found, result, base)
        self.spellings = result.spellings
        result.files = [path for path, _ in found]
        kept = self._drop_case_twins(found, base, result)
        _add_folder_entries(result, kept, base)
        return ScanJob(self, base, result, kept)

    def _walk(
        self, folder: Path, prefix: str, found: list[tuple[str, os.stat_result]],
        result: ScanResult, known: Mapping[str, object] | None = None,
        local_prefix: str | None = None,
    ) -> None:
        """Walk ``folder``: ``prefix`` is its wire path, ``local_prefix`` its spelling on
        disk when that differs (a decomposed folder name)."""
        try:
            with osfs.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            result.complete = False
            result.errors.append((prefix or ".", f"cannot list folder: {e.strerror}"))
            result.unlisted.add(prefix[:-1])  # unknown inside: never an empty folder
            return
        losers = self._normalization_twins(entries, prefix, local_prefix or prefix)
        for entry in entries:
            name = entry.name
            if not prefix and name == STATE_DIR:
                continue
            if name.startswith(TEMP_PREFIX):
                continue
            rel = f"{prefix}{name}"
            local = f"{local_prefix}{name}" if local_prefix is not None else rel
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                result.complete = False
                result.errors.append((local, f"cannot stat: {e.strerror}"))
                continue
            if statmod.S_ISLNK(st.st_mode):
                result.skipped.append((local, "symbolic link (not synced)"))
                continue
            is_dir = statmod.S_ISDIR(st.st_mode)
            if not name.isascii():
                rel = unicodedata.normalize("NFC", rel)  # checked by normalize_path below
            if result.rules.ignores_folder(rel) if is_dir else result.rules.ignores(rel):
                result.ignored.append(rel + "/" if is_dir else rel)
                continue
            if name in losers:
                result.skipped.append((local, losers[name]))
                continue
            if known is None or rel not in known:  # a synced path was valid already
                try:
                    normalize_path(rel)
                except InvalidPath as e:
                    result.skipped.append((local, e.message))
                    continue
            if local != rel:
                result.spellings[rel] = local
            if is_dir:
                result.folders.append((rel, st))
                self._walk(Path(entry.path), rel + "/", found, result, known,
                           local + "/" if local != rel else None)
            elif statmod.S_ISREG(st.st_mode):
                found.append((rel, st))
            else:
                result.skipped.append((local, "not a regular file (not synced)"))

    def _normalization_twins(
        self, entries: list[os.DirEntry[str]], prefix: str, local_prefix: str
    ) -> dict[str, str]:
        """Names of one folder that are the same name after NFC (both forms can exist on
        Linux): one is kept (the spelling synced before, else the NFC one), the others map
        to the reason they are skipped."""
        if all(entry.name.isascii() for entry in entries):
            return {}
        groups: dict[str, list[str]] = {}
        for entry in entries:
            if not entry.name.isascii():
                nfc = unicodedata.normalize("NFC", entry.name)
                groups.setdefault(nfc, []).append(entry.name)
        losers: dict[str, str] = {}
        for nfc, names in groups.items():
            if len(names) < 2:
                continue
            synced = self.spellings.get(prefix + nfc, prefix + nfc)
            names.sort(key=lambda n: (local_prefix + n != synced, n != nfc, n))
            for name in names[1:]:
                losers[name] = (f"same name as {local_prefix + names[0]!r} after Unicode "
                                "normalization (NFC); rename one of them to sync it")
        return losers

    @staticmethod
    def _drop_case_twins(
        found: list[tuple[str, os.stat_result]], base: Mapping[str, FileRecord],
        result: ScanResult,
    ) -> list[tuple[str, os.stat_result]]:
        """Keep one name per fold key (the synced one, else the first); skip the others: the
        server would refuse the whole batch with path_clash."""
        by_key: dict[str, list[tuple[str, os.stat_result]]] = {}
        for item in found:
            path = item[0]
            # paths here are NFC already; for ASCII casefold is lower()
            key = path.lower() if path.isascii() else fold_key(path)
            by_key.setdefault(key, []).append(item)
        kept: list[tuple[str, os.stat_result]] = []
        for group in by_key.values():
            if len(group) == 1:
                kept.append(group[0])
                continue
            group.sort(key=lambda item: (item[0] not in base, item[0]))
            kept.append(group[0])
            for path, _ in group[1:]:
                result.skipped.append((path, f"differs from {group[0][0]!r} only in case"))
        return kept

    # -- single files ----------------------------------------------------------------------

    def check(self, path: str, record: FileRecord | None) -> ScannedFile | None:
        """Look at one path now: None if it does not exist; raises OSError if unreadable
        and ``FileChanging`` if it keeps changing."""
        full = self.root / self.local_name(path)
        try:
            st = stat_path(full, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if statmod.S_ISDIR(st.st_mode):
            return folder_entry(path, st)
        if not statmod.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if record is not None and same_stat(st, record.size, record.mtime_ns, record.inode):
            return _unchanged(path, st, record)
        try:
            return self._hash(path, st)
        except (FileNotFoundError, NotADirectoryError):
            # gone between the stat and the read (deleted or renamed meanwhile; or a stale
            # name cached for another spelling on a case-insensitive FUSE mount): absent only
            # if a fresh look agrees, else treated as a file being changed (never a delete)
            try:
                stat_path(full, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            raise FileChanging(path) from None

    def _examine(
        self, path: str, st: os.stat_result, record: FileRecord | None, result: ScanResult
    ) -> bytes | None:
        """Add the file's entry to ``result``; returns the bytes of a small file read now."""
        if record is not None and same_stat(st, record.size, record.mtime_ns, record.inode):
            result.entries[path] = _unchanged(path, st, record)
            return None
        try:
            result.entries[path], data = self._read(path, st)
            return data
        except FileChanging:
            result.skipped.append((path, "changing while being read; retried next sync"))
            if record is not None:
                # we know it exists: report it as the base so nothing reads it as deleted
                result.entries[path] = _as_synced(path, record)
        except OSError as e:
            # e.g. a Windows sharing violation (open in another program) or no permission: the
            # walk saw the file, so it is not deleted; it is reported and read next sync
            result.errors.append((path, f"cannot read now ({e.strerror or e}); retried next sync"))
            if record is not None:
                result.entries[path] = _as_synced(path, record)
        return None

    def _hash(self, path: str, st: os.stat_result) -> ScannedFile:
        return self._read(path, st)[0]

    def _read(self, path: str, st: os.stat_result) -> tuple[ScannedFile, bytes | None]:
        """Hash the file; also returns the bytes of a small (one-chunk) file.

        ``st`` is the walk's stat of the path: a small file is read in one pass with no
        file object (most of the cost for thousands of small files) and kept if the opened
        file's stat after the read equals it (same inode, size and mtime: the bytes read are
        the file the walk saw). Else, and for larger files, the general path below reads it
        (through the ``open_file`` hook) with its own before/after check."""
        full = self._prefix + self.local_name(path)
        attempts = self.retries + 1
        if 0 < st.st_size <= MIN_CHUNK and self.open_file is _open_binary:
            found = _read_small(path, full, st)
            if found is not None:
                entry, small = found
                self._remember(entry.chunks[0].hash if entry.chunks else "", small)
                return found
            attempts -= 1  # changed since the walk: that was the first attempt
        for _attempt in range(attempts):
            chunks = PackedBuilder()  # 40 bytes a chunk, not a ChunkRef: a 20 GB file is 600,000
            data: bytes | None = None
            with self.open_file(full) as f:
                before = os.fstat(f.fileno())
                if 0 < before.st_size <= MIN_CHUNK:
                    # FastCDC never cuts below its minimum: a small file is one chunk (no
                    # chunker to build: most of the cost for thousands of small files)
                    data = f.read(MIN_CHUNK + 1)
                    chunks.append(ChunkRef(chunk_hash(data), len(data)))
                    self._remember(chunks[-1].hash, data)
                elif before.st_size:
                    for chunk in make_chunker().cut_stream(f):
                        chunks.append(ChunkRef(chunk_hash(chunk.data), chunk.length))
                after = stat_path(full, follow_symlinks=False)
            if (
                same_stat(after, before.st_size, before.st_mtime_ns, before.st_ino)
                and sum(c.size for c in chunks) == before.st_size
            ):
                manifest = make_manifest(chunks)
                return ScannedFile(
                    content=manifest.content, size=manifest.size, path=path,
                    mtime_ns=before.st_mtime_ns, inode=before.st_ino,
                    chunks=manifest.chunks, hashed=True, readonly=is_readonly(before),
                ), data
        raise FileChanging(path)

    def _remember(self, digest: str, data: bytes) -> None:
        if self._recent_bytes + len(data) <= RECENT_BYTES:
            self.recent[digest] = data
            self._recent_bytes += len(data)

    def forget_recent(self) -> None:
        self.recent = {}
        self._recent_bytes = 0

    # -- cheap change detection (watch) -----------------------------------------------------

    def signature(self) -> frozenset[tuple[str, int, int, int]]:
        """(path, size, mtime_ns, inode) of every file: compare two to see a local change
        without reading any file."""
        found: list[tuple[str, os.stat_result]] = []
        walked = ScanResult()
        self._walk(self.root, "", found, walked)
        return frozenset(
            (p, st.st_size, st.st_mtime_ns, st.st_ino) for p, st in found + walked.folders
        )


class ScanJob:
    """A scan whose files are examined in steps (``Scanner.begin``); each step is blocking."""

    def __init__(
        self, scanner: Scanner, base: Mapping[str, FileRecord], result: ScanResult,
        todo: list[tuple[str, os.stat_result]],
    ) -> None:
        self.scanner = scanner
        self.base = base
        self.result = result
        self.todo = todo
        self.position = 0
        # new files (no base row) larger than one chunk are left out of ``step`` and listed
        # here, for the caller to read once while uploading them (client/newfiles.py)
        self.defer_new = False
        self.deferred: list[tuple[str, os.stat_result]] = []

    @property
    def done(self) -> bool:
        return self.position >= len(self.todo)

    def step(self, count: int) -> list[tuple[ScannedFile, bytes]]:
        """Examine the next ``count`` files; returns the small files read in this step (one
        chunk each) with their bytes, as the scan hashed them."""
        read: list[tuple[ScannedFile, bytes]] = []
        end = min(len(self.todo), self.position + count)
        entries = self.result.entries
        for path, st in self.todo[self.position:end]:
            record = self.base.get(path)
            if self.defer_new and record is None and st.st_size > MIN_CHUNK:
                self.deferred.append((path, st))
                continue
            data = self.scanner._examine(path, st, record, self.result)
            if data is not None:
                read.append((entries[path], data))
        self.position = end
        return read

    def take_deferred(self) -> list[tuple[str, os.stat_result]]:
        """The new large files the steps so far left out (``defer_new``), once."""
        taken, self.deferred = self.deferred, []
        return taken

    def examine(self, path: str, st: os.stat_result) -> None:
        """Look at one file as ``step`` would (blocking): a deferred file that could not be
        streamed is read here the usual way, with its retries and reasons."""
        self.scanner._examine(path, st, self.base.get(path), self.result)


def load_rules(root: Path, errors: list[tuple[str, str]]) -> IgnoreRules:
    """The built-in rules plus ``root/.smartsyncignore`` (blocking). A file that cannot be read
    or is too large adds an error and only the built-in rules apply; bad lines are reported."""
    path = root / IGNORE_FILE
    try:
        with osfs.open_binary(path) as f:
            data = f.read(MAX_RULES_BYTES + 1)
    except FileNotFoundError:
        return IgnoreRules.parse()
    except OSError as e:
        errors.append((IGNORE_FILE, f"cannot read the ignore rules: {e.strerror}"))
        return IgnoreRules.parse()
    if len(data) > MAX_RULES_BYTES:
        errors.append((IGNORE_FILE, f"over {MAX_RULES_BYTES} bytes; only the built-in rules apply"))
        return IgnoreRules.parse()
    rules = IgnoreRules.parse(data.decode("utf-8", errors="replace"))
    errors.extend((IGNORE_FILE, f"line {n}: {why}") for n, why in rules.problems)
    return rules


def _read_small(
    path: str, full: str, st: os.stat_result
) -> tuple[ScannedFile, bytes] | None:
    """Read and hash a file the walk saw as one chunk (``st``); None if the file opened is not
    that file any more (replaced, written or resized since)."""
    fd = open_fd(full, os.O_RDONLY)
    try:
        data = os.read(fd, MIN_CHUNK + 1)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    size = st.st_size
    if (
        len(data) != size or after.st_size != size or after.st_mtime_ns != st.st_mtime_ns
        or after.st_ino != st.st_ino or after.st_dev != st.st_dev
    ):
        return None
    manifest = one_chunk_manifest(data)
    return ScannedFile(
        content=manifest.content, size=size, path=path, mtime_ns=st.st_mtime_ns,
        inode=st.st_ino, chunks=manifest.chunks, hashed=True, readonly=is_readonly(st),
    ), data



def _as_synced(path: str, record: FileRecord) -> ScannedFile:
    """A file that exists but could not be read now, as its synced version: with the synced
    stat, so that recording it never hides a change from the next scan."""
    return ScannedFile(
        content=record.content, size=record.size, path=path, mtime_ns=record.mtime_ns,
        inode=record.inode, chunks=record.chunks, hashed=False,
    )


def _unchanged(path: str, st: os.stat_result, record: FileRecord) -> ScannedFile:
    return ScannedFile(
        content=record.content, size=record.size, path=path, mtime_ns=st.st_mtime_ns,
        inode=st.st_ino, chunks=record.chunks, hashed=False, readonly=is_readonly(st),
    )


def folder_entry(path: str, st: os.stat_result) -> ScannedFile:
    """A folder as the planner sees a folder entry (no content read, no chunks)."""
    return ScannedFile(
        content=FOLDER_CONTENT, size=0, path=path, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
        chunks=(),
    )


def _add_folder_entries(
    result: ScanResult, files: list[tuple[str, os.stat_result]], base: Mapping[str, FileRecord]
) -> None:
    """Report as folder entries the walked folders that hold nothing that syncs (no file kept,
    no folder walked), and those synced as folder entries; a folder whose name case-folds like
    a file or another folder kept is skipped (the server would refuse the batch)."""
    holding: set[str] = set(result.unlisted)
    for path, _ in files + result.folders:
        parent = path.rpartition("/")[0]
        while parent and parent not in holding:
            holding.add(parent)
            parent = parent.rpartition("/")[0]
    taken = {fold_key(path): path for path, _ in files}
    taken.update((fold_key(folder), folder) for folder in holding)
    wanted = [
        (path, st) for path, st in result.folders
        if path not in holding or (path in base and is_folder(base[path].content))
    ]
    wanted.sort(key=lambda item: (item[0] not in base, item[0]))  # the synced spelling first
    for path, st in wanted:
        key = fold_key(path)
        if taken.get(key, path) != path:
            result.skipped.append((path, f"differs from {taken[key]!r} only in case"))
            continue
        taken[key] = path
        result.entries[path] = folder_entry(path, st)
