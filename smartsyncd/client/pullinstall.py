"""Installing a pull's small files in slices, the fsyncs batched (issue 15: a clone of a
thousand work papers spent most of its time waiting for two fsyncs a file, one at a time).

A slice of at most ``SLICE_FILES`` files goes through four steps (``install_slice``, blocking):

1. each file is written into a temp file beside its target (nothing is renamed yet);
2. the temp files are fsynced by ``FSYNC_THREADS`` threads at once (the disk sees them
   together instead of one round of its cache flush per file);
3. each temp file is renamed over its target, right after the same re-check against its
   base ``FileWriter`` makes (an unpushed local edit becomes a conflict copy, never
   overwritten), and gets its version's date and read-only attribute;
4. each folder that received a file is fsynced once.

Only then does the caller record the slice's files in ONE client-state transaction
(``FileWriter.record``). Nothing is lost at any point: a file is renamed only once its
content is durable, so a crash leaves either the old file or the whole new one; the state
never claims a file whose rename is not durable. A file that cannot be written (a folder
that is a symbolic link, a chunk that does not verify, no room on the disk) is skipped as
``FileWriter`` skips it; any other error ends the slice: the temp files not yet renamed are
removed, the files renamed before it are made durable and returned for recording, and the
error is re-raised by the caller after that (``SliceResult.error``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from smartsyncd.client.diskroom import NoRoom, check_room, is_disk_full, no_room_after
from smartsyncd.client.errors import Unverifiable
from smartsyncd.client.localfs import discard_temp, fsync_dir, open_temp
from smartsyncd.client.nofollow import LinkInPath, replace_into
from smartsyncd.client.osfs import sync_file
from smartsyncd.client.pullwrite import FileWriter, apply_attributes, write_window
from smartsyncd.client.state import FileRecord
from smartsyncd.core.model import Manifest
from smartsyncd.core.planner import PullWrite

SLICE_FILES = 64  # files installed (and recorded in one transaction) together
FSYNC_THREADS = 8  # temp files fsynced at once


@dataclass
class SmallFile:
    """A small file to install: its version, the synced one it replaces, its manifest and
    the chunks found locally (the rest are in the group's fetched chunks)."""

    write: PullWrite
    old: FileRecord | None
    manifest: Manifest
    local: dict[str, bytes]


@dataclass
class SliceResult:
    """What a slice did: files installed and durable (with their stat and conflict copy),
    files skipped (with why), and the error that ended the slice early, if one did."""

    done: list[tuple[SmallFile, os.stat_result, str | None]] = field(default_factory=list)
    skipped: list[tuple[SmallFile, Unverifiable | LinkInPath]] = field(default_factory=list)
    no_room: list[tuple[SmallFile, NoRoom]] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class _Staged:
    item: SmallFile
    temp: Path
    handle: BinaryIO | None


def slices(items: Sequence[SmallFile], size: int = SLICE_FILES) -> list[Sequence[SmallFile]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def install_slice(
    writer: FileWriter, items: Sequence[SmallFile], fetched: Mapping[str, bytes],
    sync: Callable[[int], None] = sync_file,
) -> SliceResult:
    """Install ``items`` (blocking): write, fsync together, rename, fsync each folder once.
    ``sync`` flushes one file descriptor (``osfs.sync_file``)."""
    result = SliceResult()
    staged: list[_Staged] = []
    renamed: set[Path] = set()  # folders that received a file
    try:
        for item in items:
            one = _stage(writer, item, fetched, result)
            if one is not None:
                staged.append(one)
        staged = _sync_all(staged, sync, result)
        while staged:
            one = staged.pop(0)
            try:
                st, moved_to = _rename(writer, one)
            except LinkInPath as e:
                discard_temp(one.temp)
                result.skipped.append((one.item, e))
                continue
            except OSError as e:
                discard_temp(one.temp)
                if not is_disk_full(e):
                    raise
                result.no_room.append((one.item, _no_room(one)))
                continue
            except BaseException:
                discard_temp(one.temp)
                raise
            renamed.add(one.temp.parent)
            result.done.append((one.item, st, moved_to))
    except BaseException as e:  # handed back: the caller records what is done, then raises
        result.error = e
    finally:
        for one in staged:
            discard_temp(one.temp, one.handle)
        try:
            for folder in sorted(renamed):
                fsync_dir(folder)
        except OSError as e:  # the renames may not be durable: nothing may be recorded
            result.done.clear()
            result.error = result.error or e
    return result


def _stage(
    writer: FileWriter, item: SmallFile, fetched: Mapping[str, bytes], result: SliceResult
) -> _Staged | None:
    """Write ``item`` into a temp file beside its target, not yet fsynced; None when it is
    skipped (the reason in ``result``)."""
    path = item.write.path
    try:
        # before the temp file is opened in the folder (client/pullwrite.py)
        writer.match_folder_case(path)
        target = writer.ctx.local(path)
        check_room(path, target, item.manifest.size)
        temp, handle = open_temp(writer.ctx.directory, target)
    except (Unverifiable, LinkInPath) as e:
        result.skipped.append((item, e))
        return None
    except NoRoom as e:
        result.no_room.append((item, e))
        return None
    except OSError as e:
        if not is_disk_full(e):
            raise
        result.no_room.append((item, no_room_after(path, target, item.write.size)))
        return None
    try:
        write_window(handle, list(item.manifest.chunks), item.local, fetched)
        handle.flush()
    except Unverifiable as e:
        discard_temp(temp, handle)
        result.skipped.append((item, e))
        return None
    except OSError as e:
        discard_temp(temp, handle)
        if not is_disk_full(e):
            raise
        result.no_room.append((item, no_room_after(path, target, item.write.size)))
        return None
    except BaseException:
        discard_temp(temp, handle)
        raise
    return _Staged(item, temp, handle)


def _sync_all(
    staged: list[_Staged], sync: Callable[[int], None], result: SliceResult
) -> list[_Staged]:
    """fsync and close every staged temp file, ``FSYNC_THREADS`` at a time. Returns those
    durable now; one the full disk refused is removed (``result.no_room``); any other error
    is raised (the temp files are then removed by the caller)."""

    def one(s: _Staged) -> OSError | None:
        assert s.handle is not None
        try:
            sync(s.handle.fileno())
        except OSError as e:
            return e
        return None

    if len(staged) > 1:
        with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, len(staged))) as pool:
            errors = list(pool.map(one, staged))
    else:
        errors = [one(s) for s in staged]
    failed = next((e for e in errors if e is not None and not is_disk_full(e)), None)
    if failed is not None:
        raise failed
    durable: list[_Staged] = []
    for s, error in zip(staged, errors, strict=True):
        assert s.handle is not None
        handle, s.handle = s.handle, None
        if error is None:
            handle.close()
            durable.append(s)
        else:
            discard_temp(s.temp, handle)
            result.no_room.append((s.item, _no_room(s)))
    staged[:] = durable  # the caller removes what is left of ``staged`` on an error
    return durable


def _no_room(one: _Staged) -> NoRoom:
    """Its temp file removed: the room left beside it (``diskroom.no_room_after``)."""
    return no_room_after(one.item.write.path, one.temp, one.item.write.size)


def _rename(writer: FileWriter, one: _Staged) -> tuple[os.stat_result, str | None]:
    """The re-check and conflict copy (``FileWriter.make_way``), the rename, the attributes;
    the folder's fsync is the caller's."""
    item = one.item
    moved_to = writer.make_way(item.write.path, item.old)
    target = writer.ctx.local(item.write.path)
    replace_into(writer.ctx.directory, one.temp, target)
    return apply_attributes(target, item.write.mtime_ns, item.write.readonly), moved_to
