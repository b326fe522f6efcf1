"""Writing one file of a pull (or clone): its manifest, chunks found locally or fetched (as
deltas against the synced version where that helps), assembled in a temp file, fsynced and
renamed over the old one. An unpushed local edit is first moved to a conflict copy; a large
download resumes from ``.smartsync/partial``. Every chunk is checked against its hash."""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed

from smartsyncd.client import osfs
from smartsyncd.client.casefold import match_folders, stored_spelling
from smartsyncd.client.chunkindex import SEGMENT_MIN, ChunkIndex, Location, build_segments
from smartsyncd.client.copycontext import CopyContext, log, offsets
from smartsyncd.client.deltabase import DeltaBase, base_range, windows
from smartsyncd.client.diskroom import NoRoom, check_room, is_disk_full, no_room_after
from smartsyncd.client.errors import Unverifiable
from smartsyncd.client.localfs import (
    discard_temp,
    finish_temp,
    fsync_dir,
    make_parents,
    move_no_replace,
    open_temp,
    read_chunk,
)
from smartsyncd.client.nofollow import LinkInPath, ensure_folder
from smartsyncd.client.osfs import (
    is_readonly,
    open_fd,
    set_mtime,
    set_readonly,
    stat_path,
    sync_file,
)
from smartsyncd.client.progress import Progress
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import FileChanging
from smartsyncd.client.server import Server
from smartsyncd.client.state import FileRecord
from smartsyncd.client.wire import ChunkWanted, DeltaHint
from smartsyncd.core.model import ChunkRef, Manifest
from smartsyncd.core.planner import LocalEntry, PullWrite
from smartsyncd.runtime.writeback import start_writeback

# downloads of at least this size go through .smartsync/partial/<content>.part, kept when
# the pull is cut, so the next attempt fetches only the chunks it does not have yet
PARTIAL_MIN = 4 * 1024 * 1024
# where chunks sit locally, for copying instead of fetching: the whole index, or a group's part
ChunkLocations = ChunkIndex | Mapping[str, Location]
# windows of a large file fetched at once (one written while the others are on the wire)
WINDOWS_AHEAD = 2


