"""Folder entries of a pull or clone (docs/protocol.md, "Folder entries"): make the folders
the server has as entries, and remove a folder whose entry the server deleted only when it is
empty here (never a tree: a file another copy or this one put inside keeps its folder).

A local file standing where a folder entry comes is an unpushed edit or a new file: it is moved
to a conflict copy first, as a pulled file would move it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.copycontext import CopyContext, log
from smartsyncd.client.localfs import fsync_dir, move_no_replace
from smartsyncd.client.nofollow import LinkInPath, ensure_folder
from smartsyncd.client.osfs import make_folder, stat_path
from smartsyncd.client.pullwrite import FileWriter, Write
from smartsyncd.client.scanner import FileChanging
from smartsyncd.client.state import FileRecord
from smartsyncd.core.model import is_folder


async def make_folders(writer: FileWriter, writes: Sequence[Write]) -> None:
    """Create the folders of ``writes`` (folder entries), outermost first, and record them."""
    ctx = writer.ctx
    records: list[FileRecord] = []
    for write, old in sorted(writes, key=lambda w: w[0].path):
        try:
            await ctx.run(writer.match_folder_case, write.path + "/")
            moved_to, st = await ctx.run(_make_folder, ctx, write.path, old)
        except LinkInPath as e:
            writer.skip(write.path, e)
            continue
        writer.report_conflict(write.path, moved_to)
        records.append(FileRecord(
            path=write.path, seq=write.seq, content=write.content, size=0,
            mtime_ns=st.st_mtime_ns, inode=st.st_ino, chunks=(),
        ))
    if records:
        await ctx.run(ctx.state.update, records, ())
        writer.report.downloaded += len(records)


def _make_folder(ctx: CopyContext, path: str, old: FileRecord | None) -> tuple[str | None, os.stat_result]:
    """Make ``path`` a folder (blocking); a file there is moved to a conflict copy first.
    Returns (conflict copy or None, the folder's stat)."""
    root = ctx.directory
    target = root / path
    ensure_folder(root, target.parent)  # LinkInPath: not made
    moved_to: str | None = None
    try:
        current = ctx.scanner.check(path, old)
        file_there = current is not None and not is_folder(current.content)
        synced = file_there and old is not None and current is not None and current.content == old.content
    except FileChanging:  # a file being written there: kept, as an edit
        file_there, synced = True, False
    if synced:
        osfs.unlink(target)  # the synced file the server replaced by this folder
    elif file_there:
        moved_to = ctx.conflict_target(path)
        move_no_replace(target, root / moved_to)
    if not osfs.is_dir(target):
        make_folder(target)
        fsync_dir(target.parent)
    return moved_to, stat_path(target, follow_symlinks=False)


def remove_empty_folder(
    root: Path, path: str, keep: Callable[[str], bool]
) -> bool:
    """Remove the folder ``path`` if it is empty (blocking), then its parents left empty that
    ``keep`` does not name (folder entries stay). False when it holds anything: it is then
    the parent of what is inside, and stays."""
    target = root / path
    try:
        ensure_folder(root, target.parent, create=False)
    except LinkInPath:
        log.warn("{path} not removed: a folder on the way is a symbolic link", path=path)
        return False
    try:
        osfs.remove_folder(target)
    except FileNotFoundError:
        return False
    except OSError:
        log.info("{path} kept: the folder is not empty", path=path)
        return False
    fsync_dir(target.parent)
    parent = path.rpartition("/")[0]
    while parent and not keep(parent):
        try:
            osfs.remove_folder(root / parent)
        except OSError:
            break
        fsync_dir((root / parent).parent)
        parent = parent.rpartition("/")[0]
    return True
