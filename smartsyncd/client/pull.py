"""The pull: follow the server's log from ``last_seq`` page by page (docs/protocol.md,
"Pull"). Each page is planned against the files as they are now (each re-checked against its
base right before it is replaced: an unpushed local edit becomes a conflict copy, never
overwritten); files are written by ``pullwrite.FileWriter``, many at a time (``pullbatch``); ``last_seq`` moves only after
they are durable. On a case-insensitive folder, case-only renames apply in place."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from smartsyncd.client.casefold import probe_case_insensitive, rename_case, stored_spelling
from smartsyncd.client.copycontext import CopyContext, log, remote_path_ok
from smartsyncd.client.localfs import remove_file
from smartsyncd.client.nofollow import LinkInPath, ensure_folder
from smartsyncd.client.osfs import set_readonly
from smartsyncd.client.progress import Progress
from smartsyncd.client.pullbatch import write_groups
from smartsyncd.client.pullfolders import remove_empty_folder
from smartsyncd.client.pullwrite import ChunkIndex, FileWriter
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import FileChanging, ScannedFile, load_rules
from smartsyncd.client.server import Server
from smartsyncd.client.state import FileRecord
from smartsyncd.core.model import Change, is_folder
from smartsyncd.core.paths import fold_key
from smartsyncd.core.planner import CaseRename, LocalEntry, PullDelete, PullWrite, plan

CHANGES_PAGE = 5000


async def pull(ctx: CopyContext, api: Server, report: SyncReport, prog: Progress) -> None:
    """Apply the server's changes after ``last_seq`` until none is left (nothing to ask when
    this sync's own commit was the head it answered: ``CopyContext.pulled_through``)."""
    since = await ctx.last_seq()
    if ctx.pulled_through is not None and ctx.pulled_through == since:
        ctx.pulled_through = None
        return
    held = False  # a file did not fit on the disk: last_seq stays before its page
    while True:
        _head, changes, more = await api.changes(ctx.engagement, since, CHANGES_PAGE)
        if not changes:
            return
        await ctx.run(ctx.state.check_marker)
        page = Pull(ctx, api, report, prog)
        await page.apply(changes)
        since = changes[-1].seq
        # the next sync reads this page again for what did not fit; what was written here
        # is then recognised by its state row (``Pull.apply``) and not written twice
        held = held or bool(page.writer.no_room)
        if not held:
            await ctx.run(ctx.state.update, (), (), since)  # after the files are durable
        if not more:
            return


def _recorded(change: Change, synced: FileRecord | None) -> bool:
    """The path's synced base is this change or a later one (a page read again after a file
    did not fit on the disk, or this copy's own commit): nothing to write."""
    return synced is not None and change.seq <= synced.seq