class FileWriter:
    """Writes remote versions into one copy for one pull (``folders_matched``: the folders
    this pull already gave the server's spelling of case)."""

    def __init__(
        self, ctx: CopyContext, api: Server, report: SyncReport, prog: Progress
    ) -> None:
        self.ctx = ctx
        self.api = api
        self.report = report
        self.prog = prog
        self.folders_matched: set[str] = set()
        # seqs of the files this pull could not write for lack of disk space
        self.no_room: list[int] = []

    async def write_or_skip(
        self, write: PullWrite, old: FileRecord | None, index: ChunkIndex,
        manifest: Manifest | None = None, prefetched: Mapping[str, bytes] | None = None,
    ) -> None:
        """``_write_remote``, except that a file that cannot be verified (a stored manifest
        that lies about its chunks) or whose folder is a symbolic link is skipped and
        reported: one bad file must not stop the pull of every other. ``prefetched``: chunks
        already fetched (verified) for it, used instead of asking again."""
        try:
            await self._write_remote(write, old, index, manifest, prefetched or {})
        except (Unverifiable, LinkInPath) as e:
            self.skip(write.path, e)
        except NoRoom as e:
            self.skip_no_room(write, e)
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.skip_no_room(write, await self.ctx.run(
                no_room_after, write.path, self.ctx.local(write.path), write.size))

    def skip_no_room(self, write: PullWrite, e: NoRoom) -> None:
        """A file that does not fit: reported, and pulled again by the next sync."""
        log.warn("{path} not written: {why}", path=write.path, why=e.reason)
        self.report.skipped.append((write.path, e.reason))
        self.no_room.append(write.seq)

    def skip(self, path: str, e: Unverifiable | LinkInPath) -> None:
        why = e.strerror if isinstance(e, LinkInPath) else str(e)
        log.warn("{path} not written: {why}", path=path, why=why)
        self.report.skipped.append((path, str(why)))

    async def _write_remote(
        self, write: PullWrite, old: FileRecord | None, index: ChunkIndex,
        manifest: Manifest | None = None, prefetched: Mapping[str, bytes] | None = None,
    ) -> None:
        ctx, api = self.ctx, self.api
        if manifest is None:
            manifest = await api.manifest(ctx.engagement, write.content, base=base_of(old))
        check_size(write, manifest)
        target = self.ctx.local(write.path)
        # before a temp file is opened in the folder: a folder cannot be renamed on Windows
        # while a file in it is open, and exfat-fuse loses the open file's path
        await ctx.run(self.match_folder_case, write.path)
        resumable = manifest.size >= PARTIAL_MIN
        await ctx.run(self.check_room, write.path, target, manifest)
        if resumable:  # a large file: resume into what an interrupted pull left
            temp, handle, have = await ctx.run(self._open_partial, manifest, target)
        else:
            temp, handle = await ctx.run(open_temp, self.ctx.directory, target)
            have = 0
        delta_base = delta_base_for(old, manifest)
        source: Path | bytes | None = None
        offset = sum(c.size for c in manifest.chunks[:have])
        try:
            if delta_base is not None and old is not None:
                source = await ctx.run(self.download_base, write.path, old)
            # the next windows' fetches are on the wire while one is written: bounded by
            # WINDOWS_AHEAD windows held, written in order (a cut leaves a clean prefix)
            ahead: deque[tuple[list[ChunkRef], dict[str, bytes], Deferred[dict[str, bytes]]]]
            ahead = deque()
            try:
                for window in windows(manifest.chunks[have:], ctx.window_bytes):
                    local = await ctx.run(self.read_local, window, index)
                    if prefetched:
                        local.update((c.hash, prefetched[c.hash]) for c in window
                                     if c.hash in prefetched and c.hash not in local)
                    need: list[tuple[ChunkRef, int]] = []
                    seen: set[str] = set()
                    for chunk, at in offsets(window):
                        if chunk.hash not in local and chunk.hash not in seen:
                            seen.add(chunk.hash)
                            need.append((chunk, offset + at))
                    offset += sum(c.size for c in window)
                    items: list[ChunkWanted]
                    if source is not None and delta_base is not None:
                        items = list(await ctx.run(with_bases, need, delta_base, source))
                    else:
                        items = [chunk for chunk, _ in need]
                    fetching: Deferred[dict[str, bytes]] = (
                        Deferred.fromCoroutine(api.fetch_chunks(ctx.engagement, items))
                        if items else succeed({}))
                    ahead.append((window, local, fetching))
                    if len(ahead) >= WINDOWS_AHEAD:
                        await self._write_fetched(handle, *ahead.popleft())
                while ahead:
                    await self._write_fetched(handle, *ahead.popleft())
            finally:
                for _, _, pending in ahead:
                    pending.addErrback(lambda _: None)
                    pending.cancel()
            st, moved_to = await ctx.run(
                self.install, temp, handle, write.path, old, write.mtime_ns, write.readonly
            )
        except BaseException as exc:
            # a cut connection keeps the part for the next attempt; a local disk error (a
            # full disk) frees its space instead
            if resumable and not isinstance(exc, (OSError, Unverifiable)):
                await ctx.run(_keep_partial, temp, handle)
            else:
                await ctx.run(discard_temp, temp, handle)
            raise
        self.report_conflict(write.path, moved_to)
        await self.record([(write, manifest, st)], index)

    async def _write_fetched(
        self, handle: BinaryIO, window: list[ChunkRef], local: Mapping[str, bytes],
        fetching: Deferred[dict[str, bytes]],
    ) -> None:
        """Write one window of a large file once its fetched chunks are here (verified)."""
        fetched = await fetching
        self.report.bytes_received += sum(len(v) for v in fetched.values())
        await self.ctx.run(write_and_start_writeback, handle, window, local, fetched)
        self.prog.advance(sum(c.size for c in window))

    async def record(
        self, done: Sequence[tuple[PullWrite, Manifest, os.stat_result]], index: ChunkIndex
    ) -> None:
        """Record files written and durable: their state rows, chunk index, base copies."""
        ctx = self.ctx
        records = [
            FileRecord(
                path=write.path, seq=write.seq, content=write.content, size=write.size,
                mtime_ns=ctx.cache_mtime(st.st_mtime_ns), inode=st.st_ino,
                chunks=manifest.chunks,
            )
            for write, manifest, st in done
        ]
        await ctx.run(ctx.state.update, records, ())
        for write, manifest, _ in done:
            if len(manifest.chunks) >= SEGMENT_MIN:  # a large file's segment: off the reactor
                built = await ctx.run(build_segments, index.number(write.path), manifest.chunks)
                index.add_segments(built)
            else:
                index.add(write.path, manifest.chunks)
        await ctx.run(ctx.keep_bases, [(w.path, w.content, w.size) for w, _, _ in done])
        self.report.downloaded += len(done)

    def report_conflict(self, path: str, moved_to: str | None) -> None:
        if moved_to is not None:
            self.report.conflicts.append(moved_to)
            log.info("local edit of {path} kept as {conflict_path}", path=path,
                     conflict_path=moved_to)

    def download_base(self, path: str, old: FileRecord) -> Path | bytes | None:
        """Where to read the synced version ``old`` of ``path`` for download deltas (blocking):
        the file itself while it looks unchanged (same size and inode, same or untrusted
        mtime), else the base copy's bytes. Either may be wrong (edited in place, damaged):
        every chunk rebuilt from it is hash-checked, and one that fails is fetched whole."""
        try:
            st = stat_path(self.ctx.local(path), follow_symlinks=False)
        except OSError:
            st = None
        if (
            st is not None and stat.S_ISREG(st.st_mode) and st.st_size == old.size
            and st.st_ino == old.inode and old.mtime_ns in (st.st_mtime_ns, -1)
        ):
            return self.ctx.local(path)
        return self.ctx.base_cache.load(old.content, old.size)

    def read_local(
        self, window: list[ChunkRef], index: ChunkLocations
    ) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for chunk in window:
            if chunk.hash in found or chunk.hash not in index:
                continue
            path, offset, size = index[chunk.hash]
            data = read_chunk(self.ctx.local(path), offset, size, chunk.hash)
            if data is not None:
                found[chunk.hash] = data
        return found

    def check_room(self, path: str, target: Path, manifest: Manifest) -> None:
        """Raise ``NoRoom`` when ``manifest`` cannot fit beside ``target`` (blocking); what an
        interrupted download of it left in ``.smartsync/partial`` counts as room."""
        part = partial_dir(self.ctx.directory) / f"{manifest.content}.part"
        try:
            have = stat_path(part).st_size if manifest.size >= PARTIAL_MIN else 0
        except OSError:
            have = 0
        check_room(path, target, max(0, manifest.size - have))

    def _open_partial(
        self, manifest: Manifest, target: Path
    ) -> tuple[Path, BinaryIO, int]:
        """Open the partial download of ``manifest.content`` left by an interrupted pull (or
        a new one): the chunks at its start that still hash right are kept, the rest is cut
        off. Returns (path, handle positioned after the kept chunks, number of kept chunks).
        Nothing is trusted without its hash: a partial file torn by a crash only loses the
        chunks that do not verify."""
        make_parents(self.ctx.directory, target)
        folder = partial_dir(self.ctx.directory)
        osfs.make_folders(folder, exist_ok=True)
        path = folder / f"{manifest.content}.part"
        have, offset = 0, 0
        if osfs.exists(path):
            for chunk in manifest.chunks:
                if read_chunk(path, offset, chunk.size, chunk.hash) is None:
                    break
                have += 1
                offset += chunk.size
            log.info("resuming the download of {content}: {n} chunks ({bytes} bytes) already here",
                     content=manifest.content, n=have, bytes=offset)
        fd = open_fd(path, os.O_RDWR | os.O_CREAT, 0o644)
        handle = os.fdopen(fd, "r+b")
        try:
            handle.truncate(offset)
            handle.seek(offset)
        except BaseException:
            handle.close()
            raise
        return path, handle, have

    def match_folder_case(self, path: str) -> None:
        """On a case-insensitive copy, give ``path``'s existing folders the server's spelling
        (a folder renamed in case elsewhere), once per folder and pull (blocking)."""
        if self.ctx.case_insensitive and "/" in path:
            folder = path.rpartition("/")[0]
            if folder not in self.folders_matched:
                match_folders(self.ctx.directory, path)
                self.folders_matched.add(folder)

    def install(
        self, temp: Path, handle: BinaryIO, path: str, old: FileRecord | None,
        mtime_ns: int | None = None, readonly: bool | None = None,
    ) -> tuple[os.stat_result, str | None]:
        """Replace ``path`` with the finished temp file; an unpushed local edit (or an
        unexpected file) is first moved to a conflict copy. The new file gets the version's
        date and read-only attribute. Returns (stat, conflict copy)."""
        moved_to = self.make_way(path, old)
        target = self.ctx.local(path)
        finish_temp(temp, handle, target, root=self.ctx.directory)
        if temp.parent != target.parent:  # from .smartsync/partial
            fsync_dir(temp.parent)
        return apply_attributes(target, mtime_ns, readonly), moved_to

    def make_way(self, path: str, old: FileRecord | None) -> str | None:
        """Right before ``path`` is replaced (blocking): an unpushed local edit (or an
        unexpected file) there is moved to a conflict copy, a read-only synced file made
        replaceable. Returns the conflict copy or None. ``LinkInPath``: not to be written."""
        moved_to: str | None = None
        try:
            current: LocalEntry | None = self.ctx.scanner.check(path, old)
        except FileChanging:
            current = LocalEntry(content="changing", size=-1)
        target = self.ctx.local(path)
        ensure_folder(self.ctx.directory, target.parent, create=False)  # LinkInPath: not written
        if current is not None and (old is None or current.content != old.content):
            moved_to = self.ctx.conflict_target(path)
            try:
                move_no_replace(target, self.ctx.local(moved_to))
            except FileNotFoundError:
                # the name answered but is not there: on a case-insensitive copy the file may
                # be under another spelling (exfat-fuse answers for a name renamed through
                # another one); moved aside from there, so the write replaces nothing
                stored = (stored_spelling(self.ctx.directory, path)
                          if self.ctx.case_insensitive else None)
                if stored is None:
                    moved_to = None  # nothing there to keep
                else:
                    move_no_replace(self.ctx.directory / stored, self.ctx.local(moved_to))
        clear_readonly(target)  # a read-only synced file is replaced like any other
        return moved_to


