"""The push: send local changes to the server (docs/protocol.md, "Push").

From the planner's push half: ask the server which chunks it lacks and upload only those, then
commit with a batch key persisted *before* sending (a retry after a lost answer reuses it).
Modified files travel as a manifest delta against their base; content the server already has
(a rename) travels as nothing but its id. The server's refusals arrive as typed exceptions
(client/errors.py) and each is handled by type: a path clash of case becomes a conflict copy,
a refused or locked path waits locally, a finalized engagement keeps everything local, unknown
content is sent again with its whole manifest.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from twisted.internet.defer import Deferred

from smartsyncd.client.casefold import match_folders
from smartsyncd.client.copycontext import (
    EDITED_BASE_MIN_FILE,
    WINDOW_BYTES,
    CopyContext,
    log,
    remote_path_ok,
)
from smartsyncd.client.deltabase import DELTA_SLACK, DeltaBase
from smartsyncd.client.early import Confirmed
from smartsyncd.client.errors import (
    BadChunk,
    Finalized,
    Forbidden,
    Locked,
    MissingChunks,
    PathClash,
    PathRefused,
    ProtocolError,
    ServerRefused,
    UnknownContent,
    UsageError,
)
from smartsyncd.client.inline import InlineUpload
from smartsyncd.client.localfs import read_chunks
from smartsyncd.client.progress import Progress
from smartsyncd.client.pull import case_insensitive
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import ScannedFile, ScanResult
from smartsyncd.client.server import Server
from smartsyncd.client.state import ClientState, FileRecord
from smartsyncd.client.wanted import MISSING_WINDOW, Wanted
from smartsyncd.client.wire import CommitAnswer, CommitChange, DeltaHint, ManifestDelta, UploadItem
from smartsyncd.core.manifest import content_id, make_delta
from smartsyncd.core.model import MTIME_NS_MAX, MTIME_NS_MIN, is_folder
from smartsyncd.core.paths import fold_key
from smartsyncd.core.planner import Plan, PushPut, plan
from smartsyncd.runtime.malloctune import fix_mmap_threshold

# The push's upload of a copy with the default window: 8 MiB per request, two on the wire.
# Each request costs the server an fsync of its pack, an fsync of the shard folder and a
# transaction, and both sides per-request CPU (bench/upload_cpu.py --window; figures in
# bench/RESULTS.md). 16 MiB was ~8% faster but held 3 x 16 MiB (the window being read and two
# bodies) on top of the rest: 8 MiB keeps a 20 GB upload's client under 256 MB (issue 15).
BULK_UPLOAD_WINDOW_BYTES = 8 * 1024 * 1024
BULK_UPLOADS_IN_FLIGHT = 2
READ_SPAN = 1024 * 1024  # reading for upload: back-to-back chunks this many bytes at a time
PUSH_ATTEMPTS = 5
# Uploads up to this many raw bytes go without asking the server which chunks it lacks first:
# asking is what lets a large upload resume, and costs a round trip a small edit can save.
ASK_FIRST_ABOVE = 256 * 1024


class ChunkChanged(Exception):
    """A chunk to upload could not be read back with its hash: the file changed since the
    scan, or cannot be opened now (held by another program: a Windows sharing violation)."""

    def __init__(self, path: str, reason: str = "changed while syncing; sent next time") -> None:
        super().__init__(path)
        self.path = path
        self.reason = reason


@dataclass
class _Batch:
    """One commit attempt: its changes, the chunks to upload for them (by file,
    client/wanted.py), the synced versions deltas line up with, and the puts it covers."""

    changes: list[CommitChange]
    wanted: Wanted
    bases: dict[str, DeltaBase]
    puts: list[PushPut]


class Push:
    """One push of a sync: ``run`` composes, uploads and commits, and settles refusals by
    retrying without what the server will not take (at most ``PUSH_ATTEMPTS`` times)."""

    def __init__(
        self, ctx: CopyContext, api: Server, scan: ScanResult, base: dict[str, FileRecord],
        report: SyncReport, prog: Progress, planned_push: Plan | None = None,
        present: set[str] | None = None,
    ) -> None:
        """``present``: chunk hashes the server confirmed during this sync (early upload)."""
        self.ctx = ctx
        self.api = api
        self.scan = scan
        self.base = base
        self.report = report
        self.prog = prog
        self.present = set() if present is None else present
        # new large files uploaded whole during the scan, path -> content id
        self.sent_files: dict[str, str] = present.files if isinstance(present, Confirmed) else {}
        self.plan = planned_push or plan(scan.entries, base, [], complete=scan.complete,
                ignored=scan.rules.ignores)
        self.planned = {x.path for x in self.plan.push_puts} | {
            x.path for x in self.plan.push_deletes
        }
        self.excluded: set[str] = set()
        self.full: set[str] = set()  # paths to send with a full manifest (server lacks the base)
        # the copy's report a commit carries, given the unsynced count it would leave (issue
        # 15); ``reported``: that count, when the server recorded it with the last commit
        self.fold_report: Callable[[int], Awaitable[dict[str, object]]] | None = None
        self.reported: int | None = None
        # small uploads ride in the commit when the server takes them (client/inline.py)
        self.inline: InlineUpload | None = None
        self._loaded_base: tuple[str, bytes] | None = None

    async def run(self, blocked: Mapping[str, str] | None = None) -> None:
        """Push; ``blocked``: paths checked out by someone else -> why (the edit waits)."""
        ctx, report = self.ctx, self.report
        report.unsynced = len(self.planned)
        for held, why in (blocked or {}).items():
            if held in self.planned:
                self.excluded.add(held)
                report.locked.append(held)
                report.skipped.append((held, why))
        for _attempt in range(PUSH_ATTEMPTS):
            batch = self._compose()
            if batch is None:
                return
            try:
                if not await self._send_chunks(batch):
                    return
            except ChunkChanged as e:
                self.excluded.add(e.path)
                report.skipped.append((e.path, e.reason))
                continue
            # a folder emptied or unmounted since the scan must never turn into deletes
            await ctx.run(ctx.state.check_marker)
            key = await ctx.run(batch_key, ctx.state, batch.changes)
            last_seq = await ctx.last_seq()
            leaves = len(self.planned & self.excluded)
            fold = None if self.fold_report is None else await self.fold_report(leaves)
            try:
                chunks = None if self.inline is None else self.inline.take()
                answer = await self.api.commit(ctx.engagement, key, batch.changes, fold, chunks)
            except ServerRefused as e:
                await ctx.run(ctx.state.clear_pending_batch)  # nothing was applied
                settled = await self._refused(e, batch)
                if settled is None:
                    raise
                if settled:
                    continue
                return
            own = own_head(answer, last_seq)
            await apply_results(ctx, answer, batch.changes, self.scan, self.base, report, own)
            ctx.pulled_through = own
            await ctx.run(ctx.state.clear_pending_batch)
            report.unsynced = len(self.planned & self.excluded)
            self.reported = leaves if answer.reported else None
            return
        raise UsageError("push did not settle after several attempts; try again")

    def _compose(self) -> _Batch | None:
        """The changes of this attempt (deletes first, then puts); None when none is left."""
        report, excluded = self.report, self.excluded
        report.unsynced = len(self.planned & excluded)
        puts = [x for x in self.plan.push_puts if x.path not in excluded]
        # never the delete half of a case-only rename whose put is held back or refused:
        # other copies would delete the file while its new name never arrives
        held_keys = {fold_key(x.path) for x in self.plan.push_puts if x.path in excluded}
        deletes = [
            x for x in self.plan.push_deletes
            if x.path not in excluded and fold_key(x.path) not in held_keys
        ]
        report.unsynced += len(puts) + len(deletes)
        if not puts and not deletes:
            report.unsynced = len(self.planned & excluded)
            return None
        # deletes first: a case-only rename (delete a.txt, put A.txt) must not clash with
        # the name it replaces
        batch = _Batch(
            [CommitChange.delete(d.path, d.base) for d in deletes], Wanted(self.present), {}, puts
        )
        known = {r.content for r in self.base.values()}
        for put in puts:
            self._add_put(batch, put, known)
        return batch if batch.changes else None

    def _add_put(self, batch: _Batch, put: PushPut, known: set[str]) -> None:
        entry = self.scan.entries[put.path]
        old = self.base.get(put.path)
        chunks = entry.chunks if entry.chunks is not None else (old.chunks if old else None)
        if chunks is None:
            self.excluded.add(put.path)
            return
        item = CommitChange(put.path, "put", put.base, put.content, put.size)
        if is_folder(put.content):
            pass  # a folder entry: the id alone (docs/protocol.md, "Folder entries")
        elif put.content in known and put.path not in self.full:
            pass  # the server has this content (rename, copy): only the id travels
        elif self.sent_files.get(put.path) == put.content and put.path not in self.full:
            # a new large file the scan read and uploaded (client/early.py): all its chunks
            # are on the server already
            item = CommitChange(put.path, "put", put.base, manifest=chunks)
        elif old is not None and old.chunks is not None and put.path not in self.full:
            item = replace(item, delta=ManifestDelta(old.content, make_delta(old.chunks, chunks)))
            batch.wanted.add(put.path, chunks, had=old.chunks)
            batch.bases[put.path] = DeltaBase(old.content, old.size, old.chunks, chunks)
        else:
            # the compact form: the server derives content id and size from the manifest
            # (protocol.md, Push step 3)
            item = CommitChange(put.path, "put", put.base, manifest=chunks)
            batch.wanted.add(put.path, chunks)
        batch.changes.append(with_attributes(item, entry))

    async def _send_chunks(self, batch: _Batch) -> bool:
        """Upload what the batch needs; False when the engagement was finalized meanwhile
        (everything stays local)."""
        try:
            self.report.bytes_sent += await self._upload(batch.wanted, batch.bases)
        except (Finalized, Forbidden) as e:  # signed off, or a role that may not write
            self.report.refused = e.message
            return False
        except BadChunk as e:
            if not batch.bases:
                raise
            # a delta the server could not rebuild (a base copy gone bad?): resend the
            # missing chunks whole; everything already stored stays
            log.warn("delta upload refused ({why}); sending whole chunks", why=e.message)
            await self.ctx.run(self.ctx.base_cache.prune, set())
            self.report.bytes_sent += await self._upload(batch.wanted)
        return True

    async def _refused(self, e: ServerRefused, batch: _Batch) -> bool | None:
        """Settle a refused commit: True to try again without what was refused, False to
        stop (finalized), None when this refusal is not for the push to settle."""
        report, path = self.report, e.path
        sent = {c.path for c in batch.changes}
        if isinstance(e, PathClash) and await self._clash_to_conflict(e, sent):
            return True
        if isinstance(e, PathClash) and await self._take_server_folder_spelling(e, sent):
            return True
        if isinstance(e, PathRefused | PathClash) and path is not None and path in sent:
            self._exclude_refused(e, path)
            return True
        if isinstance(e, Locked) and path is not None and path in sent:
            self.excluded.add(path)  # the local edit stays; it syncs after check-in
            report.locked.append(path)
            report.skipped.append((path, e.message))
            return True
        if isinstance(e, Finalized | Forbidden):  # signed off, or a reader: keep it all local
            report.refused = e.message
            return False
        if isinstance(e, UnknownContent) and any(
            x.path == path and is_folder(x.content) for x in batch.puts
        ):
            # a server older than folder entries: the empty folder stays local, reported
            assert path is not None
            self.excluded.add(path)
            report.skipped.append((path, "the server does not sync empty folders"))
            return True
        if self.inline is not None and (
            e.code in ("bad_chunk", "too_large", "bad_request") or isinstance(e, MissingChunks)
        ):
            # the server would not take chunks in the commit (or did not see them: another
            # daemon behind the same name, older): upload them from the next attempt on
            self.inline = None
            if not isinstance(e, MissingChunks):
                return True
        if isinstance(e, UnknownContent | MissingChunks):
            self.full.update(x.path for x in batch.puts if path in (None, x.path))
            self.present.clear()  # ask the server again (collected meanwhile?)
            return True
        return None

    async def _clash_to_conflict(self, e: PathClash, sent: set[str]) -> bool:
        """Another copy created this name first with other case, or renamed the file we
        edited to other case: keep ours as a conflict copy beside it, sent now (not a file
        that never syncs). False when that does not apply or the file changed meanwhile."""
        path, existing, scan = e.path, e.existing, self.scan
        if (
            path is None or path not in sent or path not in scan.entries
            or existing is None or fold_key(existing) != fold_key(path)
        ):
            return False
        entry = scan.entries[path]
        target = await self.ctx.run(self.ctx.conflict_target, existing)
        if not await self.ctx.run(self.ctx.move_if_unchanged, path, target, entry):
            return False
        self.report.conflicts.append(target)
        del scan.entries[path]
        scan.entries[target] = replace(entry, path=target)
        self.plan = plan(scan.entries, self.base, [], complete=scan.complete,
                ignored=scan.rules.ignores)
        self.planned.add(target)
        return True

    async def _take_server_folder_spelling(self, e: PathClash, sent: set[str]) -> bool:
        """A new file written into a folder that another copy renamed in case: on a
        case-insensitive copy the two spellings are one folder, so give the folder the
        server's spelling and send its new files under it (else they would wait for a pull
        to rename the folder, or for ever if nothing renames it). False when that does not
        apply (a case-sensitive copy: there they are two folders)."""
        path, existing = e.path, e.existing
        if path is None or path not in sent or existing is None or "/" not in path:
            return False
        prefix = "/".join(path.split("/")[: existing.count("/") + 1])
        if prefix == existing or fold_key(prefix) != fold_key(existing):
            return False
        if not await case_insensitive(self.ctx):
            return False
        under = [x.path for x in self.plan.push_puts if x.path.startswith(prefix + "/")]
        synced = {fold_key(p) for p in self.base}
        if path not in under or any(fold_key(p) in synced for p in under):
            return False  # this copy renamed the folder itself: refused and reported as before
        moved = under
        try:
            await self.ctx.run(match_folders, self.ctx.directory, existing + "/-")
        except OSError as why:  # a file open inside it (Windows), say: wait for the pull
            log.warn("could not give {folder} the server's spelling {existing}: {why}",
                     folder=prefix, existing=existing, why=why)
            return False
        entries = self.scan.entries
        for old in moved:
            new = existing + old[len(prefix):]
            entries[new] = replace(entries.pop(old), path=new)
            self.planned.discard(old)
            self.planned.add(new)
        log.info("{folder} takes the server's spelling {existing} ({count} new files)",
                 folder=prefix, existing=existing, count=len(moved))
        self.plan = plan(entries, self.base, [], complete=self.scan.complete,
                ignored=self.scan.rules.ignores)
        return True

    def _exclude_refused(self, e: PathRefused | PathClash, path: str) -> None:
        self.excluded.add(path)
        existing = e.existing if isinstance(e, PathClash) else None
        if existing is not None and "/" in path:
            # a folder renamed in case: every file under the new spelling clashes
            depth = existing.count("/") + 1
            prefix = "/".join(path.split("/")[:depth]) + "/"
            if fold_key(prefix) == fold_key(existing + "/") and prefix != existing + "/":
                for x in self.plan.push_puts:
                    if x.path.startswith(prefix) and x.path != path:
                        self.excluded.add(x.path)
                        self.report.skipped.append((x.path, e.message))
        self.report.skipped.append((path, e.message))
        log.warn("server refused {path}: {why}", path=path, why=e.message)

    async def _upload(self, wanted: Wanted, bases: Mapping[str, DeltaBase] | None = None) -> int:
        """Upload the chunks the server lacks; returns bytes sent. Asking first is what makes
        an interrupted upload resume where it stopped. Chunks of a file in ``bases`` whose
        previous version has a base copy travel as deltas against it where that is smaller.
        Asked, read and sent ``MISSING_WINDOW`` chunks at a time (a window's uploads
        finish before the next window is asked about: a chunk repeated later is then found
        present), so memory follows the window, not the file."""
        ctx, prog = self.ctx, self.prog
        total = await ctx.run(wanted.total_bytes)
        if not total:
            return 0
        fix_mmap_threshold()  # 8 MiB windows freed to the system, not kept as heap holes
        prog.start("upload", total)
        sent = 0
        try:
            for window in wanted.windows(MISSING_WINDOW):
                # in the commit: then this window is the only one (it holds every chunk)
                if self.inline is not None and self.inline.fits(total, len(window)):
                    items = await ctx.run(self._read_for_upload, list(window.items()), bases or {})
                    held = await self.inline.hold(ctx.run, items)
                    if held is not None:  # else over what a commit carries, encoded: upload
                        sent += held
                        prog.advance(total)
                        continue
                if total <= ASK_FIRST_ABOVE:  # small: a round trip saved outweighs resending
                    missing = list(window)
                else:
                    missing = await self.api.missing_chunks(ctx.engagement, list(window))
                lacking = set(missing)
                prog.advance(sum(where[2] for h, where in window.items() if h not in lacking))
                if missing:
                    sent += await self._upload_window(missing, window, bases or {})
        finally:
            prog.finish()
            self._loaded_base = None
        return sent

    async def _upload_window(
        self, missing: list[str], wanted: Mapping[str, tuple[str, int, int]],
        bases: Mapping[str, DeltaBase],
    ) -> int:
        ctx, prog = self.ctx, self.prog
        sent = 0
        # a copy opened with a smaller window (low memory, tests) keeps it
        limit = BULK_UPLOAD_WINDOW_BYTES if ctx.window_bytes >= WINDOW_BYTES else ctx.window_bytes
        # Pipelined: while up to BULK_UPLOADS_IN_FLIGHT windows are on the wire (and being
        # verified and stored by the server), the next one is read from disk.
        in_flight: list[tuple[int, Deferred[int]]] = []
        try:
            for batch in _batches(missing, lambda h: wanted[h][2], limit):
                data = await ctx.run(self._read_for_upload, [(h, wanted[h]) for h in batch], bases)
                while len(in_flight) >= BULK_UPLOADS_IN_FLIGHT:
                    raw, pending = in_flight.pop(0)
                    sent += await pending
                    prog.advance(raw)
                raw = sum(len(item[1]) for item in data)
                # an iterator: the window's raw bytes are dropped once encoded into its body
                upload = Deferred.fromCoroutine(self.api.upload_chunks(ctx.engagement, iter(data)))
                del data
                in_flight.append((raw, upload))
            while in_flight:
                raw, pending = in_flight.pop(0)
                sent += await pending
                prog.advance(raw)
        finally:
            for _, pending in in_flight:  # only left after a failure: stop the rest quietly
                pending.addErrback(lambda _: None)
                pending.cancel()
        return sent

    def _read_for_upload(
        self, items: list[tuple[str, tuple[str, int, int]]], bases: Mapping[str, DeltaBase]
    ) -> list[UploadItem]:
        out: list[UploadItem] = []
        recent = self.ctx.scanner.recent
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
            # one is page-faulted in anew each time
            try:
                got = read_chunks(self.ctx.local(path), wanted, max_span=READ_SPAN)
            except OSError as e:  # e.g. open in Excel (Windows sharing violation 32/33)
                raise ChunkChanged(
                    path, f"cannot read now ({e.strerror or e}); retried next sync"
                ) from None
            for digest in got:
                if got[digest] is None:
                    raise ChunkChanged(path)
            read.update(got)
        for digest, (path, offset, size) in items:
            data = read.get(digest) or recent.get(digest)
            if data is None:
                raise ChunkChanged(path)
            hint = self._delta_hint(bases.get(path), offset, size)
            out.append((digest, data) if hint is None else (digest, data, hint))
        return out

    def _delta_hint(self, base: DeltaBase | None, offset: int, size: int) -> DeltaHint | None:
        """The range of the previous version that lines up with a new chunk (blocking)."""
        cache = self.ctx.base_cache
        if base is None or not cache.has(base.content):
            return None
        if self._loaded_base is None or self._loaded_base[0] != base.content:
            old = cache.load(base.content, base.size)
            if old is None:
                return None
            self._loaded_base = (base.content, old)
        old = self._loaded_base[1]
        start = offset - base.shift(offset)
        lo = max(0, min(start - DELTA_SLACK, len(old) - 1))
        hi = min(len(old), max(start + size + DELTA_SLACK, lo + 1))
        return DeltaHint(base.content, lo, old[lo:hi])


async def apply_results(
    ctx: CopyContext, answer: CommitAnswer, changes: Sequence[CommitChange], scan: ScanResult,
    base: dict[str, FileRecord], report: SyncReport, own: int | None = None,
) -> tuple[list[FileRecord], list[str]]:
    """Record what the commit did; ``own`` (see ``own_head``) moves last_seq past our own
    records so the pull does not fetch them back. Returns the rows written and the paths
    dropped."""
    puts: list[FileRecord] = []
    drops: list[str] = []
    for item, change in zip(answer.results, changes, strict=True):
        path, status = change.path, item.status
        if change.kind == "delete":
            if status in ("applied", "unchanged"):
                drops.append(path)
                report.deleted_remote += status == "applied"
            continue  # stale: the pull brings the newer version back
        entry = scan.entries[path]
        old = base.get(path)
        chunks = entry.chunks if entry.chunks is not None else (old.chunks if old else None)
        if status == "applied" and item.seq is not None:
            puts.append(ctx.record(entry, item.seq, path, chunks))
            report.uploaded += 1
        elif status == "unchanged" and item.current_seq is not None:
            puts.append(ctx.record(entry, item.current_seq, path, chunks))
        elif status == "conflict" and item.seq is not None:
            cpath = item.conflict_path
            if cpath is None or not remote_path_ok(cpath):
                raise ProtocolError("commit answer has an invalid conflict_path")
            report.conflicts.append(cpath)
            log.info("conflict: {path} kept as {conflict_path}", path=path, conflict_path=cpath)
            # our version now lives at cpath on the server: move the local file there too,
            # so the pull writes the other version at path without a second copy
            if await ctx.run(ctx.move_if_unchanged, path, cpath, entry):
                puts.append(ctx.record(entry, item.seq, cpath, chunks))
                drops.append(path)
    await ctx.run(ctx.state.update, puts, drops, own)
    edited = [(r.path, r.content, r.size) for r in puts if r.path in base]
    await ctx.run(ctx.keep_bases, edited, EDITED_BASE_MIN_FILE)
    await ctx.run(ctx.keep_bases, [(r.path, r.content, r.size) for r in puts if r.path not in base])
    return puts, drops


def batch_key(state: ClientState, changes: Sequence[CommitChange]) -> str:
    """The idempotency key (blocking): reused when the same changes are sent again after a
    lost answer; persisted before the commit is sent."""
    # a manifest counts by its content id, which names it: a large one is never JSON here
    wire = [
        c.to_json(with_manifest=False) | ({} if c.manifest is None else {"manifest": content_id(c.manifest)})
        for c in changes
    ]
    digest = hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()
    pending = state.pending_batch()
    if pending is not None and pending[1] == digest:
        return pending[0]
    batch = str(uuid.uuid4())
    state.set_pending_batch(batch, digest)
    return batch


def own_head(answer: CommitAnswer, last_seq: int) -> int | None:
    """The commit's head when the records after ``last_seq`` up to it are exactly this commit's
    own (every change applied, their seqs contiguous from last_seq + 1): then there is nothing
    in that range to pull, and last_seq may move to the head at once. None otherwise (a
    conflict, a stale delete, an unchanged put, or another copy's commit in between)."""
    seqs = []
    for item in answer.results:
        if item.status != "applied" or item.seq is None:
            return None
        seqs.append(item.seq)
    return answer.head if sorted(seqs) == list(range(last_seq + 1, answer.head + 1)) else None


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


def with_attributes(item: CommitChange, entry: ScannedFile) -> CommitChange:
    """``item`` carrying the local file's date and read-only attribute (issue 16). A date the
    protocol cannot carry (before 1970; -1, the stat cache's "not trusted") is left out."""
    mtime_ns = entry.mtime_ns if MTIME_NS_MIN <= entry.mtime_ns <= MTIME_NS_MAX else None
    return replace(item, mtime_ns=mtime_ns, readonly=entry.readonly)
