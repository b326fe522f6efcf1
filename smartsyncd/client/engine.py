"""The client's sync engine: one local copy of an engagement (``SyncCopy``).

``clone`` materializes the server's snapshot; ``sync`` pushes local changes then pulls remote
ones; ``status`` says what would move; ``watch`` syncs continuously. Decisions come from the
pure planner (core/planner.py); this module does the I/O around it:

- push: scan, plan, ask the server which chunks it lacks and upload only those, then commit with
  a batch key persisted *before* sending (a retry after a lost answer reuses it). Modified files
  travel as a manifest delta against their base; content the server already has (a rename)
  travels as nothing but its id. A first sync of many small files overlaps the phases: the
  scan runs in steps, chunks of new files upload between them, and new files whose chunks the
  server confirmed commit in batches of ``EARLY_COMMIT_FILES`` meanwhile (``_EarlyUpload``;
  each batch atomic, refusals leave the files to the push).
- pull: changes since ``last_seq`` page by page; each file is re-checked against its base right
  before it is replaced, and an unpushed local edit is moved to a conflict copy first. New
  versions are assembled in a temp file from local chunks where possible (verified by hash) and
  fetched chunks otherwise, fsynced and renamed. ``last_seq`` moves only after the files are
  durable.
- errors are never deletions: a missing marker or folder stops the sync, an unreadable file is
  "unknown", and an exception leaves files as they are.

Blocking work (scanning, hashing, file writes, SQLite) runs through ``run_blocking`` (a thread).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import socket
import stat
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from twisted.internet.defer import Deferred, race
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smartsyncd.client import reconcile
from smartsyncd.client.basecache import BaseCache
from smartsyncd.client.casefold import (
    match_folders,
    probe_case_insensitive,
    rename_case,
    stored_spelling,
)
from smartsyncd.client.copylock import CopyLock, begin_sync, end_sync
from smartsyncd.client.errors import (
    HistoryDiverged,
    NetworkError,
    ProtocolError,
    ServerRefused,
    Unverifiable,
    UsageError,
)
from smartsyncd.client.http import DeltaHint
from smartsyncd.client.localfs import (
    discard_temp,
    finish_temp,
    fsync_dir,
    make_parents,
    move_no_replace,
    open_temp,
    read_chunk,
    read_chunks,
    remove_file,
    same_stat,
)
from smartsyncd.client.nofollow import LinkInPath, ensure_folder
from smartsyncd.client.progress import NullProgress, Progress
from smartsyncd.client.scanner import FileChanging, ScannedFile, Scanner, ScanResult
from smartsyncd.client.state import ClientState, CopyMeta, FileRecord, StateError
from smartsyncd.core.chunkstream import aligned_range
from smartsyncd.core.conflicts import conflict_name
from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.locks import covers
from smartsyncd.core.manifest import chunks_to_json, make_delta
from smartsyncd.core.model import Change, ChunkRef, FileState, Manifest
from smartsyncd.core.paths import fold_key, normalize_path
from smartsyncd.core.planner import CaseRename, LocalEntry, Plan, PullWrite, plan
from smartsyncd.runtime.gcthreshold import raised_gen0_threshold

log = Logger()

RunBlocking = Callable[..., Awaitable[Any]]
WINDOW_BYTES = 8 * 1024 * 1024  # assemble/fetch/upload in windows of this many raw bytes
# Uploads go in requests of at most this many raw bytes, several on the wire at once: the
# server verifies and stores one while the next arrives and the client reads the one after.
UPLOAD_WINDOW_BYTES = 4 * 1024 * 1024
UPLOADS_IN_FLIGHT = 3
# The push's upload (``SyncCopy._upload``) of a copy with the default window: 16 MiB per request,
# two on the wire. Each request costs the server an fsync of its pack, an fsync of the shard
# folder and a transaction, and both sides a few ms of per-request CPU: 256 MiB in 1 MiB
# requests took ~6.2 CPU-s, in 8 MiB requests ~3.4 (bench/upload_cpu.py --window).
BULK_UPLOAD_WINDOW_BYTES = 16 * 1024 * 1024
BULK_UPLOADS_IN_FLIGHT = 2
READ_SPAN = 1024 * 1024  # _read_for_upload reads back-to-back chunks this many bytes at a time
# a delta record names the old bytes lined up with the new chunk plus this much on each side
DELTA_SLACK = 8 * 1024
BASE_MIN_FILE = 64 * 1024  # smaller files are cheap to send whole: no base copy
# downloads of at least this size go through .smartsync/partial/<content>.part, kept when
# the pull is cut, so the next attempt fetches only the chunks it does not have yet
PARTIAL_MIN = 4 * 1024 * 1024
CHANGES_PAGE = 5000
# an mtime this close to "now" may not change on a quick same-size edit (coarse file system
# timestamps): such files are re-read once on the next scan
RACY_NS = 1_000_000_000
_CONFLICT_RE = re.compile(r" \(conflict .+ \d{4}-\d{2}-\d{2} \d{4}(?: \d+)?\)[^/()]*$")


class Server(Protocol):
    """The part of ``smartsyncd.client.http.ServerAPI`` the engine uses."""

    base_url: str

    async def session(self) -> dict[str, Any]: ...

    async def snapshot(self, eng: str) -> tuple[int, list[FileState]]: ...

    async def changes(
        self, eng: str, since: int, limit: int = 5000, wait: float = 0
    ) -> tuple[int, list[Change], bool]: ...

    async def manifest(
        self, eng: str, content: str, base: Manifest | None = None
    ) -> Manifest: ...

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]: ...

    async def upload_chunks(self, eng: str, chunks: Iterable[Any]) -> int: ...

    async def fetch_chunks(self, eng: str, hashes: Iterable[Any]) -> dict[str, bytes]: ...

    async def commit(self, eng: str, batch: str, changes: list[dict[str, Any]]) -> dict[str, Any]: ...


@dataclass
class SyncReport:
    """What one sync (or clone) did."""

    uploaded: int = 0  # files committed (applied)
    bytes_sent: int = 0  # chunk upload bytes on the wire
    downloaded: int = 0  # files written from the server
    bytes_received: int = 0  # raw bytes of fetched chunks
    deleted_remote: int = 0
    deleted_local: int = 0
    conflicts: list[str] = field(default_factory=list)  # conflict copies made this time
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    conflicts_left: int = 0  # conflict copies present in the folder
    last_seq: int = 0
    unsynced: int = 0  # local changes still not on the server after this sync
    locked: list[str] = field(default_factory=list)  # local edits waiting for another's check-in
    refused: str | None = None  # why the server refused every change (engagement finalized)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return data


@dataclass
class StatusReport:
    """What a sync would move now (nothing is changed to find out)."""

    to_upload: list[str] = field(default_factory=list)
    to_delete_remote: list[str] = field(default_factory=list)
    to_download: list[str] = field(default_factory=list)
    to_delete_local: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # local edits a remote change hits
    skipped: list[tuple[str, str]] = field(default_factory=list)
    conflicts_left: int = 0
    last_seq: int = 0
    head: int = 0
    locked: list[dict[str, Any]] = field(default_factory=list)  # {path, holder, since, lock}
    finalized: dict[str, Any] | None = None  # {at, by, reason} when the engagement is signed off

    @property
    def clean(self) -> bool:
        return not (
            self.to_upload or self.to_delete_remote or self.to_download
            or self.to_delete_local or self.conflicts
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        data["clean"] = self.clean
        return data


@dataclass
class _DeltaBase:
    """A modified file's synced version: where its chunks were, to line new chunks up."""

    content: str
    size: int
    old_chunks: tuple[ChunkRef, ...]
    new_chunks: tuple[ChunkRef, ...]
    _anchors: list[tuple[int, int]] | None = None

    def shift(self, new_offset: int) -> int:
        """How far content at ``new_offset`` moved since the old version: the shift of the
        nearest unchanged chunk before it (0 when there is none)."""
        if self._anchors is None:
            where: dict[str, int] = {}
            for chunk, offset in _offsets(self.old_chunks):
                where.setdefault(chunk.hash, offset)
            self._anchors = [
                (offset, offset - where[chunk.hash])
                for chunk, offset in _offsets(self.new_chunks) if chunk.hash in where
            ]
        i = bisect.bisect_right(self._anchors, (new_offset, 1 << 62)) - 1
        return self._anchors[i][1] if i >= 0 else 0