def clear_readonly(target: Path) -> None:
    """Let ``target`` (if it is there) be replaced: Windows refuses to rename over a read-only
    file. The new version then gets its own attribute (``apply_attributes``)."""
    try:
        st = stat_path(target, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and is_readonly(st):
        set_readonly(target, False)


def apply_attributes(target: Path, mtime_ns: int | None, readonly: bool | None) -> os.stat_result:
    """Give a file just renamed into place its version's date and read-only attribute and
    return its stat as stored (the date as the file system rounded or clamped it: that is
    what the state records, so the next scan sees no change). A version without a date keeps
    the time of the pull. A file system that refuses (a share without the right) keeps the
    time of the pull too: logged, never a failed pull."""
    try:
        if mtime_ns is not None:
            set_mtime(target, mtime_ns)
        if readonly:
            set_readonly(target, True)
    except OSError as e:
        log.warn("could not set the date or read-only attribute of {path}: {why}",
                 path=str(target), why=e.strerror or str(e))
    return stat_path(target)


# a file to write and the synced version it replaces (None: new here)
Write = tuple[PullWrite, FileRecord | None]


def base_of(old: FileRecord | None) -> Manifest | None:
    """The synced version's manifest: the base a manifest may come as a delta against."""
    if old is None or old.chunks is None:
        return None
    return Manifest(old.content, old.size, old.chunks)


def check_size(write: PullWrite, manifest: Manifest) -> None:
    if manifest.size != write.size:
        raise Unverifiable(f"manifest of {write.path} does not match its size")


def delta_base_for(old: FileRecord | None, manifest: Manifest) -> DeltaBase | None:
    """A modified file whose synced version is here: chunks may come as deltas against it."""
    if old is None or old.chunks is None or old.size <= 0 or old.content == manifest.content:
        return None
    return DeltaBase(old.content, old.size, old.chunks, manifest.chunks)


def partial_dir(directory: Path) -> Path:
    return directory / ".smartsync" / "partial"


def prune_partials(directory: Path) -> None:
    """Drop partial downloads nothing is waiting for (after a complete pull)."""
    folder = partial_dir(directory)
    if osfs.is_dir(folder):
        for name in osfs.list_names(folder):
            osfs.unlink(folder / name, missing_ok=True)


def _keep_partial(path: Path, handle: BinaryIO) -> None:
    """Make what an interrupted download wrote durable for a resume; on any failure (a full
    disk) the partial file is removed instead."""
    try:
        handle.flush()
        sync_file(handle.fileno())
        handle.close()
    except OSError:
        discard_temp(path, handle)


def with_bases(
    need: list[tuple[ChunkRef, int]], base: DeltaBase, source: Path | bytes
) -> list[tuple[str, int] | tuple[str, int, DeltaHint]]:
    """Fetch items naming, per chunk, its lined-up range of the old version read from
    ``source`` (the local file or the base copy's bytes; blocking). A range that cannot be
    read whole is left out: that chunk comes without a delta."""
    out: list[tuple[str, int] | tuple[str, int, DeltaHint]] = []
    handle: BinaryIO | None = None
    try:
        if isinstance(source, Path):
            try:
                handle = osfs.open_binary(source)  # noqa: SIM115  (closed below)
            except OSError:
                return [(chunk.hash, chunk.size) for chunk, _ in need]
        for chunk, offset in need:
            lo, hi = base_range(base, offset, chunk.size)
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


def write_window(
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


def write_and_start_writeback(
    handle: BinaryIO, window: list[ChunkRef], local: Mapping[str, bytes],
    fetched: Mapping[str, bytes],
) -> None:
    """``write_window`` for a large file, then (Linux) ask the kernel to start writing the
    file's dirty pages out, so the fsync before its rename waits for the last window only
    (it took 0.16-0.19 s of a 1.5 s 256 MiB clone). Durability is unchanged: the fsync still
    comes before the rename; this only starts the disk's work earlier."""
    write_window(handle, window, local, fetched)
    handle.flush()
    start_writeback(handle.fileno())
