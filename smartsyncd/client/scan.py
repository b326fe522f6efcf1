"""The scan of a sync: walk the folder in steps against the synced state, feeding new small
files to the early upload (client/early.py) and committing them in large batches meanwhile;
then remember the stat of files whose content turned out unchanged. What is left to send is
the push's (client/push.py)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.copycontext import SCAN_STEP, CopyContext, log
from smartsyncd.client.early import STREAM_WINDOW_BYTES, UPLOAD_WINDOW_BYTES, EarlyUpload
from smartsyncd.client.errors import NetworkError, ServerRefused
from smartsyncd.client.localfs import atomic_write_bytes
from smartsyncd.client.newfiles import FileStream
from smartsyncd.client.push import apply_results, own_head, with_attributes
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import FileChanging, ScanJob, ScannedFile, ScanResult
from smartsyncd.client.server import Server
from smartsyncd.client.state import STATE_DIR, FileRecord
from smartsyncd.client.wire import CommitChange
from smartsyncd.core.planner import Plan, plan

# in the state folder: this copy began a chunk upload once (``first_upload``)
UPLOAD_BEGUN = "upload-begun"


async def scan_and_upload(
    ctx: CopyContext, api: Server, base: dict[str, FileRecord], report: SyncReport
) -> tuple[ScanResult, EarlyUpload]:
    """Scan in steps; chunks of new small files upload while later steps run, and new
    files whose chunks the server has are committed in large batches meanwhile
    (``commit_early``). ``base`` is updated with what those commits recorded."""
    api.copy_id = ctx.copy_id  # commits name this copy
    job = await ctx.run(ctx.scanner.begin, base)
    await ctx.run(ctx.state.save_spellings, job.result.spellings)
    recorded: dict[str, FileRecord | None] = {}
    moved: list[bool] = []

    async def commit(entries: list[ScannedFile]) -> bool:
        outcome = await commit_early(ctx, api, entries, report)
        if outcome is None:
            return False  # refused or unknown: nothing recorded, the push sends them
        puts, drops, clean = outcome
        recorded.update((r.path, r) for r in puts)
        recorded.update((path, None) for path in drops)
        if not clean:
            moved.append(True)  # conflict copies moved files: scan again
        return clean

    early = EarlyUpload(
        api, ctx.engagement, base, window=min(ctx.window_bytes, UPLOAD_WINDOW_BYTES),
        stream_window=min(ctx.window_bytes, STREAM_WINDOW_BYTES),
        commit=commit, commit_files=ctx.early_commit_files,
        blind=bool(job.todo) and not base and await ctx.last_seq() == 0
        and await ctx.run(first_upload, ctx.directory),
    )
    job.defer_new = True
    try:
        while not job.done:
            early.offer(await ctx.run(job.step, SCAN_STEP))
        # new large files after the small ones: the small files' windows go first, so they
        # are confirmed (and committed) while the large files' windows are on the wire
        for path, st in job.take_deferred():
            await upload_new_file(ctx, job, early, path, st)
        await early.finish()
    except BaseException:
        early.abort()
        raise
    scan = job.result
    for path, record in recorded.items():
        if record is None:
            base.pop(path, None)
            continue
        base[path] = record
        entry = scan.entries.get(path)
        if entry is not None and entry.content == record.content:
            scan.recorded.add(path)  # recorded just now: no stat cache refresh
    if moved:
        scan = await ctx.run(ctx.scanner.scan, base)
    return scan, early


def first_upload(directory: Path) -> bool:
    """Whether this copy never began an upload (blocking); marks that it has. Only then may a
    copy with nothing synced upload without asking first: after an interrupted first
    upload, asking is what makes it resume where it stopped."""
    marker = directory / STATE_DIR / UPLOAD_BEGUN
    if osfs.exists(marker):
        return False
    atomic_write_bytes(marker, b"")  # durable: a crash must not make the next upload blind
    return True


async def upload_new_file(
    ctx: CopyContext, job: ScanJob, early: EarlyUpload, path: str, st: os.stat_result
) -> None:
    """Read a new large file once, its chunks going to the early upload as they are hashed
    (a window at a time: the scan waits while the upload has a window in hand). A file that
    cannot be read this way, changed while read, or looks like a copy of a synced one is
    examined the usual way instead (the push then sends what it needs)."""
    new = early.begin_file()
    with FileStream(ctx.scanner, path) as stream:
        first = True
        try:
            while not stream.done:
                await early.room()
                chunks = await ctx.run(stream.read, early.room_bytes())
                if first and chunks and not early.wants(path, chunks[0][0]):
                    break  # its first chunk begins a synced file: hashed the usual way
                first = False
                early.offer_chunks(new, chunks)
            else:
                job.result.entries[path] = entry = await ctx.run(stream.finish)
                early.end_file(new, entry)
                return
        except (FileChanging, OSError):
            pass
    early.drop_file(new)
    await ctx.run(job.examine, path, st)


async def commit_early(
    ctx: CopyContext, api: Server, entries: list[ScannedFile], report: SyncReport
) -> tuple[list[FileRecord], list[str], bool] | None:
    """Commit new files (no synced base, chunks confirmed on the server) during the scan,
    as one atomic batch. None when nothing was recorded (the server refused the batch, or
    the answer was lost: the push then sends these files again, and a batch the server
    did apply answers "unchanged"). Else the rows written, the paths dropped, and whether
    every file was simply applied (a conflict moves local files: the caller rescans)."""
    changes = [
        with_attributes(CommitChange(e.path, "put", None, manifest=e.chunks or ()), e) for e in entries
    ]
    await ctx.run(ctx.state.check_marker)
    last_seq = await ctx.last_seq()
    try:
        answer = await api.commit(ctx.engagement, str(uuid.uuid4()), changes)
    except (ServerRefused, NetworkError) as e:
        log.info("early commit not made ({why}); the push sends these files", why=str(e))
        return None
    scan = ScanResult(entries={e.path: e for e in entries})
    puts, drops = await apply_results(
        ctx, answer, changes, scan, {}, report, own_head(answer, last_seq)
    )
    return puts, drops, answer.all_applied


async def refresh_stat_cache(
    ctx: CopyContext, scan: ScanResult, base: dict[str, FileRecord]
) -> None:
    """Files read this scan whose content is the synced one (touched, or racily clean):
    remember their stat so the next scan need not read them again."""
    fresh: list[FileRecord] = []
    for path, entry in scan.entries.items():
        old = base.get(path)
        if (
            entry.hashed and old is not None and entry.content == old.content
            and path not in scan.recorded
        ):
            record = FileRecord(
                path=path, seq=old.seq, content=old.content, size=old.size,
                mtime_ns=ctx.cache_mtime(entry.mtime_ns), inode=entry.inode,
                chunks=entry.chunks,
            )
            fresh.append(record)
            base[path] = record
    if fresh:
        await ctx.run(ctx.state.update, fresh, ())


def pending(
    scan: ScanResult, base: dict[str, FileRecord], p: Plan | None = None
) -> tuple[list[str], datetime | None]:
    """Local changes not yet on the server, and the oldest edit time among them."""
    if p is None:
        p = plan(scan.entries, base, [], complete=scan.complete,
                ignored=scan.rules.ignores)
    paths = [x.path for x in p.push_puts] + [x.path for x in p.push_deletes]
    mtimes = [scan.entries[x.path].mtime_ns for x in p.push_puts if x.path in scan.entries]
    since = datetime.fromtimestamp(min(mtimes) / 1e9, UTC) if mtimes else None
    return paths, since


async def survey(
    ctx: CopyContext, api: Server, base: dict[str, FileRecord], report: SyncReport
) -> tuple[ScanResult, EarlyUpload, Plan, list[str], datetime | None]:
    """A sync's look at the folder: scan (uploading early), refresh the stat cache and plan
    the push. The scan, its early upload, the push plan, the paths waiting and the oldest
    edit among them."""
    scan, early = await scan_and_upload(ctx, api, base, report)
    await refresh_stat_cache(ctx, scan, base)
    push_plan = plan(scan.entries, base, [], complete=scan.complete, ignored=scan.rules.ignores)
    waiting, since = pending(scan, base, push_plan)
    return scan, early, push_plan, waiting, since