class _ChunkChanged(Exception):
    """A chunk to upload could not be read back with its hash: the file changed since the
    scan."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


# A sync's scan examines this many files per blocking step; between steps the chunks of new
# small files read so far start uploading (``_EarlyUpload``), so scan and upload overlap.
SCAN_STEP = 256
# ... and once this many new files have their chunks on the server, they are committed as one
# batch while the scan goes on (the last ones go with the push, after the scan)
EARLY_COMMIT_FILES = 2000
# ... and once a window of at least this many chunks came back all-missing from /missing, the
# next windows upload without asking (a first sync of new files: the server has none of them)
BLIND_AFTER_CHUNKS = 64


class _EarlyUpload:
    """Chunks of new small files uploaded while the scan goes on (issue 7: the phases of a
    first sync of thousands of small files overlap instead of running one after another).

    Only files at paths without a synced base whose content is not known from the base (a
    rename or copy sends only its id) are offered; per window the server is asked which chunks
    it lacks, as ``_upload`` asks, and only those travel. ``present`` collects the hashes the
    server confirmed or stored, so the push asks only about the rest. Best effort: a failure
    stops early uploading and the push sends whatever is missing as before.

    With ``commit``, files whose chunks the server confirmed are committed in batches of
    ``commit_files`` while the scan goes on (``SyncCopy._commit_early``): one atomic batch
    each, naming only confirmed chunks (the server checks again). A refusal stops early
    commits and leaves the files to the push, which handles locks, sign-off and the rest.
    """

    def __init__(
        self, api: Server, engagement: str, base: Mapping[str, FileRecord],
        window: int = UPLOAD_WINDOW_BYTES, in_flight: int = UPLOADS_IN_FLIGHT,
        commit: Callable[[list[ScannedFile]], Awaitable[bool]] | None = None,
        commit_files: int = EARLY_COMMIT_FILES,
    ) -> None:
        """``commit``: commits new files whose chunks are confirmed, in batches of
        ``commit_files`` while the scan goes on; returns False to stop early commits."""
        self.commit = commit
        self.commit_files = commit_files
        self._waiting: dict[str, list[ScannedFile]] = {}  # chunk hash -> files of it
        self._ready: list[ScannedFile] = []
        self._committing: Deferred[None] | None = None
        self._commit_error: BaseException | None = None
        self._closed = False
        self.api = api
        self.engagement = engagement
        self.base = base
        self.known = {r.content for r in base.values()}
        self.window = window
        self.in_flight = in_flight
        self.present: set[str] = set()
        self.bytes_sent = 0
        self.failed = False
        # upload windows without asking /missing first (see ``_send``)
        self.blind = False
        self.windows_unasked = 0
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._running: list[Deferred[None]] = []
        self._final = False

    def offer(self, read: Iterable[tuple[ScannedFile, bytes]]) -> None:
        """Small files the scan just read (with their bytes, as hashed)."""
        if self.failed:
            return
        for entry, data in read:
            if entry.path in self.base or entry.content in self.known:
                continue
            if entry.chunks is None or len(entry.chunks) != 1 or entry.chunks[0].size != len(data):
                continue
            digest = entry.chunks[0].hash
            if digest in self.present:
                self._ready.append(entry)
                continue
            self._waiting.setdefault(digest, []).append(entry)
            if digest not in self._pending and len(self._waiting[digest]) == 1:
                self._pending[digest] = data
                self._pending_bytes += len(data)
        self._pump()

    def _pump(self) -> None:
        while (
            not self.failed and self._pending and len(self._running) < self.in_flight
            and (self._final or self._pending_bytes >= self.window)
        ):
            batch: dict[str, bytes] = {}
            size = 0
            for digest in list(self._pending):
                if batch and size + len(self._pending[digest]) > self.window:
                    break
                batch[digest] = self._pending.pop(digest)
                size += len(batch[digest])
            self._pending_bytes -= size
            sending: Deferred[None] = Deferred.fromCoroutine(self._send(batch))
            self._running.append(sending)
            sending.addBoth(self._done, sending)

    def _done(self, _result: object, sending: Deferred[None]) -> None:
        self._running.remove(sending)
        self._pump()
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if (
            self.commit is None or self._committing is not None or self._closed
            or len(self._ready) < self.commit_files
        ):
            return
        batch, self._ready = self._ready[: self.commit_files], self._ready[self.commit_files:]
        committing: Deferred[None] = Deferred.fromCoroutine(self._commit(batch))
        if not committing.called:
            self._committing = committing

    async def _commit(self, batch: list[ScannedFile]) -> None:
        assert self.commit is not None
        try:
            if not await self.commit(batch):
                self.commit = None  # refused or disturbed: the push decides the rest
        except BaseException as e:  # e.g. the folder's marker vanished: the sync stops
            self.commit = None
            self._commit_error = e
        finally:
            self._committing = None
        self._maybe_commit()

    async def _send(self, batch: dict[str, bytes]) -> None:
        try:
            # Once a window came back all-missing, the chunks of the next windows (files new
            # to this copy) go up without asking first; if an upload finds some of them on
            # the server after all (its "present" count rises), the next windows ask again.
            # A chunk sent although the server had it costs its bytes once, nothing else.
            present_before = getattr(self.api, "chunks_present", None)
            blind = self.blind and present_before is not None
            if blind:
                missing = list(batch)
                self.windows_unasked += 1
            else:
                missing = await self.api.missing_chunks(self.engagement, list(batch))
                if (
                    present_before is not None and len(missing) == len(batch)
                    and len(batch) >= BLIND_AFTER_CHUNKS
                ):
                    self.blind = True
            if missing:
                self.bytes_sent += await self.api.upload_chunks(
                    self.engagement, [(h, batch[h]) for h in missing]
                )
            if blind and getattr(self.api, "chunks_present", 0) != present_before:
                self.blind = False  # the server had some: ask again from the next window
            self.present.update(batch)
            for digest in batch:
                self._ready.extend(self._waiting.pop(digest, ()))
        except Exception as e:  # noqa: BLE001 - best effort: the push sends what is missing
            if not self.failed:
                log.info("early upload stopped ({why}); the push sends the rest", why=str(e))
            self.failed = True
            self._pending.clear()

    async def finish(self) -> None:
        """Send what is left and wait for every request and a running early commit (files
        not committed yet are left to the push). Raises what stopped an early commit
        other than the server's refusal or the network."""
        self._final = True
        self._pump()
        # batches keep committing while the last uploads run; then what is left waits
        while self._running or self._committing is not None:
            await (self._running[0] if self._running else self._committing)  # type: ignore[misc]
        self._closed = True
        if self._commit_error is not None:
            raise self._commit_error

    def abort(self) -> None:
        self.failed = True
        self._closed = True
        self._pending.clear()
        for sending in list(self._running):
            sending.cancel()
        if self._committing is not None:
            self._committing.cancel()


def _offsets(chunks: Iterable[ChunkRef]) -> Iterator[tuple[ChunkRef, int]]:
    offset = 0
    for chunk in chunks:
        yield chunk, offset
        offset += chunk.size


def _batches(items: Iterable[str], size_of: Callable[[str], int], limit: int) -> Iterator[list[str]]:
    """``items`` in consecutive groups of at most ``limit`` bytes (a larger item alone)."""
    batch: list[str] = []
    size = 0
    for item in items:
        if batch and size + size_of(item) > limit:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += size_of(item)
    if batch:
        yield batch


def _windows(chunks: tuple[ChunkRef, ...], limit: int) -> Iterator[list[ChunkRef]]:
    window: list[ChunkRef] = []
    size = 0
    for chunk in chunks:
        if window and size + chunk.size > limit:
            yield window
            window, size = [], 0
        window.append(chunk)
        size += chunk.size
    if window:
        yield window


# Cyclic GC while a sync runs: a first sync of thousands of small files keeps tens of thousands
# of objects alive (scan entries, state rows, change lists), and with Python's default gen-0
# threshold of 700 the collector ran ~170 times per 10,000 files, each pass also walking the
# survivors: ~0.13 CPU-s, ~8% of the client's CPU (bench/small_profile.py). While a sync runs
# the gen-0 threshold is at least this; the previous thresholds come back when the last
# running sync of the process ends (garbage cycles are still collected, only less often).
SYNC_GC_THRESHOLD = 20_000


def fewer_gc_passes() -> AbstractContextManager[None]:
    """Raise the gen-0 GC threshold to ``SYNC_GC_THRESHOLD`` while a sync runs."""
    return raised_gen0_threshold(SYNC_GC_THRESHOLD)


def _remote_path_ok(path: str) -> bool:
    """A path from the server must be a valid relative path before it touches the disk."""
    try:
        return normalize_path(path) == path
    except InvalidPath:
        return False


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


