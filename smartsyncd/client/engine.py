"""The client's sync engine: one local copy of an engagement (``SyncCopy``).

``clone`` materializes the server's snapshot; ``sync`` pushes local changes then pulls remote
ones; ``status`` says what would move; ``watch`` syncs continuously. Decisions come from the
pure planner (core/planner.py); ``SyncCopy`` coordinates the parts that do the I/O around it,
each in its own module over one ``CopyContext`` (client/copycontext.py):

- scan (client/scan.py, client/early.py): the folder is scanned in steps; chunks of new small
  files upload meanwhile and are committed in large batches.
- push (client/push.py): what the server lacks is uploaded and committed under a batch key
  persisted before sending; refusals are settled by type.
- pull (client/pull.py, client/pullwrite.py): the log from ``last_seq``, each file re-checked
  against its base right before it is replaced; ``last_seq`` moves after files are durable.
- server contact (client/contact.py): the copy's unsynced count, locks and sign-off state;
  a small edit's commit carries that report instead (client/onerequest.py).
- watch (client/watch.py): sync again on a server notification or a local change.

Errors are never deletions: a missing marker or folder stops the sync, an unreadable file is
"unknown", and an exception leaves files as they are. Blocking work (scanning, hashing, file
writes, SQLite) runs through ``run_blocking`` (a thread).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

from smartsyncd.client import contact, osfs, reconcile
from smartsyncd.client.chunkindex import ChunkIndex
from smartsyncd.client.clonestart import start_clone
from smartsyncd.client.copycontext import (
    EARLY_COMMIT_FILES,
    SCAN_STEP,
    WINDOW_BYTES,
    CopyContext,
    RunBlocking,
    log,
)
from smartsyncd.client.copylock import CopyLock, begin_sync, end_sync
from smartsyncd.client.errors import HistoryDiverged, UsageError
from smartsyncd.client.inline import InlineUpload
from smartsyncd.client.localfs import fsync_dir
from smartsyncd.client.onerequest import (
    Found,
    Offer,
    keep_offer,
    offered,
    push_alone,
    read_offer,
    small_push,
)
from smartsyncd.client.progress import NullProgress, Progress
from smartsyncd.client.pull import CHANGES_PAGE, pull
from smartsyncd.client.pullbatch import (
    ask_first_manifests,
    clone_writes,
    drop_asked,
    fired,
    write_groups,
)
from smartsyncd.client.pullwrite import FileWriter, Write, prune_partials
from smartsyncd.client.push import Push
from smartsyncd.client.reports import StatusReport, SyncReport
from smartsyncd.client.scan import pending, survey
from smartsyncd.client.scanner import Scanner, ScanResult, load_rules
from smartsyncd.client.server import Server
from smartsyncd.client.serverrules import (
    current_rules,
    read_cache,
    read_cached,
    write_cached,
)
from smartsyncd.client.state import STATE_DIR, ClientState, CopyMeta, FileRecord, StateError
from smartsyncd.client.verify import RootServer, VerifyReport, verify_copy
from smartsyncd.client.watch import Reachability, Watch
from smartsyncd.client.wipe import refuse_if_wiping
from smartsyncd.client.wire import CopyContact
from smartsyncd.core.ignore import rules_etag
from smartsyncd.core.model import Change, Manifest
from smartsyncd.core.planner import plan
from smartsyncd.runtime.gcthreshold import raised_gen0_threshold

_CONFLICT_RE = re.compile(r" \(conflict .+ \d{4}-\d{2}-\d{2} \d{4}(?: \d+)?\)[^/()]*$")
# Cyclic GC while a sync runs: a first sync of thousands of small files keeps tens of thousands
# of objects alive (scan entries, state rows, change lists), and with Python's default gen-0
# threshold of 700 the collector ran often, each pass also walking the survivors
# (bench/small_profile.py; figures in bench/RESULTS.md). While a sync runs the gen-0 threshold
# is at least this; the previous thresholds come back when the last running sync of the
# process ends (garbage cycles are still collected, only less often).
SYNC_GC_THRESHOLD = 20_000


def fewer_gc_passes() -> AbstractContextManager[None]:
    """Raise the gen-0 GC threshold to ``SYNC_GC_THRESHOLD`` while a sync runs."""
    return raised_gen0_threshold(SYNC_GC_THRESHOLD)


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


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
        meta = state.meta()
        self.ctx = CopyContext(
            directory=directory, state=state, run=run_blocking or deferToThread,
            scanner=scanner or Scanner(directory), clock=clock or _default_clock(),
            user=meta.user, engagement=meta.engagement, copy_id=meta.copy_id,
            window_bytes=window_bytes, early_commit_files=EARLY_COMMIT_FILES,
        )
        self.ctx.scanner.spellings = state.spellings()  # decomposed names kept as spelled
        self.directory = directory
        self.state = state
        # held while open (client/copylock.py); None: opened read-only (shared) or unlocked
        self.lock = lock
        self.read_only = False
        self.clone_report: SyncReport | None = None  # what ``clone`` wrote and skipped
        self.server_url = meta.server_url
        self.engagement = meta.engagement
        self.user = meta.user
        self.copy_id = meta.copy_id
        self.clock = self.ctx.clock
        self._run: RunBlocking = self.ctx.run

    # settings a caller may change after opening (tests, benchmarks, an embedding app)
    @property
    def scanner(self) -> Scanner:
        return self.ctx.scanner

    @scanner.setter
    def scanner(self, scanner: Scanner) -> None:
        scanner.spellings = self.ctx.scanner.spellings
        self.ctx.scanner = scanner

    @property
    def window_bytes(self) -> int:
        return self.ctx.window_bytes

    @window_bytes.setter
    def window_bytes(self, value: int) -> None:
        self.ctx.window_bytes = value

    @property
    def early_commit_files(self) -> int:
        return self.ctx.early_commit_files

    @early_commit_files.setter
    def early_commit_files(self, value: int) -> None:
        self.ctx.early_commit_files = value

    @property
    def case_insensitive(self) -> bool | None:
        """Whether the folder ignores case (None until the first pull probes it)."""
        return self.ctx.case_insensitive

    @case_insensitive.setter
    def case_insensitive(self, value: bool | None) -> None:
        self.ctx.case_insensitive = value

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
        refuse_if_wiping(path)  # a half-wiped copy must never sync (client/wipe.py)
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
        local_rules = await run(load_rules, path, [])
        # the snapshot checks access before anything is created; the first chunks and the
        # rules come beside it (client/clonestart.py)
        begun = await start_clone(api, engagement, window_bytes)
        (head, files), rules = begun.snapshot, begun.rules
        prog = progress or NullProgress()
        prog.start("download", sum(f.size for f in files if f.content is not None))
        report = SyncReport()
        writes = clone_writes(files, local_rules.with_engagement(rules).ignores, report)
        # carried by the snapshot, or on the wire while the copy is made (issue 15), as the
        # first small files' chunks are
        asked: Deferred[dict[str, Manifest]] | None = ask_first_manifests(
            api, engagement, writes, window_bytes)
        chunks = begun.chunks(api, engagement, writes, window_bytes)
        registered: Deferred[None] | None = None
        try:
            meta = CopyMeta(api.base_url, engagement, (await api.session()).user,
                            str(uuid.uuid4()))
            state = await run(ClientState.create, path, meta)
            try:
                lock = await run(CopyLock.acquire, path)
            except BaseException:
                state.close()
                raise
        except BaseException:
            drop_asked(asked)
            drop_asked(chunks)
            prog.finish()
            raise
        copy = cls(path, state, clock=clock, run_blocking=run, window_bytes=window_bytes,
                   lock=lock)
        try:
            await run(begin_sync, path)
            copy.scanner.engagement_rules = rules
            if begun.answered:
                await run(write_cached, path / STATE_DIR, rules)
            # on the session's connection: not a third one beside the chunks; the large
            # files' first window waits for it (pullbatch.write_groups ``hold``)
            registered = Deferred.fromCoroutine(contact.register(copy.ctx, api))
            await copy._clone_files(api, head, writes, report, prog, asked, fired(registered),
                                    chunks)
            asked = chunks = None
            await registered
            await reconcile.after_clone(copy.state, run, api.snapshot_history)
        except BaseException:
            drop_asked(asked)
            drop_asked(chunks)
            drop_asked(registered)
            prog.finish()
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
        self, api: Server, head: int, writes: list[Write], report: SyncReport, prog: Progress,
        asked: Deferred[dict[str, Manifest]] | None, hold: Deferred[None],
        chunks: Deferred[dict[str, bytes]] | None,
    ) -> None:
        writer = FileWriter(self.ctx, api, report, prog)
        try:
            await write_groups(writer, writes, ChunkIndex(), asked, hold, chunks)
        finally:
            prog.finish()
        # a file that did not fit on the disk: the next sync follows the log from the start
        # (files written now are recognised by their state rows) so it arrives then
        await self._run(self.state.update, (), (), 0 if writer.no_room else head)
        await self._run(end_sync, self.directory)
        self.clone_report = report

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
        api.copy_id = self.copy_id  # from the first request: a wipe order comes before any upload
        api.keeper = reconcile.StateHistory(self.state, self._run)
        with fewer_gc_passes():
            try:
                return await self._sync(api, progress)
            except HistoryDiverged as e:  # the server was restored: client/reconcile.py
                await reconcile.reconcile(self.state, self._run, self.engagement, e)
                return await self._sync(api, progress)

    async def _sync(self, api: Server, progress: Progress | None) -> SyncReport:
        ctx, prog, report = self.ctx, progress or NullProgress(), SyncReport()
        ctx.pulled_through = None
        await self._run(self.state.check_marker)
        await self._begin_sync()
        asked = await self._start_with_kept_rules(api)
        offer = await self._run(read_offer, self.directory)
        api.stream_chunks = api.stream_chunks or await self._run(self.state.takes_zstd_uploads)
        base: dict[str, FileRecord] = await self._run(self.state.all_files)
        found = Found(*await survey(ctx, api, base, report))
        pushed: Push | None = None
        answer: CopyContact | None = None
        conflicts = len(report.conflicts)
        if offer is not None and offer.url == api.base_url and small_push(
            found.plan, found.scan.entries, base, offer.raw or offer.inline
        ):
            # a small edit: the commit carries the report and is the sync's one request
            pushed, answer = await push_alone(
                ctx, api, offer, found, base, report, prog, self.scanner.engagement_rules)
        if pushed is None:
            # the report first (its answer may have come with a refused commit: then no
            # request more than today), then the push it lets this sync decide
            found, answer, reported = await self._report_and_push(
                api, offer, answer, asked, found, base, report, prog,
                len(report.conflicts) > conflicts)
        else:
            reported = len(found.waiting) if pushed.reported is None else pushed.reported
        await pull(ctx, api, report, prog)
        if (answer is not None or pushed is not None) and report.unsynced != reported:
            since = found.since if report.unsynced else None
            await self._report(api, report.unsynced, since, offer)
        await self._finish_sync(report, found.scan)
        return report

    async def _report(
        self, api: Server, unsynced: int, since: datetime | None, offer: Offer | None
    ) -> CopyContact | None:
        """The copy report; what its answer offers is kept for the next run (issue 15)."""
        answer = await contact.contact(self.ctx, api, unsynced, since)
        if answer is not None and offered(api, answer) != offer:
            await self._run(keep_offer, self.directory, offered(api, answer))
        return answer

    async def _report_and_push(
        self, api: Server, offer: Offer | None, answer: CopyContact | None, asked: bool,
        found: Found, base: dict[str, FileRecord], report: SyncReport, prog: Progress,
        moved: bool = False,
    ) -> tuple[Found, CopyContact | None, int]:
        """The copy report (unless ``answer`` came already), then the push its answer lets this
        sync decide: locked paths wait, a finalized engagement keeps everything local, newer
        rules are fetched and the folder scanned again first (also when ``moved``: files were
        moved aside). The look at the folder the push went by, the answer, and the unsynced count
        the server has."""
        ctx = self.ctx
        if answer is None:
            answer = await self._report(api, len(found.waiting), found.since, offer)
        elif offered(api, answer) != offer:  # a refused commit's answer: kept as a report's
            await self._run(keep_offer, self.directory, offered(api, answer))
        if answer is not None and answer.head is not None and answer.head == await ctx.last_seq():
            ctx.pulled_through = answer.head  # nothing new on the server: the pull asks nothing
        if await self._rules_moved(api, answer.ignore_etag if answer else None, asked) or moved:
            report.bytes_sent += found.early.bytes_sent  # the engagement's rules changed: rescan
            found = Found(*await survey(ctx, api, base, report))
        report.bytes_sent += found.early.bytes_sent
        report.skipped.extend(found.scan.skipped)
        report.skipped.extend(found.scan.errors)
        finalized = answer.finalized if answer else None
        waiting = found.waiting
        reported = len(waiting)  # the unsynced count the server has
        if finalized:  # read-only: nothing to push; local changes stay local
            report.refused = finalized.describe() if waiting else None
            report.unsynced = len(waiting)
        else:
            push = Push(ctx, api, found.scan, base, report, prog, found.plan,
                        present=found.early.present)
            if answer is not None:  # the report after the push rides in its commit (issue 15)
                push.fold_report = partial(contact.folded, ctx, since=found.since,
                                           keyed=answer.keyed)
                push.inline = (InlineUpload(answer.inline, answer.inline_raw)
                               if answer.inline else None)
            await push.run(contact.blocked(self.user, answer, waiting))
            reported = reported if push.reported is None else push.reported
        return found, answer, reported

    async def _finish_sync(self, report: SyncReport, scan: ScanResult) -> None:
        self.scanner.forget_recent()
        await self._run(self.ctx.prune_bases)
        await self._run(prune_partials, self.directory)
        if report.downloaded or report.deleted_local or report.conflicts:
            report.conflicts_left = len(await self._run(self.conflicts))
        else:  # the folder is as scanned: no second walk
            report.conflicts_left = sum(1 for p in scan.files if _CONFLICT_RE.search(p))
        report.last_seq = await self.ctx.last_seq()
        await self._run(end_sync, self.directory)  # a clean end: no temp file of ours is left
        log.info(
            "sync of {engagement}: {uploaded} up ({bytes_sent} bytes), {downloaded} down, "
            "{conflicts} new conflict copies, {skipped} skipped",
            engagement=self.engagement, uploaded=report.uploaded, bytes_sent=report.bytes_sent,
            downloaded=report.downloaded, conflicts=len(report.conflicts),
            skipped=len(report.skipped),
        )

    async def _begin_sync(self) -> None:
        """Refuse a read-only copy; remove what an interrupted sync left (its temp files:
        the lock says no one else is writing here) and mark this sync as in progress."""
        if self.read_only:
            raise UsageError(f"{self.directory} was opened read-only: it cannot sync")
        await self._run(begin_sync, self.directory)

    async def _load_engagement_rules(self, api: Server) -> None:
        """Fetch the engagement's published ignore rules (conditionally, on the kept set's
        ETag) for the scan and pull; the kept ones when unchanged or the fetch fails."""
        fetch = partial(api.ignore_rules, self.engagement)
        state_dir = self.directory / STATE_DIR
        self.scanner.engagement_rules = await current_rules(fetch, state_dir, self._run)

    async def _start_with_kept_rules(self, api: Server) -> bool:
        """Scan with the rules the copy kept; fetch them first only when none were kept.
        Whether the server was asked."""
        found, kept = await self._run(read_cache, self.directory / STATE_DIR)
        if found:
            self.scanner.engagement_rules = kept
            return False
        await self._load_engagement_rules(api)
        return True

    async def _rules_moved(self, api: Server, etag: str | None, asked: bool) -> bool:
        """Whether the engagement's rules differ from the set this sync scanned with. The
        copy report's answer names their ETag (``etag``; None: an older server or no answer:
        ask then, unless this sync already did); newer rules are fetched before anything is
        pushed, so nothing the current rules ignore is uploaded or deleted."""
        before = self.scanner.engagement_rules
        if etag == rules_etag(before.digest if before else None) or (etag is None and asked):
            return False
        await self._load_engagement_rules(api)
        after = self.scanner.engagement_rules
        return (after.digest if after else None) != (before.digest if before else None)

    async def _pull(self, api: Server, report: SyncReport, prog: Progress) -> None:
        """Only the pull half of a sync."""
        await pull(self.ctx, api, report, prog)

    async def status(self, api: Server) -> StatusReport:
        """What would move (no file, state or server record is changed)."""
        api.copy_id = self.copy_id
        await self._run(self.state.check_marker)
        if self.scanner.engagement_rules is None:  # a fresh process: the last sync's rules
            self.scanner.engagement_rules = await self._run(read_cached, self.directory / STATE_DIR)
        base: dict[str, FileRecord] = await self._run(self.state.all_files)
        scan: ScanResult = await self._run(self.scanner.scan, base)
        last_seq = await self.ctx.last_seq()
        changes: list[Change] = []
        since, head = last_seq, last_seq
        while True:
            head, page, more = await api.changes(self.engagement, since, CHANGES_PAGE)
            changes.extend(page)
            if not page or not more:
                break
            since = page[-1].seq
        p = plan(scan.entries, base, changes, complete=scan.complete,
                ignored=scan.rules.ignores)
        waiting, unsynced_since = pending(scan, base)
        answer = await contact.contact(self.ctx, api, len(waiting), unsynced_since)
        blocked = contact.blocked(self.user, answer, waiting)
        return StatusReport(
            locked=[{"path": path, "lock": why} for path, why in sorted(blocked.items())],
            finalized=answer.finalized.to_json() if answer and answer.finalized else None,
            deadline=answer.deadline.to_json() if answer and answer.deadline else None,
            to_upload=[x.path for x in p.push_puts],
            to_delete_remote=[x.path for x in p.push_deletes],
            to_download=[x.path for x in p.pull_writes],
            to_delete_local=[x.path for x in p.pull_deletes],
            conflicts=[x.path for x in p.conflicts],
            skipped=scan.skipped + scan.errors,
            ignored=sorted(scan.ignored),
            ignored_by={p: scan.rules.source(p) or "" for p in scan.ignored},
            conflicts_left=len(await self._run(self.conflicts)),
            last_seq=last_seq,
            head=head,
        )

    async def verify(
        self, api: RootServer, *, seq: int | None = None, expected_key: str | None = None
    ) -> VerifyReport:
        """Prove this copy identical to the server's signed content root at ``seq`` (default:
        its head) or list what differs; reads every file afresh, downloads none
        (client/verify.py). ``expected_key``: the signing key's fingerprint, else the one
        this copy accepted first."""
        return await verify_copy(self.ctx, api, seq=seq, expected_key=expected_key)

    # -- watch ---------------------------------------------------------------------------------

    async def watch(
        self,
        api: Server,
        stop: Deferred[None],
        on_report: Callable[[SyncReport], object],
        *,
        progress: Progress | None = None,
        poll_interval: float = 1.0,
        long_poll: float = 30.0,
        retry_delay: float = 5.0,
        native_watch: bool = True,
        on_status: Callable[[Reachability], object] | None = None,
    ) -> None:
        """Sync, then wait for a server notification or a local change, and repeat until
        ``stop`` fires (client/watch.py; ``native_watch=False`` forces the stat walk).
        ``on_status`` hears when the server stops answering and when it is back."""

        api.copy_id = self.copy_id  # the long-polls name the copy too: a wipe order ends the watch

        async def sync_once(api: Server, progress: Progress | None) -> SyncReport:
            return await self.sync(api, progress=progress)

        await Watch(self.ctx, sync_once, on_status).run(
            api, stop, on_report, progress=progress, poll_interval=poll_interval,
            long_poll=long_poll, retry_delay=retry_delay, native_watch=native_watch,
        )


def _prepare_empty_dir(path: Path) -> None:
    if osfs.exists(path):
        if not osfs.is_dir(path):
            raise UsageError(f"{path} exists and is not a folder")
        if any(osfs.list_names(path)):
            raise UsageError(f"{path} is not empty: clone into a new or empty folder")
        return
    osfs.make_folders(path)
    fsync_dir(path.parent)


__all__ = [
    "SCAN_STEP", "SYNC_GC_THRESHOLD", "StateError", "StatusReport", "SyncCopy",
    "SyncReport", "fewer_gc_passes",
]
