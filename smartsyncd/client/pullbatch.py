"""A pull or clone of many files in a handful of round trips (docs/protocol.md "Pull").

The files to write go in groups of at most ``GROUP_FILES`` files and ``window_bytes`` of small
files' data. A group's manifests come in one request (``Server.manifests``), the chunks of its
small files (under ``pullwrite.PARTIAL_MIN``) in as few fetches as the size caps allow, and the
next group is on the wire while this one is written. A clone's snapshot carries the first
files' chunk lists (``Server.snapshot(chunks=True)``); what it did not carry of the first group
is asked as soon as the snapshot is here (``ask_first_manifests``), beside the copy's set-up
requests. Each small file is still written as
``pullwrite.FileWriter`` writes one: a temp file, fsync, rename, and a re-check against its
base right before (an unpushed local edit becomes a conflict copy, never overwritten), but
in slices whose fsyncs go together (``pullinstall``). Large
files go through ``FileWriter`` itself (resumable partial downloads, windows of chunks) with
their manifest already here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smartsyncd.client import osfs
from smartsyncd.client.chunkindex import ChunkIndex, Location
from smartsyncd.client.chunkpacking import wanted_item
from smartsyncd.client.copycontext import offsets, remote_path_ok
from smartsyncd.client.deltabase import windows
from smartsyncd.client.errors import Unverifiable
from smartsyncd.client.pullfolders import make_folders
from smartsyncd.client.pullinstall import SmallFile, install_slice, slices
from smartsyncd.client.pullwrite import (
    PARTIAL_MIN,
    FileWriter,
    Write,
    base_of,
    check_size,
    delta_base_for,
    partial_dir,
    with_bases,
)
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.server import Server
from smartsyncd.client.state import FileRecord
from smartsyncd.client.wire import ChunkWanted
from smartsyncd.core.model import ChunkRef, FileState, Manifest, is_folder
from smartsyncd.core.planner import PullWrite

GROUP_FILES = 1000  # manifests asked at once (the server's default cap)


@dataclass
class _Group:
    """A group with its manifests and its small files' chunks here, ready to be written."""

    small: list[SmallFile] = field(default_factory=list)
    large: list[tuple[PullWrite, FileRecord | None, Manifest]] = field(default_factory=list)
    fetched: dict[str, bytes] = field(default_factory=dict)
    skipped: list[tuple[str, Unverifiable]] = field(default_factory=list)
    # the first window of the new large files, still streaming while the small ones install
    large_chunks: Deferred[dict[str, bytes]] | None = None

    def drop(self) -> None:
        """Cancel what is still coming (the group will not be written)."""
        if self.large_chunks is not None:
            self.large_chunks.addErrback(lambda _: None)
            self.large_chunks.cancel()
            self.large_chunks = None


def file_groups(writes: Sequence[Write], window_bytes: int) -> list[list[Write]]:
    """``writes`` in order, cut into groups of at most ``GROUP_FILES`` files and
    ``window_bytes`` of small files (large files are fetched in windows of their own)."""
    out: list[list[Write]] = []
    group: list[Write] = []
    size = 0
    for item in writes:
        small = item[0].size < PARTIAL_MIN
        if group and (len(group) >= GROUP_FILES or (small and size + item[0].size > window_bytes)):
            out.append(group)
            group, size = [], 0
        group.append(item)
        size += item[0].size if small else 0
    if group:
        out.append(group)
    return out


def clone_writes(
    files: Sequence[FileState], ignores: Callable[[str], bool] | None = None,
    report: SyncReport | None = None,
) -> list[Write]:
    """A clone's writes from the snapshot's ``files``, by path: live, valid (an invalid one is
    reported as skipped) and, with ``ignores``, not ignored (left on the server, as a pull
    leaves them: core/planner.py)."""
    out: list[Write] = []
    for f in sorted(files, key=lambda f: f.path):
        if f.content is None:
            continue
        if not remote_path_ok(f.path):
            if report is not None:
                report.skipped.append((f.path, "server sent an invalid path; not written"))
            continue
        if ignores is not None and (
                ignores(f.path) or (is_folder(f.content) and ignores(f.path + "/"))):
            continue
        out.append((PullWrite(f.path, f.seq, f.content, f.size, None, f.mtime_ns, f.readonly),
                    None))
    return out


def _first_group(writes: Sequence[Write], window_bytes: int) -> list[Write]:
    files = [w for w in writes if not is_folder(w[0].content)]
    return [w for group in file_groups(files, window_bytes)[:1] for w in group]


def ask_first_manifests(
    api: Server, engagement: str, writes: Sequence[Write], window_bytes: int
) -> Deferred[dict[str, Manifest]]:
    """Ask now the manifests of the files ``write_groups`` would put in its first group
    (``writes`` as it will be given them, or more: what is not asked here is asked then)."""
    first = _first_group(writes, window_bytes)
    known = api.snapshot_manifests  # what the snapshot carried (snapshot(chunks=True))
    have = {w.content: known[w.content] for w, old in first
            if old is None and w.content in known}
    rest = [(w.content, base_of(old)) for w, old in first if w.content not in have]
    if not rest:
        return succeed(have)
    return Deferred.fromCoroutine(_more_manifests(api, engagement, rest, have))