class Pull:
    """One page of changes applied to the copy."""

    def __init__(
        self, ctx: CopyContext, api: Server, report: SyncReport, prog: Progress
    ) -> None:
        self.ctx = ctx
        self.report = report
        self.prog = prog
        self.writer = FileWriter(ctx, api, report, prog)

    async def apply(self, changes: list[Change]) -> None:
        ctx, report = self.ctx, self.report
        valid = []
        base: dict[str, FileRecord] = await ctx.run(ctx.state.all_files)
        for change in changes:
            if not remote_path_ok(change.path):
                report.skipped.append((change.path, "server sent an invalid path; not written"))
            elif not _recorded(change, base.get(change.path)):
                valid.append(change)
        paths = {c.path for c in valid}
        folded = await case_insensitive(ctx)
        local = await ctx.run(self._check_paths, paths, base, folded)
        rules = (await ctx.run(load_rules, ctx.directory, [])).with_engagement(
            ctx.scanner.engagement_rules)
        p = plan(
            local, {k: base[k] for k in paths if k in base}, valid, complete=True,
            case_insensitive=folded, ignored=rules.ignores,
        )
        if p.renames:
            await ctx.run(self._rename_in_place, p.renames, base)
            report.downloaded += len(p.renames)
        updates: list[FileRecord] = []
        for adopt in p.adopt:
            entry = local[adopt.path]
            if isinstance(entry, ScannedFile):
                updates.append(FileRecord(
                    path=adopt.path, seq=adopt.seq, content=adopt.content, size=adopt.size,
                    mtime_ns=ctx.cache_mtime(entry.mtime_ns), inode=entry.inode,
                    chunks=entry.chunks,
                ))
        await ctx.run(ctx.state.update, updates, p.forget)
        await self._write_and_delete(
            [c.remote for c in p.conflicts] + p.pull_writes, p.pull_deletes, base, folded
        )

    async def _write_and_delete(
        self, writes: list[PullWrite], deletes: list[PullDelete], base: dict[str, FileRecord],
        folded: bool,
    ) -> None:
        ctx = self.ctx
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
            await ctx.run(ctx.state.update, (), [d.path for d in kept])
        for d in early:
            await self._remove(d.path, base.get(d.path))
        if writes:
            index = await ctx.run(chunk_index, base)
            self.prog.start("download", sum(w.size for w in writes))
            try:
                ordered = sorted(writes, key=lambda w: w.path)
                await write_groups(self.writer, [(w, base.get(w.path)) for w in ordered], index)
            finally:
                self.prog.finish()
        for d in deletes:
            if d not in early:
                await self._remove(d.path, base.get(d.path))

    def _rename_in_place(self, renames: list[CaseRename], base: dict[str, FileRecord]) -> None:
        """Apply remote case-only renames on a case-insensitive copy (blocking); ``base`` is
        updated to the rows recorded."""
        for r in renames:
            rename_case(self.ctx.directory, r.old, r.new)
            old = base.pop(r.old)
            record = replace(old, path=r.new, seq=r.seq, content=r.content, size=r.size)
            self.ctx.state.update([record], [r.old])
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
            if path in twins and stored_spelling(self.ctx.directory, path) != path:
                continue
            try:
                entry = self.ctx.scanner.check(path, base.get(path))
            except FileChanging:
                # being written right now: treat as a local edit (never overwritten)
                out[path] = LocalEntry(content="changing", size=-1)
                continue
            if entry is not None:
                out[path] = entry
        return out

    async def _remove(self, path: str, old: FileRecord | None) -> None:
        removed = await self.ctx.run(self._remove_if_unchanged, path, old)
        self.report.deleted_local += removed
        await self.ctx.run(self.ctx.state.update, (), [path])

    def _remove_if_unchanged(self, path: str, old: FileRecord | None) -> bool:
        directory = self.ctx.directory
        try:
            current = self.ctx.scanner.check(path, old)
        except FileChanging:
            return False
        if current is None or old is None or current.content != old.content:
            return False  # gone already, or edited: kept (pushed again as a new file)
        if is_folder(old.content):  # only if empty: what is inside keeps its folder
            return remove_empty_folder(directory, path, self._folder_entry)
        try:
            ensure_folder(directory, self.ctx.local(path).parent, create=False)
        except LinkInPath:
            log.warn("{path} not deleted: a folder on the way is a symbolic link", path=path)
            return False
        try:
            local = self.ctx.local(path)
            if sys.platform == "win32" and current.readonly:
                set_readonly(local, False)  # Windows refuses to delete it otherwise
            remove_file(directory, local,
                        lambda folder: self._folder_entry(folder.relative_to(directory).as_posix()))
        except FileNotFoundError:
            return False  # gone already (or only another spelling answered): nothing deleted
        return True


    def _folder_entry(self, path: str) -> bool:
        """Whether ``path`` is synced as a folder entry (it stays when emptied)."""
        record = self.ctx.state.get(path)
        return record is not None and is_folder(record.content)


async def case_insensitive(ctx: CopyContext) -> bool:
    """Whether the copy's folder ignores case (probed once per open)."""
    if ctx.case_insensitive is None:
        folder = ctx.directory / ".smartsync"
        ctx.case_insensitive = bool(await ctx.run(probe_case_insensitive, folder))
        if ctx.case_insensitive:
            log.info("{directory} is case-insensitive: case-only renames apply in place",
                     directory=str(ctx.directory))
    return ctx.case_insensitive


def chunk_index(base: Mapping[str, FileRecord]) -> ChunkIndex:
    """Where each chunk of a synced file sits locally: hash -> (path, offset, size)."""
    index = ChunkIndex()
    for record in base.values():
        if record.chunks:
            index.add(record.path, record.chunks)
    return index


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