class SyncCopy:
    """One local copy of an engagement in ``directory``."""

    def __init__(
        self,
        directory: Path,
        state: ClientState,
        *,
        clock: IReactorTime | None = None,
        run_blocking: RunBlocking | None = None,
        scanner: Scanner | None = None,
        window_bytes: int = WINDOW_BYTES,
        lock: CopyLock | None = None,
    ) -> None:
        self.directory = directory
        self.state = state
        # held while open (client/copylock.py); None: opened read-only (shared) or unlocked
        self.lock = lock
        self.read_only = False
        meta = state.meta()
        self.server_url = meta.server_url
        self.engagement = meta.engagement
        self.user = meta.user
        self.copy_id = meta.copy_id
        self.clock = clock or _default_clock()
        self._run: RunBlocking = run_blocking or deferToThread
        self.scanner = scanner or Scanner(directory)
        self.window_bytes = window_bytes
        self.early_commit_files = EARLY_COMMIT_FILES
        self.base_cache = BaseCache(directory / ".smartsync" / "base")
        self._loaded_base: tuple[str, bytes] | None = None
        # probed once per open (casefold.py): the folder may be a different volume next time
        self.case_insensitive: bool | None = None
        self._folders_matched: set[str] = set()  # this pull's folders with the server's case

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        clock: IReactorTime | None = None,
        run_blocking: RunBlocking | None = None,
        scanner: Scanner | None = None,
        window_bytes: int = WINDOW_BYTES,
        exclusive: bool = True,
    ) -> SyncCopy:
        """Open an existing copy (refuses a folder without its marker or state).

        ``exclusive`` (the default) takes the copy lock until ``close``: a copy another
        process has open this way raises ``CopyInUse``. ``exclusive=False`` opens it for
        reading only (status, conflicts): no lock, and ``sync``/``watch`` are refused."""
        path = Path(directory).absolute()
        state = ClientState.open(path)
        lock: CopyLock | None = None
        if exclusive:
            try:
                lock = CopyLock.acquire(path)
            except BaseException:
                state.close()
                raise
        copy = cls(
            path, state, clock=clock, run_blocking=run_blocking,
            scanner=scanner, window_bytes=window_bytes, lock=lock,
        )
        copy.read_only = not exclusive
        return copy

    @classmethod
    async def clone(
        cls,
        api: Server,
        engagement: str,
        directory: str | Path,
        *,
        progress: Progress | None = None,
        clock: IReactorTime | None = None,
        run_blocking: RunBlocking | None = None,
        window_bytes: int = WINDOW_BYTES,
    ) -> SyncCopy:
        """Create a copy of ``engagement`` in a new or empty ``directory``."""
        run: RunBlocking = run_blocking or deferToThread
        path = Path(directory).absolute()
        await run(_prepare_empty_dir, path)
        head, files = await api.snapshot(engagement)  # checks access before anything is created
        session = await api.session()
        user = session.get("user") if isinstance(session, dict) else None
        meta = CopyMeta(api.base_url, engagement, str(user or ""), str(uuid.uuid4()))
        state = await run(ClientState.create, path, meta)
        try:
            lock = await run(CopyLock.acquire, path)
        except BaseException:
            state.close()
            raise
        copy = cls(path, state, clock=clock, run_blocking=run, window_bytes=window_bytes,
                   lock=lock)
        try:
            await run(begin_sync, path)
            report = await copy._clone_files(api, head, files, progress or NullProgress())
            await reconcile.after_clone(copy, api)
        except BaseException:
            # the lock goes with the failure: the half-made copy can be opened again (in this
            # process too), and its next sync finishes the pull and removes the temp files
            copy.close()
            raise
        log.info(
            "cloned {engagement} into {directory}: {files} files at sequence {head}",
            engagement=engagement, directory=str(path), files=report.downloaded, head=head,
        )
        return copy

    async def _clone_files(
        self, api: Server, head: int, files: list[FileState], prog: Progress
    ) -> SyncReport:
        await self._register(api)
        report = SyncReport()
        live = [f for f in files if f.content is not None]
        prog.start("download", sum(f.size for f in live))
        index: dict[str, tuple[str, int, int]] = {}
        try:
            for f in sorted(live, key=lambda f: f.path):
                assert f.content is not None
                if not _remote_path_ok(f.path):
                    report.skipped.append((f.path, "server sent an invalid path; not written"))
                    continue
                write = PullWrite(f.path, f.seq, f.content, f.size, None)
                await self._write_or_skip(api, write, None, index, report, prog)
        finally:
            prog.finish()
        await self._run(self.state.update, (), (), head)
        await self._run(end_sync, self.directory)
        return report

    # -- helpers -------------------------------------------------------------------------------

    def _cache_mtime(self, mtime_ns: int) -> int:
        """The mtime to keep in the stat cache, or -1 when it is too recent to trust: a
        same-size edit within the file system's timestamp granularity would keep the same
        mtime ("racily clean", as git calls it), so such a file is re-read once next time."""
        now_ns = int(self._seconds() * 1_000_000_000)
        return mtime_ns if now_ns - mtime_ns >= RACY_NS else -1

    def _seconds(self) -> float:
        seconds: Callable[[], float] = self.clock.seconds  # type: ignore[misc]
        return seconds()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._seconds(), UTC)

    def close(self) -> None:
        """Close the state and give up the copy lock (another process may open it now)."""
        try:
            self.state.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def conflicts(self) -> list[str]:
        """Conflict copy files present in the folder (blocking: a folder walk)."""
        return sorted(p for p, *_ in self.scanner.signature() if _CONFLICT_RE.search(p))

    # -- sync ----------------------------------------------------------------------------------

    async def sync(self, api: Server, *, progress: Progress | None = None) -> SyncReport:
        """Push local changes, then pull remote ones."""
        reconcile.attach(self, api)
        with fewer_gc_passes():
            try:
                return await self._sync(api, progress)
            except HistoryDiverged as e:  # the server was restored: client/reconcile.py
                await reconcile.reconcile(self, e)
                return await self._sync(api, progress)

    async def _sync(self, api: Server, progress: Progress | None) -> SyncReport:
        prog = progress or NullProgress()
        report = SyncReport()
        await self._run(self.state.check_marker)
        await self._begin_sync()
        base: dict[str, FileRecord] = await self._run(self.state.all_files)
        scan, early = await self._scan_and_upload(api, base, report)
        report.bytes_sent += early.bytes_sent
        report.skipped.extend(scan.skipped)
        report.skipped.extend(scan.errors)
        await self._refresh_stat_cache(scan, base)
        push_plan = plan(scan.entries, base, [], complete=scan.complete)  # one planner pass
        pending, since = self._pending(scan, base, push_plan)
        contact = await self._contact(api, len(pending), since)
        finalized = contact.get("finalized") if contact else None
        if finalized:  # read-only: nothing to push; local changes stay local
            report.refused = _finalized_text(finalized) if pending else None
            report.unsynced = len(pending)
        else:
            await self._push(
                api, scan, base, report, prog, self._blocked(contact, pending), push_plan,
                present=early.present,
            )
        await self._pull(api, report, prog)
        if contact is not None and report.unsynced != len(pending):
            await self._contact(api, report.unsynced, since if report.unsynced else None)
        self.scanner.forget_recent()
        await self._run(self._prune_bases)
        await self._run(self._prune_partials)
        if report.downloaded or report.deleted_local or report.conflicts:
            report.conflicts_left = len(await self._run(self.conflicts))
        else:  # the folder is as scanned: no second walk
            report.conflicts_left = sum(1 for p in scan.files if _CONFLICT_RE.search(p))
        report.last_seq = await self._run(lambda: self.state.last_seq)
        await self._run(end_sync, self.directory)  # a clean end: no temp file of ours is left
        log.info(
            "sync of {engagement}: {uploaded} up ({bytes_sent} bytes), {downloaded} down, "
            "{conflicts} new conflict copies, {skipped} skipped",
            engagement=self.engagement, uploaded=report.uploaded, bytes_sent=report.bytes_sent,
            downloaded=report.downloaded, conflicts=len(report.conflicts),
            skipped=len(report.skipped),
        )
        return report

    async def _begin_sync(self) -> None:
        """Refuse a read-only copy; remove what an interrupted sync left (its temp files:
        the lock says no one else is writing here) and mark this sync as in progress."""
        if self.read_only:
            raise UsageError(f"{self.directory} was opened read-only: it cannot sync")
        await self._run(begin_sync, self.directory)

    async def _scan_and_upload(
        self, api: Server, base: dict[str, FileRecord], report: SyncReport
    ) -> tuple[ScanResult, _EarlyUpload]:
        """Scan in steps; chunks of new small files upload while later steps run, and new
        files whose chunks the server has are committed in large batches meanwhile
        (``_commit_early``). ``base`` is updated with what those commits recorded."""
        if getattr(api, "report_copy", None) is not None:
            api.copy_id = self.copy_id  # type: ignore[attr-defined]  # commits name this copy
        job = await self._run(self.scanner.begin, base)
        recorded: dict[str, FileRecord | None] = {}
        moved: list[bool] = []

        async def commit(entries: list[ScannedFile]) -> bool:
            outcome = await self._commit_early(api, entries, report)
            if outcome is None:
                return False  # refused or unknown: nothing recorded, the push sends them
            puts, drops, clean = outcome
            recorded.update((r.path, r) for r in puts)
            recorded.update((path, None) for path in drops)
            if not clean:
                moved.append(True)  # conflict copies moved files: scan again
            return clean

        early = _EarlyUpload(
            api, self.engagement, base, window=min(self.window_bytes, UPLOAD_WINDOW_BYTES),
            commit=commit, commit_files=self.early_commit_files,
        )
        try:
            while not job.done:
                early.offer(await self._run(job.step, SCAN_STEP))
            await early.finish()
        except BaseException:
            early.abort()
            raise
        scan = job.result
        if recorded:
            for path, record in recorded.items():
                if record is None:
                    base.pop(path, None)
                    continue
                base[path] = record
                entry = scan.entries.get(path)
                if entry is not None and entry.content == record.content:
                    scan.recorded.add(path)  # recorded just now: no stat cache refresh
        if moved:
            scan = await self._run(self.scanner.scan, base)
        return scan, early

    async def _commit_early(
        self, api: Server, entries: list[ScannedFile], report: SyncReport
    ) -> tuple[list[FileRecord], list[str], bool] | None:
        """Commit new files (no synced base, chunks confirmed on the server) during the scan,
        as one atomic batch. None when nothing was recorded (the server refused the batch, or
        the answer was lost: the push then sends these files again, and a batch the server
        did apply answers "unchanged"). Else the rows written, the paths dropped, and whether
        every file was simply applied (a conflict moves local files: the caller rescans)."""
        changes: list[dict[str, Any]] = [
            {"path": e.path, "kind": "put", "base": None, "manifest": chunks_to_json(e.chunks or ())}
            for e in entries
        ]
        await self._run(self.state.check_marker)
        last_seq: int = await self._run(lambda: self.state.last_seq)
        try:
            answer = await api.commit(self.engagement, str(uuid.uuid4()), changes)
        except (ServerRefused, NetworkError) as e:
            log.info("early commit not made ({why}); the push sends these files", why=str(e))
            return None
        scan = ScanResult(entries={e.path: e for e in entries})
        puts, drops = await self._apply_results(
            answer, changes, scan, {}, report, _own_head(answer, last_seq)
        )
        clean = all(item.get("status") == "applied" for item in answer["results"])
        return puts, drops, clean

    async def _refresh_stat_cache(self, scan: ScanResult, base: dict[str, FileRecord]) -> None:
        """Files read this scan whose content is the synced one (touched, or racily clean):
        remember their stat so the next scan need not read them again."""
        fresh: list[FileRecord] = []
        recorded = scan.recorded
        for path, entry in scan.entries.items():
            old = base.get(path)
            if (
                entry.hashed and old is not None and entry.content == old.content
                and path not in recorded
            ):
                record = FileRecord(
                    path=path, seq=old.seq, content=old.content, size=old.size,
                    mtime_ns=self._cache_mtime(entry.mtime_ns), inode=entry.inode,
                    chunks=entry.chunks,
                )
                fresh.append(record)
                base[path] = record
        if fresh:
            await self._run(self.state.update, fresh, ())

    async def status(self, api: Server) -> StatusReport:
        """What would move (no file, state or server record is changed)."""
        await self._run(self.state.check_marker)
        base: dict[str, FileRecord] = await self._run(self.state.all_files)
        scan: ScanResult = await self._run(self.scanner.scan, base)
        last_seq: int = await self._run(lambda: self.state.last_seq)
        changes: list[Change] = []
        since, head = last_seq, last_seq
        while True:
            head, page, more = await api.changes(self.engagement, since, CHANGES_PAGE)
            changes.extend(page)
            if not page or not more:
                break
            since = page[-1].seq
        p = plan(scan.entries, base, changes, complete=scan.complete)
        pending, unsynced_since = self._pending(scan, base)
        contact = await self._contact(api, len(pending), unsynced_since)
        blocked = self._blocked(contact, pending)
        return StatusReport(
            locked=[{"path": path, "lock": why} for path, why in sorted(blocked.items())],
            finalized=contact.get("finalized") if contact else None,
            to_upload=[x.path for x in p.push_puts],
            to_delete_remote=[x.path for x in p.push_deletes],
            to_download=[x.path for x in p.pull_writes],
            to_delete_local=[x.path for x in p.pull_deletes],
            conflicts=[x.path for x in p.conflicts],
            skipped=scan.skipped + scan.errors,
            conflicts_left=len(await self._run(self.conflicts)),
            last_seq=last_seq,
            head=head,
        )

    # -- push ----------------------------------------------------------------------------------

    async def _push(
        self, api: Server, scan: ScanResult, base: dict[str, FileRecord], report: SyncReport,
        prog: Progress, blocked: Mapping[str, str] | None = None, planned_push: Plan | None = None,
        present: set[str] | None = None,
    ) -> None:
        """``present``: chunk hashes the server confirmed during this sync (``_EarlyUpload``)."""
        present = set() if present is None else present
        p = planned_push or plan(scan.entries, base, [], complete=scan.complete)
        excluded: set[str] = set()
        planned = {x.path for x in p.push_puts} | {x.path for x in p.push_deletes}
        report.unsynced = len(planned)
        for held, why in (blocked or {}).items():  # checked out by someone else: the edit waits
            if held in planned:
                excluded.add(held)
                report.locked.append(held)
                report.skipped.append((held, why))
        full: set[str] = set()  # paths to send with a full manifest (server lacks the base)
        for _attempt in range(5):
            report.unsynced = len(planned & excluded)
            puts = [x for x in p.push_puts if x.path not in excluded]
            # never the delete half of a case-only rename whose put is held back or refused:
            # other copies would delete the file while its new name never arrives
            held_keys = {fold_key(x.path) for x in p.push_puts if x.path in excluded}
            deletes = [
                x for x in p.push_deletes
                if x.path not in excluded and fold_key(x.path) not in held_keys
            ]
            report.unsynced += len(puts) + len(deletes)
            if not puts and not deletes:
                report.unsynced = len(planned & excluded)
                return
            # deletes first: a case-only rename (delete a.txt, put A.txt) must not clash with
            # the name it replaces
            changes: list[dict[str, Any]] = [
                {"path": d.path, "kind": "delete", "base": d.base} for d in deletes
            ]
            wanted: dict[str, tuple[str, int, int]] = {}
            bases: dict[str, _DeltaBase] = {}  # path -> its synced version, for delta records
            known = {r.content for r in base.values()}
            for put in puts:
                entry = scan.entries[put.path]
                old = base.get(put.path)
                chunks = entry.chunks if entry.chunks is not None else (old.chunks if old else None)
                item: dict[str, Any] = {
                    "path": put.path, "kind": "put", "base": put.base,
                    "content": put.content, "size": put.size,
                }
                if chunks is None:
                    excluded.add(put.path)
                    continue
                send: Iterable[tuple[ChunkRef, int]] = ()
                if put.content in known and put.path not in full:
                    pass  # the server has this content (rename, copy): only the id travels
                elif old is not None and old.chunks is not None and put.path not in full:
                    item["delta"] = {"base": old.content, "ops": make_delta(old.chunks, chunks)}
                    had = {c.hash for c in old.chunks}
                    send = [(c, o) for c, o in _offsets(chunks) if c.hash not in had]
                    bases[put.path] = _DeltaBase(old.content, old.size, old.chunks, chunks)
                else:
                    # the compact form: the server derives content id and size from the
                    # manifest (protocol.md, Push step 3)
                    del item["content"], item["size"]
                    item["manifest"] = chunks_to_json(chunks)
                    send = _offsets(chunks)
                for chunk, offset in send:
                    if chunk.hash not in present:
                        wanted.setdefault(chunk.hash, (put.path, offset, chunk.size))
                changes.append(item)
            if not changes:
                return
            try:
                try:
                    report.bytes_sent += await self._upload(api, wanted, prog, bases)
                except ServerRefused as e:
                    if e.code == "finalized":  # signed off meanwhile: keep everything local
                        report.refused = e.message
                        return
                    if e.code != "bad_chunk" or not bases:
                        raise
                    # a delta the server could not rebuild (a base copy gone bad?): resend
                    # the missing chunks whole; everything already stored stays
                    log.warn("delta upload refused ({why}); sending whole chunks", why=e.message)
                    await self._run(self.base_cache.prune, set())
                    report.bytes_sent += await self._upload(api, wanted, prog)
            except _ChunkChanged as e:
                excluded.add(e.path)
                report.skipped.append((e.path, "changed while syncing; sent next time"))
                continue
            # a folder emptied or unmounted since the scan must never turn into deletes
            await self._run(self.state.check_marker)
            batch = await self._run(self._batch_key, changes)
            last_seq: int = await self._run(lambda: self.state.last_seq)
            try:
                answer = await api.commit(self.engagement, batch, changes)
            except ServerRefused as e:
                await self._run(self.state.clear_pending_batch)  # nothing was applied
                path = e.details.get("path")
                sent_paths = {c["path"] for c in changes}
                existing = e.details.get("existing")
                if (
                    e.code == "path_clash" and isinstance(path, str) and path in sent_paths
                    and path in scan.entries
                    and isinstance(existing, str) and fold_key(existing) == fold_key(path)
                ):
                    # another copy created this name first with other case, or renamed the
                    # file we edited to other case: keep ours as a conflict copy beside it,
                    # sent now (not a file that never syncs)
                    entry = scan.entries[path]
                    target = await self._run(self._conflict_target, existing)
                    if await self._run(self._move_if_unchanged, path, target, entry):
                        report.conflicts.append(target)
                        del scan.entries[path]
                        scan.entries[target] = replace(entry, path=target)
                        p = plan(scan.entries, base, [], complete=scan.complete)
                        planned.add(target)
                        continue
                if (
                    e.code in ("invalid_path", "path_clash")
                    and isinstance(path, str) and path in sent_paths
                ):
                    excluded.add(path)
                    if e.code == "path_clash" and isinstance(existing, str) and "/" in path:
                        # a folder renamed in case: every file under the new spelling clashes
                        depth = existing.count("/") + 1
                        prefix = "/".join(path.split("/")[:depth]) + "/"
                        if fold_key(prefix) == fold_key(existing + "/") and prefix != existing + "/":
                            for x in p.push_puts:
                                if x.path.startswith(prefix):
                                    excluded.add(x.path)
                                    report.skipped.append((x.path, e.message))
                    report.skipped.append((path, e.message))
                    log.warn("server refused {path}: {why}", path=path, why=e.message)
                    continue
                if e.code == "locked" and isinstance(path, str) and path in sent_paths:
                    excluded.add(path)  # the local edit stays; it syncs after check-in
                    report.locked.append(path)
                    report.skipped.append((path, e.message))
                    continue
                if e.code == "finalized":  # signed off meanwhile: keep everything local
                    report.refused = e.message
                    return
                if e.code in ("unknown_content", "missing_chunks"):
                    full.update(x.path for x in puts if path in (None, x.path))
                    present.clear()  # ask the server again (collected meanwhile?)
                    continue
                raise
            await self._apply_results(
                answer, changes, scan, base, report, _own_head(answer, last_seq)
            )
            await self._run(self.state.clear_pending_batch)
            report.unsynced = len(planned & excluded)
            return
        raise UsageError("push did not settle after several attempts; try again")

    # -- the server's view of this copy (docs/workflow.md) -----------------------------------

    def _pending(
        self, scan: ScanResult, base: dict[str, FileRecord], p: Plan | None = None
    ) -> tuple[list[str], datetime | None]:
        """Local changes not yet on the server, and the oldest edit time among them."""
        if p is None:
            p = plan(scan.entries, base, [], complete=scan.complete)
        paths = [x.path for x in p.push_puts] + [x.path for x in p.push_deletes]
        mtimes = [scan.entries[x.path].mtime_ns for x in p.push_puts if x.path in scan.entries]
        since = datetime.fromtimestamp(min(mtimes) / 1e9, UTC) if mtimes else None
        return paths, since

    async def _register(self, api: Server) -> None:
        register = getattr(api, "register_copy", None)
        if register is None:  # a Server without the workflow calls
            return
        api.copy_id = self.copy_id  # type: ignore[attr-defined]
        await register(self.engagement, self.copy_id, socket.gethostname() or "unknown")

    async def _contact(
        self, api: Server, unsynced: int, since: datetime | None
    ) -> dict[str, Any] | None:
        """Report this copy's unsynced count; the answer has locks and the sign-off state.
        Best effort on network trouble (the sync itself reports that); an abandoned copy's
        refusal is raised."""
        report = getattr(api, "report_copy", None)
        if report is None:
            return None
        api.copy_id = self.copy_id  # type: ignore[attr-defined]
        try:
            answer: dict[str, Any] = await report(
                self.engagement, self.copy_id, socket.gethostname() or "unknown", unsynced, since
            )
        except NetworkError as e:
            log.warn("could not report to the server: {why}", why=str(e))
            return None
        return answer

    def _blocked(self, contact: dict[str, Any] | None, paths: Iterable[str]) -> dict[str, str]:
        """Pending paths covered by another user's active lock -> a line saying whose."""
        if not contact:
            return {}
        locks = [
            lk for lk in contact.get("locks") or []
            if isinstance(lk, dict) and isinstance(lk.get("path"), str) and lk.get("holder") != self.user
        ]
        out: dict[str, str] = {}
        for path in paths:
            for lk in locks:
                if covers(lk["path"], path):
                    out[path] = (
                        f"checked out by {lk.get('holder')} since {lk.get('since')}"
                        + ("" if lk["path"] == path else f" (folder {lk['path']})")
                        + "; kept locally until check-in"
                    )
                    break
        return out

    def _batch_key(self, changes: list[dict[str, Any]]) -> str:
        """The idempotency key: reused when the same changes are sent again after a lost
        answer; persisted before the commit is sent."""
        digest = hashlib.sha256(json.dumps(changes, sort_keys=True).encode()).hexdigest()
        pending = self.state.pending_batch()
        if pending is not None and pending[1] == digest:
            return pending[0]
        batch = str(uuid.uuid4())
        self.state.set_pending_batch(batch, digest)
        return batch

    async def _upload(
        self, api: Server, wanted: Mapping[str, tuple[str, int, int]], prog: Progress,
        bases: Mapping[str, _DeltaBase] | None = None,
    ) -> int:
        """Upload the chunks the server lacks; returns bytes sent. Asking first is what makes
        an interrupted upload resume where it stopped. Chunks of a file in ``bases`` whose
        previous version has a base copy travel as deltas against it where that is smaller."""
        if not wanted:
            return 0
        missing = await api.missing_chunks(self.engagement, list(wanted))
        if not missing:
            return 0
        total = sum(wanted[h][2] for h in missing)
        prog.start("upload", total)
        sent = 0
        # a copy opened with a smaller window (low memory, tests) keeps it
        limit = BULK_UPLOAD_WINDOW_BYTES if self.window_bytes >= WINDOW_BYTES else self.window_bytes
        # Pipelined: while up to BULK_UPLOADS_IN_FLIGHT windows are on the wire (and being
        # verified and stored by the server), the next one is read from disk.
        in_flight: list[tuple[int, Deferred[int]]] = []
        try:
            for batch in _batches(missing, lambda h: wanted[h][2], limit):
                data = await self._run(
                    self._read_for_upload, [(h, wanted[h]) for h in batch], bases or {}
                )
                while len(in_flight) >= BULK_UPLOADS_IN_FLIGHT:
                    raw, pending = in_flight.pop(0)
                    sent += await pending
                    prog.advance(raw)
                upload = Deferred.fromCoroutine(api.upload_chunks(self.engagement, data))
                in_flight.append((sum(len(item[1]) for item in data), upload))
            while in_flight:
                raw, pending = in_flight.pop(0)
                sent += await pending
                prog.advance(raw)
        finally:
            for _, pending in in_flight:  # only left after a failure: stop the rest quietly
                pending.addErrback(lambda _: None)
                pending.cancel()
            prog.finish()
            self._loaded_base = None
        return sent

    def _read_for_upload(
        self, items: list[tuple[str, tuple[str, int, int]]], bases: Mapping[str, _DeltaBase]
    ) -> list[tuple[str, bytes] | tuple[str, bytes, DeltaHint]]:
        out: list[tuple[str, bytes] | tuple[str, bytes, DeltaHint]] = []
        recent = self.scanner.recent
        # a small file's bytes as the scan hashed them, else read back (and re-hashed: a file
        # changed since the scan is sent next time), each file once for all its chunks here
        to_read: dict[str, list[tuple[int, int, str]]] = {}
        for digest, (path, offset, size) in items:
            data = recent.get(digest)
            if data is None or len(data) != size:
                to_read.setdefault(path, []).append((offset, size, digest))
        read: dict[str, bytes | None] = {}
        for path, wanted in to_read.items():
            # 1 MiB per pread: buffers of that size are reused by malloc, while a fresh 16 MiB
            # one is page-faulted in anew each time (~4,000 faults per window)
            got = read_chunks(self.directory / path, wanted, max_span=READ_SPAN)
            for digest in got:
                if got[digest] is None:
                    raise _ChunkChanged(path)
            read.update(got)
        for digest, (path, offset, size) in items:
            data = read.get(digest) or recent.get(digest)
            if data is None:
                raise _ChunkChanged(path)
            hint = self._delta_hint(bases.get(path), offset, size)
            out.append((digest, data) if hint is None else (digest, data, hint))
        return out

    def _delta_hint(self, base: _DeltaBase | None, offset: int, size: int) -> DeltaHint | None:
        """The range of the previous version that lines up with a new chunk (blocking)."""
        if base is None or not self.base_cache.has(base.content):
            return None
        if self._loaded_base is None or self._loaded_base[0] != base.content:
            old = self.base_cache.load(base.content, base.size)
            if old is None:
                return None
            self._loaded_base = (base.content, old)
        old = self._loaded_base[1]
        start = offset - base.shift(offset)
        lo = max(0, min(start - DELTA_SLACK, len(old) - 1))
        hi = min(len(old), max(start + size + DELTA_SLACK, lo + 1))
        return DeltaHint(base.content, lo, old[lo:hi])

    async def _apply_results(
        self, answer: dict[str, Any], changes: list[dict[str, Any]], scan: ScanResult,
        base: dict[str, FileRecord], report: SyncReport, own_head: int | None = None,
    ) -> tuple[list[FileRecord], list[str]]:
        """Record what the commit did; ``own_head`` (see ``_own_head``) moves last_seq past
        our own records so the pull does not fetch them back. Returns the rows written and
        the paths dropped."""
        puts: list[FileRecord] = []
        drops: list[str] = []
        for item, change in zip(answer["results"], changes, strict=True):
            path = change["path"]
            status = item.get("status")
            if change["kind"] == "delete":
                if status in ("applied", "unchanged"):
                    drops.append(path)
                    report.deleted_remote += status == "applied"
                continue  # stale: the pull brings the newer version back
            entry = scan.entries[path]
            old = base.get(path)
            chunks = entry.chunks if entry.chunks is not None else (old.chunks if old else None)
            if status == "applied" and isinstance(item.get("seq"), int):
                puts.append(self._record(entry, item["seq"], path, chunks))
                report.uploaded += 1
            elif status == "unchanged" and isinstance(item.get("current_seq"), int):
                puts.append(self._record(entry, item["current_seq"], path, chunks))
            elif status == "conflict" and isinstance(item.get("seq"), int):
                cpath = item.get("conflict_path")
                if not isinstance(cpath, str) or not _remote_path_ok(cpath):
                    raise ProtocolError("commit answer has an invalid conflict_path")
                report.conflicts.append(cpath)
                log.info("conflict: {path} kept as {conflict_path}", path=path,
                         conflict_path=cpath)
                # our version now lives at cpath on the server: move the local file there too,
                # so the pull writes the other version at path without a second copy
                moved = await self._run(self._move_if_unchanged, path, cpath, entry)
                if moved:
                    puts.append(self._record(entry, item["seq"], cpath, chunks))
                    drops.append(path)
        await self._run(self.state.update, puts, drops, own_head)
        await self._run(self._keep_bases, [(r.path, r.content, r.size) for r in puts])
        return puts, drops

    def _record(
        self, entry: ScannedFile, seq: int, at: str, chunks: tuple[ChunkRef, ...] | None
    ) -> FileRecord:
        """The state row of ``entry`` synced as ``seq`` at path ``at``."""
        return FileRecord(
            path=at, seq=seq, content=entry.content, size=entry.size,
            mtime_ns=self._cache_mtime(entry.mtime_ns), inode=entry.inode, chunks=chunks,
        )

    def _conflict_target(self, path: str) -> str:
        return conflict_name(path, self.user, self._now(), self._taken)

    def _keep_bases(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Keep base copies of synced versions for the next delta (an optimization only: a
        failure leaves no copy and the next edit travels as plain chunks)."""
        for path, content, size in items:
            if size >= BASE_MIN_FILE:
                try:
                    self.base_cache.keep(self.directory / path, content, size)
                except OSError as e:
                    log.warn("no base copy of {path}: {why}", path=path, why=str(e))

    def _prune_bases(self) -> None:
        if self.base_cache.root.is_dir() and any(self.base_cache.root.iterdir()):
            self.base_cache.prune({r.content for r in self.state.all_files().values()})

    def _move_if_unchanged(self, path: str, target: str, entry: ScannedFile) -> bool:
        source = self.directory / path
        try:
            st = os.stat(source, follow_symlinks=False)
        except OSError:
            return False
        if not same_stat(st, entry.size, entry.mtime_ns, entry.inode):
            return False  # edited again: the pull will make a local conflict copy instead
        try:
            move_no_replace(source, self.directory / target)
        except OSError:
            return False
        return True

    # -- pull ----------------------------------------------------------------------------------

    async def _pull(self, api: Server, report: SyncReport, prog: Progress) -> None:
        since: int = await self._run(lambda: self.state.last_seq)
        while True:
            _head, changes, more = await api.changes(self.engagement, since, CHANGES_PAGE)
            if not changes:
                return
            await self._run(self.state.check_marker)
            await self._apply_changes(api, changes, report, prog)
            since = changes[-1].seq
            await self._run(self.state.update, (), (), since)  # after the files are durable
            if not more:
                return

    async def _apply_changes(
        self, api: Server, changes: list[Change], report: SyncReport, prog: Progress
    ) -> None:
        valid = []
        for change in changes:
            if _remote_path_ok(change.path):
                valid.append(change)
            else:
                report.skipped.append((change.path, "server sent an invalid path; not written"))
        base: dict[str, FileRecord] = await self._run(self.state.all_files)
        paths = {c.path for c in valid}
        folded = await self._case_insensitive()
        self._folders_matched.clear()
        local = await self._run(self._check_paths, paths, base, folded)
        p = plan(
            local, {k: base[k] for k in paths if k in base}, valid, complete=True,
            case_insensitive=folded,
        )
        if p.renames:
            await self._run(self._rename_in_place, p.renames, base)
            report.downloaded += len(p.renames)

        updates: list[FileRecord] = []
        for adopt in p.adopt:
            entry = local[adopt.path]
            if isinstance(entry, ScannedFile):
                updates.append(FileRecord(
                    path=adopt.path, seq=adopt.seq, content=adopt.content, size=adopt.size,
                    mtime_ns=self._cache_mtime(entry.mtime_ns), inode=entry.inode,
                    chunks=entry.chunks,
                ))
        await self._run(self.state.update, updates, p.forget)

        writes = [c.remote for c in p.conflicts] + p.pull_writes
        deletes = p.pull_deletes
        key: Callable[[str], str] = fold_key if folded else str
        # a delete of a file that is a folder of a new write must happen first
        folders = {key(a) for w in writes for a in _ancestors(w.path)}
        early = [d for d in deletes if key(d.path) in folders]
        # on a case-insensitive copy a delete of another spelling of a path this pull writes
        # would delete the file just written: drop its base row only
        written = {fold_key(w.path) for w in writes} if folded else set()
        kept = [d for d in deletes if d.path not in {w.path for w in writes}
                and fold_key(d.path) in written]
        if kept:
            deletes = [d for d in deletes if d not in kept]
            early = [d for d in early if d not in kept]
            await self._run(self.state.update, (), [d.path for d in kept])
        for d in early:
            await self._remove(d.path, base.get(d.path), report)
        if writes:
            index = await self._run(self._chunk_index, base)
            total = sum(w.size for w in writes)
            prog.start("download", total)
            try:
                for w in sorted(writes, key=lambda w: w.path):
                    await self._write_or_skip(api, w, base.get(w.path), index, report, prog)
            finally:
                prog.finish()
        for d in deletes:
            if d not in early:
                await self._remove(d.path, base.get(d.path), report)

    async def _case_insensitive(self) -> bool:
        if self.case_insensitive is None:
            folder = self.directory / ".smartsync"
            self.case_insensitive = bool(await self._run(probe_case_insensitive, folder))
            if self.case_insensitive:
                log.info("{directory} is case-insensitive: case-only renames apply in place",
                         directory=str(self.directory))
        return self.case_insensitive

    def _rename_in_place(self, renames: list[CaseRename], base: dict[str, FileRecord]) -> None:
        """Apply remote case-only renames on a case-insensitive copy (blocking); ``base`` is
        updated to the rows recorded."""
        for r in renames:
            rename_case(self.directory, r.old, r.new)
            old = base.pop(r.old)
            record = replace(old, path=r.new, seq=r.seq, content=r.content, size=r.size)
            self.state.update([record], [r.old])
            base[r.new] = record
            log.info("renamed {old} to {new} in place (case only)", old=r.old, new=r.new)

    def _check_paths(
        self, paths: Iterable[str], base: Mapping[str, FileRecord], folded: bool = False
    ) -> dict[str, LocalEntry]:
        """Local entries of ``paths``; on a case-insensitive copy (``folded``) a path that
        shares its fold key with another one of ``paths`` is found only under its stored
        spelling (one file there answers to both names)."""
        out: dict[str, LocalEntry] = {}
        twins: set[str] = set()
        if folded:
            by_key: dict[str, list[str]] = {}
            for path in paths:
                by_key.setdefault(fold_key(path), []).append(path)
            twins = {p for group in by_key.values() if len(group) > 1 for p in group}
        for path in paths:
            if path in twins and stored_spelling(self.directory, path) != path:
                continue
            try:
                entry = self.scanner.check(path, base.get(path))
            except FileChanging:
                # being written right now: treat as a local edit (never overwritten)
                out[path] = LocalEntry(content="changing", size=-1)
                continue
            if entry is not None:
                out[path] = entry
        return out

    def _chunk_index(self, base: Mapping[str, FileRecord]) -> dict[str, tuple[str, int, int]]:
        """Where each chunk of a synced file sits locally: hash -> (path, offset, size)."""
        index: dict[str, tuple[str, int, int]] = {}
        for record in base.values():
            if record.chunks:
                for chunk, offset in _offsets(record.chunks):
                    index.setdefault(chunk.hash, (record.path, offset, chunk.size))
        return index

    async def _write_or_skip(
        self, api: Server, write: PullWrite, old: FileRecord | None,
        index: dict[str, tuple[str, int, int]], report: SyncReport, prog: Progress,
    ) -> None:
        """``_write_remote``, except that a file that cannot be verified (a stored manifest
        that lies about its chunks) or whose folder is a symbolic link is skipped and
        reported: one bad file must not stop the pull of every other."""
        try:
            await self._write_remote(api, write, old, index, report, prog)
        except (Unverifiable, LinkInPath) as e:
            why = e.strerror if isinstance(e, LinkInPath) else str(e)
            log.warn("{path} not written: {why}", path=write.path, why=why)
            report.skipped.append((write.path, str(why)))

    async def _write_remote(
        self, api: Server, write: PullWrite, old: FileRecord | None,
        index: dict[str, tuple[str, int, int]], report: SyncReport, prog: Progress,
    ) -> None:
        base_manifest = (
            Manifest(old.content, old.size, old.chunks)
            if old is not None and old.chunks is not None else None
        )
        manifest = await api.manifest(self.engagement, write.content, base=base_manifest)
        if manifest.size != write.size:
            raise Unverifiable(f"manifest of {write.path} does not match its size")
        target = self.directory / write.path
        # before a temp file is opened in the folder: a folder cannot be renamed on Windows
        # while a file in it is open, and exfat-fuse loses the open file's path
        await self._run(self._match_folder_case, write.path)
        resumable = manifest.size >= PARTIAL_MIN
        if resumable:  # a large file: resume into what an interrupted pull left
            temp, handle, have = await self._run(self._open_partial, manifest, target)
        else:
            temp, handle = await self._run(open_temp, self.directory, target)
            have = 0
        # a modified file whose synced version is here: chunks may come as deltas against it
        delta_base = (
            _DeltaBase(old.content, old.size, old.chunks, manifest.chunks)
            if old is not None and old.chunks is not None and old.size > 0
            and old.content != manifest.content
            else None
        )
        source: Path | bytes | None = None
        offset = sum(c.size for c in manifest.chunks[:have])
        try:
            if delta_base is not None and old is not None:
                source = await self._run(self._download_base, write.path, old)
            for window in _windows(manifest.chunks[have:], self.window_bytes):
                local = await self._run(self._read_local, window, index)
                need: list[Any] = []
                seen: set[str] = set()
                for chunk, at in _offsets(window):
                    if chunk.hash not in local and chunk.hash not in seen:
                        seen.add(chunk.hash)
                        need.append((chunk, offset + at))
                offset += sum(c.size for c in window)
                if source is not None and delta_base is not None:
                    need = await self._run(_with_bases, need, delta_base, source)
                else:
                    need = [chunk for chunk, _ in need]
                fetched = await api.fetch_chunks(self.engagement, need) if need else {}
                report.bytes_received += sum(len(v) for v in fetched.values())
                await self._run(_write_window, handle, window, local, fetched)
                prog.advance(sum(c.size for c in window))
            st, moved_to = await self._run(self._install, temp, handle, write.path, old)
        except BaseException as exc:
            # a cut connection keeps the part for the next attempt; a local disk error (a
            # full disk) frees its space instead
            if resumable and not isinstance(exc, (OSError, Unverifiable)):
                await self._run(_keep_partial, temp, handle)
            else:
                await self._run(discard_temp, temp, handle)
            raise
        if moved_to is not None:
            report.conflicts.append(moved_to)
            log.info("local edit of {path} kept as {conflict_path}", path=write.path,
                     conflict_path=moved_to)
        record = FileRecord(
            path=write.path, seq=write.seq, content=write.content, size=write.size,
            mtime_ns=self._cache_mtime(st.st_mtime_ns), inode=st.st_ino,
            chunks=manifest.chunks,
        )
        await self._run(self.state.update, [record], ())
        for chunk, offset in _offsets(manifest.chunks):
            index.setdefault(chunk.hash, (write.path, offset, chunk.size))
        await self._run(self._keep_bases, [(write.path, write.content, write.size)])
        report.downloaded += 1

    def _download_base(self, path: str, old: FileRecord) -> Path | bytes | None:
        """Where to read the synced version ``old`` of ``path`` for download deltas (blocking):
        the file itself while it looks unchanged (same size and inode, same or untrusted
        mtime), else the base copy's bytes. Either may be wrong (edited in place, damaged):
        every chunk rebuilt from it is hash-checked, and one that fails is fetched whole."""
        try:
            st = os.stat(self.directory / path, follow_symlinks=False)
        except OSError:
            st = None
        if (
            st is not None and stat.S_ISREG(st.st_mode) and st.st_size == old.size
            and st.st_ino == old.inode and old.mtime_ns in (st.st_mtime_ns, -1)
        ):
            return self.directory / path
        return self.base_cache.load(old.content, old.size)

    def _read_local(
        self, window: list[ChunkRef], index: Mapping[str, tuple[str, int, int]]
    ) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for chunk in window:
            if chunk.hash in found or chunk.hash not in index:
                continue
            path, offset, size = index[chunk.hash]
            data = read_chunk(self.directory / path, offset, size, chunk.hash)
            if data is not None:
                found[chunk.hash] = data
        return found

    def _partial_dir(self) -> Path:
        return self.directory / ".smartsync" / "partial"

    def _open_partial(
        self, manifest: Manifest, target: Path
    ) -> tuple[Path, BinaryIO, int]:
        """Open the partial download of ``manifest.content`` left by an interrupted pull (or
        a new one): the chunks at its start that still hash right are kept, the rest is cut
        off. Returns (path, handle positioned after the kept chunks, number of kept chunks).
        Nothing is trusted without its hash: a partial file torn by a crash only loses the
        chunks that do not verify."""
        make_parents(self.directory, target)
        folder = self._partial_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{manifest.content}.part"
        have, offset = 0, 0
        if path.exists():
            for chunk in manifest.chunks:
                if read_chunk(path, offset, chunk.size, chunk.hash) is None:
                    break
                have += 1
                offset += chunk.size
            log.info("resuming the download of {content}: {n} chunks ({bytes} bytes) already here",
                     content=manifest.content, n=have, bytes=offset)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        handle = os.fdopen(fd, "r+b")
        try:
            handle.truncate(offset)
            handle.seek(offset)
        except BaseException:
            handle.close()
            raise
        return path, handle, have

    def _prune_partials(self) -> None:
        """Drop partial downloads nothing is waiting for (after a complete pull)."""
        folder = self._partial_dir()
        if folder.is_dir():
            for leftover in folder.iterdir():
                leftover.unlink(missing_ok=True)

    def _install(
        self, temp: Path, handle: BinaryIO, path: str, old: FileRecord | None
    ) -> tuple[os.stat_result, str | None]:
        """Replace ``path`` with the finished temp file; an unpushed local edit (or an
        unexpected file) is first moved to a conflict copy. Returns (stat, conflict copy)."""
        moved_to: str | None = None
        try:
            current: LocalEntry | None = self.scanner.check(path, old)
        except FileChanging:
            current = LocalEntry(content="changing", size=-1)
        target = self.directory / path
        ensure_folder(self.directory, target.parent, create=False)  # LinkInPath: not written
        if current is not None and (old is None or current.content != old.content):
            moved_to = conflict_name(path, self.user, self._now(), self._taken)
            try:
                move_no_replace(target, self.directory / moved_to)
            except FileNotFoundError:
                # the name answered but is not there: on a case-insensitive copy the file may
                # be under another spelling (exfat-fuse answers for a name renamed through
                # another one); moved aside from there, so the write replaces nothing
                stored = stored_spelling(self.directory, path) if self.case_insensitive else None
                if stored is None:
                    moved_to = None  # nothing there to keep
                else:
                    move_no_replace(self.directory / stored, self.directory / moved_to)
        st = finish_temp(temp, handle, target, root=self.directory)
        if temp.parent != (self.directory / path).parent:  # from .smartsync/partial
            fsync_dir(temp.parent)
        return st, moved_to

    def _match_folder_case(self, path: str) -> None:
        """On a case-insensitive copy, give ``path``'s existing folders the server's spelling
        (a folder renamed in case elsewhere), once per folder and pull (blocking)."""
        if self.case_insensitive and "/" in path:
            folder = path.rpartition("/")[0]
            if folder not in self._folders_matched:
                match_folders(self.directory, path)
                self._folders_matched.add(folder)

    def _taken(self, candidate: str) -> bool:
        return os.path.lexists(self.directory / candidate) or self.state.get(candidate) is not None

    async def _remove(self, path: str, old: FileRecord | None, report: SyncReport) -> None:
        removed = await self._run(self._remove_if_unchanged, path, old)
        report.deleted_local += removed
        await self._run(self.state.update, (), [path])

    def _remove_if_unchanged(self, path: str, old: FileRecord | None) -> bool:
        try:
            current = self.scanner.check(path, old)
        except FileChanging:
            return False
        if current is None or old is None or current.content != old.content:
            return False  # gone already, or edited: kept (pushed again as a new file)
        try:
            ensure_folder(self.directory, (self.directory / path).parent, create=False)
        except LinkInPath:
            log.warn("{path} not deleted: a folder on the way is a symbolic link", path=path)
            return False
        try:
            remove_file(self.directory, self.directory / path)
        except FileNotFoundError:
            return False  # gone already (or only another spelling answered): nothing deleted
        return True

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self,
        api: Server,
        stop: Deferred[Any],
        on_report: Callable[[SyncReport], object],
        *,
        progress: Progress | None = None,
        poll_interval: float = 1.0,
        long_poll: float = 30.0,
        retry_delay: float = 5.0,
    ) -> None:
        """Sync, then wait for a server notification or a local change, and repeat until
        ``stop`` fires. Network errors are retried; a missing folder or marker ends the watch
        with that error."""
        stopped: Deferred[None] = Deferred()

        def on_stop(result: object) -> object:
            if not stopped.called:
                stopped.callback(None)
            return result

        stop.addBoth(on_stop)
        while not stopped.called:
            # Taken before the sync: an edit made while it runs (after its scan) must not
            # become part of the "already synced" picture we wait against.
            before = await self._run(self.scanner.signature)
            try:
                on_report(await self.sync(api, progress=progress))
            except NetworkError as e:
                log.warn("sync failed, retrying: {why}", why=str(e))
                await self._wait(self._sleep(retry_delay), stopped)
                continue
            signature = await self._run(self.scanner.signature)
            if signature != before:
                continue  # our own downloads, or an edit made meanwhile: sync again to see
            while not stopped.called:
                remote = Deferred.fromCoroutine(self._remote_news(api, long_poll, retry_delay))
                local = Deferred.fromCoroutine(self._local_news(signature, poll_interval))
                which = await self._wait_any([remote, local], stopped)
                if which is None:
                    return
                _index, news = which
                if isinstance(news, Exception):
                    raise news
                if news:
                    break

    async def _remote_news(
        self, api: Server, wait: float, retry_delay: float
    ) -> bool | Exception:
        """True when the server has changes for us (long-poll). Errors other than network
        trouble are returned, not raised: a race ignores a failing contender."""
        since: int = await self._run(lambda: self.state.last_seq)
        try:
            _head, changes, _more = await api.changes(self.engagement, since, 1, wait=wait)
        except NetworkError as e:
            log.warn("waiting for server changes failed: {why}", why=str(e))
            await self._sleep(retry_delay)
            return False
        except HistoryDiverged:
            return True  # the sync reconciles
        except Exception as e:
            return e
        return bool(changes)

    async def _local_news(self, signature: frozenset, interval: float) -> bool:
        while True:
            await self._sleep(interval)
            if await self._run(self.scanner.signature) != signature:
                return True

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.clock, seconds, lambda: None)

    async def _wait(self, d: Deferred[Any], stopped: Deferred[None]) -> None:
        await self._wait_any([d], stopped)

    async def _wait_any(
        self, ds: list[Deferred[Any]], stopped: Deferred[None]
    ) -> tuple[int, Any] | None:
        """The first of ``ds`` to succeed as (index, result), or None when stopped first; the
        others are cancelled."""
        stop_copy: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            if not stop_copy.called:
                stop_copy.callback(None)
            return result

        stopped.addBoth(relay)
        index, result = await race([*ds, stop_copy])
        if index == len(ds):
            return None
        return index, result


def _own_head(answer: Mapping[str, Any], last_seq: int) -> int | None:
    """The commit's head when the records after ``last_seq`` up to it are exactly this commit's
    own (every change applied, their seqs contiguous from last_seq + 1): then there is nothing
    in that range to pull, and last_seq may move to the head at once. None otherwise (a
    conflict, a stale delete, an unchanged put, or another copy's commit in between)."""
    head = answer.get("head")
    results = answer.get("results")
    if type(head) is not int or not isinstance(results, list):
        return None
    seqs = []
    for item in results:
        if not isinstance(item, dict) or item.get("status") != "applied":
            return None
        seq = item.get("seq")
        if type(seq) is not int:
            return None
        seqs.append(seq)
    return head if sorted(seqs) == list(range(last_seq + 1, head + 1)) else None


def _finalized_text(info: Any) -> str:
    if not isinstance(info, dict):
        return "the engagement is finalized (read-only); local changes are kept"
    return (
        f"the engagement was finalized by {info.get('by')} at {info.get('at')}: {info.get('reason')}."
        " It is read-only until an admin reopens it; local changes are kept"
    )


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _keep_partial(path: Path, handle: BinaryIO) -> None:
    """Make what an interrupted download wrote durable for a resume; on any failure (a full
    disk) the partial file is removed instead."""
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    except OSError:
        discard_temp(path, handle)


def _base_range(base: _DeltaBase, offset: int, size: int) -> tuple[int, int]:
    """The range ``(lo, hi)`` of the old version lined up with the new chunk at ``offset``
    (its nearest unchanged chunk's shift, ``DELTA_SLACK`` each side): the same choice as for
    uploads, so the delta finds the old bytes of edited rows."""
    return aligned_range(offset - base.shift(offset), size, base.size, DELTA_SLACK)


def _with_bases(
    need: list[tuple[ChunkRef, int]], base: _DeltaBase, source: Path | bytes
) -> list[tuple[str, int] | tuple[str, int, DeltaHint]]:
    """Fetch items naming, per chunk, its lined-up range of the old version read from
    ``source`` (the local file or the base copy's bytes; blocking). A range that cannot be
    read whole is left out: that chunk comes without a delta."""
    out: list[tuple[str, int] | tuple[str, int, DeltaHint]] = []
    handle: BinaryIO | None = None
    try:
        if isinstance(source, Path):
            try:
                handle = open(source, "rb")  # noqa: SIM115  (closed below)
            except OSError:
                return [(chunk.hash, chunk.size) for chunk, _ in need]
        for chunk, offset in need:
            lo, hi = _base_range(base, offset, chunk.size)
            if handle is not None:
                try:
                    handle.seek(lo)
                    prefix = handle.read(hi - lo)
                except OSError:
                    prefix = b""
            else:
                assert isinstance(source, bytes)
                prefix = source[lo:hi]
            if len(prefix) == hi - lo:
                out.append((chunk.hash, chunk.size, DeltaHint(base.content, lo, prefix)))
            else:
                out.append((chunk.hash, chunk.size))
    finally:
        if handle is not None:
            handle.close()
    return out


def _write_window(
    handle: BinaryIO, window: list[ChunkRef], local: Mapping[str, bytes],
    fetched: Mapping[str, bytes],
) -> None:
    for chunk in window:
        data = local.get(chunk.hash)
        if data is None:
            data = fetched[chunk.hash]
        if len(data) != chunk.size:
            raise Unverifiable(f"chunk {chunk.hash} has {len(data)} bytes, its manifest says "
                               f"{chunk.size}; the file was not written")
        handle.write(data)


def _prepare_empty_dir(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{path} exists and is not a folder")
        if any(path.iterdir()):
            raise UsageError(f"{path} is not empty: clone into a new or empty folder")
        return
    path.mkdir(parents=True)
    fsync_dir(path.parent)


__all__ = ["SyncCopy", "SyncReport", "StatusReport", "StateError"]