def ask_first_chunks(
    api: Server, engagement: str, writes: Sequence[Write], window_bytes: int
) -> Deferred[dict[str, bytes]] | None:
    """A clone's first small files' chunks, asked as soon as its snapshot and rules are here,
    so that they are on the wire while the copy is set up (its state, lock and first
    requests: about 0.1 s in which the link idled, issue 15). Only when the snapshot carried
    every manifest of the first group (else that request comes first) and its files are all
    new (no synced version, no local chunk: a clone); the first group's fetch
    (``write_groups`` ``chunks``) asks for whatever this does not cover."""
    first = _first_group(writes, window_bytes)
    known = api.snapshot_manifests
    if any(old is not None or w.content not in known for w, old in first):
        return None
    items = [c for w, _ in first if known[w.content].size < PARTIAL_MIN
             for c in known[w.content].chunks]
    if not items:
        return None
    return Deferred.fromCoroutine(api.fetch_chunks(engagement, items, stream=True))


async def _more_manifests(
    api: Server, engagement: str, rest: list[tuple[str, Manifest | None]],
    have: dict[str, Manifest],
) -> dict[str, Manifest]:
    return {**have, **await api.manifests(engagement, rest)}


def fired(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (None) when ``d`` does, success or failure; ``d`` keeps its
    result for whoever awaits it."""
    out: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not out.called:
            out.callback(None)
        return result

    d.addBoth(fire)
    return out


def drop_asked(asked: Deferred[Any] | None) -> None:
    """Cancel what was asked ahead and will not be used (a failure is not reported)."""
    if asked is not None:
        asked.addErrback(lambda _: None)
        asked.cancel()


async def write_groups(
    writer: FileWriter, writes: Sequence[Write], index: ChunkIndex,
    asked: Deferred[dict[str, Manifest]] | None = None, hold: Deferred[None] | None = None,
    chunks: Deferred[dict[str, bytes]] | None = None,
) -> None:
    """Write ``writes`` (each with the synced version it replaces) group by group, the next
    group's manifests and chunks coming while this one is written. Folder entries are made
    first (``pullfolders``): they have no manifest. ``asked``: manifests already on the way
    (``ask_first_manifests``), used for the first group, as ``chunks`` are
    (``ask_first_chunks``); ``hold``: the first group's large
    files are asked for only once it fires (a request still using the other connection: the
    small files' data fills the link meanwhile, and no third connection is opened)."""
    try:
        folders = [w for w in writes if is_folder(w[0].content)]
        if folders:
            await make_folders(writer, folders)
            writes = [w for w in writes if not is_folder(w[0].content)]
    except BaseException:
        drop_asked(asked)
        drop_asked(chunks)
        raise
    groups = file_groups(writes, writer.ctx.window_bytes)
    if not groups:
        drop_asked(asked)
        drop_asked(chunks)
    ahead: Deferred[_Group] | None = None
    try:
        for i, group in enumerate(groups):
            if ahead is None:
                ahead = Deferred.fromCoroutine(
                    _fetch_group(writer, group, index, asked, hold, chunks))
                asked = chunks = None
            ready = await ahead
            ahead = None
            if i + 1 < len(groups):
                ahead = Deferred.fromCoroutine(_fetch_group(writer, groups[i + 1], index))
            try:
                await _write_group(writer, ready, index)
            finally:
                ready.drop()
    finally:
        if ahead is not None:
            ahead.addCallback(lambda group: group.drop())
            ahead.addErrback(lambda _: None)
            ahead.cancel()


async def _fetch_group(
    writer: FileWriter, group: list[Write], index: ChunkIndex,
    asked: Deferred[dict[str, Manifest]] | None = None, hold: Deferred[None] | None = None,
    chunks: Deferred[dict[str, bytes]] | None = None,
) -> _Group:
    try:
        return await _make_group(writer, group, index, asked, hold, chunks)
    except BaseException:
        drop_asked(chunks)  # nothing, once used
        raise


async def _make_group(
    writer: FileWriter, group: list[Write], index: ChunkIndex,
    asked: Deferred[dict[str, Manifest]] | None, hold: Deferred[None] | None,
    chunks: Deferred[dict[str, bytes]] | None,
) -> _Group:
    ctx, api = writer.ctx, writer.api
    manifests: dict[str, Manifest] = {} if asked is None else dict(await asked)
    rest = [(w.content, base_of(old)) for w, old in group if w.content not in manifests]
    if rest:
        manifests.update(await api.manifests(ctx.engagement, rest))
    out = _Group()
    small: list[tuple[PullWrite, FileRecord | None, Manifest]] = []
    where: dict[str, Location] = {}
    for w, old in group:
        m = manifests[w.content]
        try:
            check_size(w, m)
        except Unverifiable as e:
            out.skipped.append((w.path, e))
            continue
        if m.size >= PARTIAL_MIN:
            out.large.append((w, old, m))
            continue
        small.append((w, old, m))
        # looked up here, on the reactor: ``index`` grows while the group before is written
        where.update((c.hash, index[c.hash]) for c in m.chunks if c.hash in index)
    items: list[ChunkWanted] = []
    prepared, fresh = await ctx.run(_prepare, writer, small, where, out.large)
    for w, old, m, local, wanted in prepared:
        out.small.append(SmallFile(w, old, m, local))
        items.extend(wanted)
    large = _large_window(fresh, index, ctx.window_bytes)
    if large:  # asked now, beside the small files' chunks: on the wire while they install
        out.large_chunks = Deferred.fromCoroutine(_fetch(writer, large, hold))
    try:
        if items:  # small files: one zstd stream, compressed across files (issue 15)
            out.fetched = await _fetch(writer, items, stream=True, asked=chunks)
        else:
            drop_asked(chunks)
    except BaseException:
        out.drop()
        raise
    return out


async def _fetch(
    writer: FileWriter, items: list[ChunkWanted], hold: Deferred[None] | None = None,
    stream: bool = False, asked: Deferred[dict[str, bytes]] | None = None,
) -> dict[str, bytes]:
    """``items``' chunks; ``asked``: some already on the way (``ask_first_chunks``)."""
    if hold is not None:
        await hold
    fetched = {} if asked is None else dict(await asked)
    rest = [i for i in items if wanted_item(i)[0] not in fetched]
    if rest:
        fetched.update(await writer.api.fetch_chunks(writer.ctx.engagement, rest, stream=stream))
    writer.report.bytes_received += sum(len(v) for v in fetched.values())
    return fetched


def _large_window(
    fresh: Sequence[Manifest], index: ChunkIndex, budget: int
) -> list[ChunkWanted]:
    """The first window of each new large file (no synced version, no partial download),
    together at most ``budget`` bytes; chunks found locally are left out."""
    items: list[ChunkWanted] = []
    seen: set[str] = set()
    for m in fresh:
        first = next(windows(m.chunks, budget), [])
        size = sum(c.size for c in first)
        if size > budget:
            break
        budget -= size
        for chunk in first:
            if chunk.hash not in seen and chunk.hash not in index:
                seen.add(chunk.hash)
                items.append(chunk)
    return items


def _prepare(
    writer: FileWriter, small: list[tuple[PullWrite, FileRecord | None, Manifest]],
    where: Mapping[str, tuple[str, int, int]],
    large: Sequence[tuple[PullWrite, FileRecord | None, Manifest]] = (),
) -> tuple[
    list[tuple[PullWrite, FileRecord | None, Manifest, dict[str, bytes], list[ChunkWanted]]],
    list[Manifest],
]:
    """Per small file (blocking): the chunks found locally and the fetch items for the rest,
    naming ranges of the synced version where it is here (deltas, as ``FileWriter`` does).
    Also the manifests of the ``large`` files new here with no partial download to resume:
    their first window can be asked at once."""
    fresh = [m for w, old, m in large
             if old is None and not osfs.exists(partial_dir(writer.ctx.directory)
                                                / f"{m.content}.part")]
    return _prepare_small(writer, small, where), fresh


def _prepare_small(
    writer: FileWriter, small: list[tuple[PullWrite, FileRecord | None, Manifest]],
    where: Mapping[str, tuple[str, int, int]],
) -> list[tuple[PullWrite, FileRecord | None, Manifest, dict[str, bytes], list[ChunkWanted]]]:
    out = []
    for w, old, m in small:
        local = writer.read_local(list(m.chunks), where)
        need: list[tuple[ChunkRef, int]] = []
        seen: set[str] = set()
        for chunk, at in offsets(m.chunks):
            if chunk.hash not in local and chunk.hash not in seen:
                seen.add(chunk.hash)
                need.append((chunk, at))
        items: list[ChunkWanted] = [chunk for chunk, _ in need]
        delta = delta_base_for(old, m)
        if need and delta is not None and old is not None:
            source = writer.download_base(w.path, old)
            if source is not None:
                items = list(with_bases(need, delta, source))
        out.append((w, old, m, local, items))
    return out


async def _write_group(writer: FileWriter, group: _Group, index: ChunkIndex) -> None:
    """The group's small files in slices (``pullinstall``: fsyncs batched, one state
    transaction a slice), then its large files one at a time."""
    ctx = writer.ctx
    for path, e in group.skipped:
        writer.skip(path, e)
    for part in slices(group.small):
        result = await ctx.run(install_slice, writer, part, group.fetched)
        for item, why in result.skipped:
            writer.skip(item.write.path, why)
        for item, room in result.no_room:
            writer.skip_no_room(item.write, room)
        for item, _st, moved_to in result.done:
            writer.report_conflict(item.write.path, moved_to)
            writer.prog.advance(item.write.size)
        if result.done:  # durable: recorded even when a later file of the slice failed
            await writer.record([(i.write, i.manifest, st) for i, st, _ in result.done], index)
        if result.error is not None:
            raise result.error
    prefetched: dict[str, bytes] = {}
    if group.large_chunks is not None:
        coming, group.large_chunks = group.large_chunks, None
        prefetched = await coming
    for w, old, m in group.large:
        await writer.write_or_skip(w, old, index, m, prefetched)
