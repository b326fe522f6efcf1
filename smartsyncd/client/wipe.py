"""Obeying a remote wipe order (docs/client.md, "Remote wipe"; issue 20).

An admin who abandons a lost laptop's copy with ``--wipe`` makes the server answer the copy's
next request with ``wipe_ordered`` (``WipeOrdered``). The copy obeys only an order that names
its own engagement and copy id and came from its own server over the verified connection the
copy was opened with (``check_order``): an order for another copy on the same laptop, or from
another server, is refused and nothing is deleted.

Then, uploading nothing: the copy's file count and the report's details are written durably to
``DIR/.smartsync/wipe.json`` before the first delete, so a wipe that a crash or power loss
interrupts is finished at the next start (``SyncCopy.open`` refuses such a folder with
``WipeInterrupted``; the CLI resumes). The copy's settings go first (its marker and state
database: a copy without them can never sync again, so no later run could read the missing
files as deletions to upload), then every file and folder of the copy, never through a symbolic
link or junction (a link is removed itself, what it points to is left alone), then the stored
session token of that server (the caller's ``forget_credentials``). Last, the wipe is reported
(``ServerAPI.report_wipe``, authenticated by the copy's secret: its session ended when it was
abandoned); only once the server has it does the marker go. A report that could not be made is
tried again at the next start.

Everything but ``obey``/``carry_out`` blocks (file system calls): run it through ``run``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.copylock import LOCK_FILE, CopyLock
from smartsyncd.client.errors import ClientError, ProtocolError, WipeInterrupted, WipeOrdered
from smartsyncd.client.localfs import atomic_write_bytes, fsync_dir
from smartsyncd.client.osfs import open_fd
from smartsyncd.client.server import Server
from smartsyncd.client.state import STATE_DIR, ClientState
from smartsyncd.client.userconfig import server_key
from smartsyncd.runtime.blocking import RunBlocking

WIPE_FILE = "wipe.json"
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: symbolic links and junctions (Windows)

@dataclass(frozen=True)
class WipeMarker:
    """What a wipe needs to finish and report itself, written before the first delete."""

    server: str
    engagement: str
    copy_id: str
    key: str
    ordered_by: str
    ordered_at: str
    files: int  # the copy's files when the wipe began


@dataclass(frozen=True)
class WipeResult:
    """What a wipe did, for the CLI and an embedding app."""

    directory: str
    engagement: str
    copy_id: str
    ordered_by: str
    ordered_at: str
    files_removed: int
    reported: bool
    problem: str | None  # why the report could not be made (it is tried again)
    resumed: bool  # finished a wipe an earlier run began

    def to_json(self) -> dict[str, object]:
        return {"wiped": True, **asdict(self)}

    def describe(self) -> str:
        head = (
            f"This sync copy of {self.engagement} was wiped on the server's order"
            f" ({self.ordered_by}, {self.ordered_at})"
            + (", finishing an interrupted wipe" if self.resumed else "")
            + f": {self.files_removed} files and the copy's settings removed from"
            f" {self.directory}; nothing was uploaded."
        )
        if self.reported:
            return head + " The server was told."
        return head + (
            f" The server could not be told yet ({self.problem}); running smartsync here again"
            " tries again."
        )


def wipe_marker_path(directory: Path) -> Path:
    return directory / STATE_DIR / WIPE_FILE


def read_wipe_marker(directory: Path) -> WipeMarker | None:
    """The marker of a wipe that began in ``directory``, or None."""
    try:
        data = json.loads(osfs.read_bytes(wipe_marker_path(directory)))
        return WipeMarker(**{k: data[k] for k in WipeMarker.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WipeInterrupted(f"{wipe_marker_path(directory)} is damaged ({e})") from None


def refuse_if_wiping(directory: Path) -> None:
    """A copy whose wipe began is never opened for syncing (``WipeInterrupted``)."""
    if osfs.exists(wipe_marker_path(directory)):
        raise WipeInterrupted(
            f"a wipe of {directory} ordered by its server was interrupted; run 'smartsync sync'"
            " there to finish it"
        )


def check_order(order: WipeOrdered, state: ClientState, server_url: str) -> None:
    """Refuse (``ProtocolError``, nothing deleted) an order that does not name this copy
    or did not come from the server this copy belongs to."""
    meta = state.meta()
    if server_key(server_url) != server_key(meta.server_url):
        raise ProtocolError(
            f"a wipe order came from {server_url}, not this copy's server; ignored"
        )
    if order.copy != meta.copy_id or order.engagement != meta.engagement:
        raise ProtocolError(
            f"the server ordered copy {order.copy!r} of {order.engagement!r} wiped, not this"
            f" copy ({meta.copy_id} of {meta.engagement}); nothing was deleted"
        )


def _is_link(st: os.stat_result) -> bool:
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & _REPARSE_POINT)


def count_files(directory: Path) -> int:
    """Files (and links) of the copy, its settings folder left out; links are not followed."""
    count = 0
    todo = [directory]
    while todo:
        folder = todo.pop()
        with osfs.scandir(folder) as entries:
            for entry in entries:
                if folder == directory and entry.name == STATE_DIR:
                    continue
                if entry.is_dir(follow_symlinks=False) and not _is_link(entry.stat(follow_symlinks=False)):
                    todo.append(Path(entry.path))
                else:
                    count += 1
    return count


def begin(directory: Path, marker: WipeMarker) -> None:
    """Write the marker durably: from here on, a crash resumes the wipe."""
    atomic_write_bytes(wipe_marker_path(directory), json.dumps(asdict(marker)).encode())
    fsync_dir(directory / STATE_DIR)


def remove_contents(directory: Path) -> int:
    """Delete the copy's settings (all but the wipe marker and the lock), then every file and
    folder of the copy, without following links; return how many files went."""
    settings = directory / STATE_DIR
    _clear(settings, frozenset({WIPE_FILE, LOCK_FILE}), follow=False)
    fsync_dir(settings)
    removed = _clear(directory, frozenset({STATE_DIR}), follow=True)
    fsync_dir(directory)
    return removed


def finish(directory: Path) -> None:
    """The wipe is reported: remove the marker, the lock file and the settings folder."""
    settings = directory / STATE_DIR
    _clear(settings, frozenset(), follow=False)
    osfs.remove_folder(settings)
    fsync_dir(directory)


def _clear(folder: Path, keep: frozenset[str], *, follow: bool) -> int:
    """Empty ``folder``; ``follow``: it may itself be a link (the copy's root may be)."""
    if sys.platform == "win32":
        if not follow and _is_link(osfs.stat_path(folder, follow_symlinks=False)):
            raise OSError(errno.ELOOP, "the copy's settings folder is a link; not followed", str(folder))
        return _clear_by_path(folder, keep)
    fd = open_fd(folder, _NOFOLLOW_DIR & ~getattr(os, "O_NOFOLLOW", 0) if follow else _NOFOLLOW_DIR)
    try:
        return _clear_at(fd, keep)
    finally:
        os.close(fd)


# a folder, opened only if it is not a link (POSIX; Windows goes through _clear_by_path)
_NOFOLLOW_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _clear_at(fd: int, keep: frozenset[str]) -> int:
    """Empty the folder open as ``fd``: each child folder is opened relative to it with
    ``O_NOFOLLOW``, so a link (even one swapped in meanwhile) is unlinked, never entered."""
    count = 0
    with osfs.scandir(fd) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if e.name not in keep]
    for name, is_dir in names:
        if is_dir:
            try:
                child = open_fd(name, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                is_dir = False  # replaced by a link or a file since the listing
            else:
                try:
                    count += _clear_at(child, frozenset())
                finally:
                    os.close(child)
                osfs.remove_folder(name, dir_fd=fd)
        if not is_dir:
            osfs.unlink(name, dir_fd=fd)
            count += 1
    return count


def _clear_by_path(folder: Path, keep: frozenset[str]) -> int:
    """Windows (no ``dir_fd``): links and junctions are reparse points, removed themselves."""
    count = 0
    with osfs.scandir(folder) as it:
        entries = [e for e in it if e.name not in keep]
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        path = Path(entry.path)
        if stat.S_ISDIR(st.st_mode) and not _is_link(st):
            count += _clear_by_path(path, frozenset())
            osfs.remove_folder(path)
        elif stat.S_ISDIR(st.st_mode):
            osfs.remove_folder(path)  # a junction or folder link: removes the link only
            count += 1
        else:
            if not st.st_mode & stat.S_IWRITE:
                osfs.chmod(path, stat.S_IWRITE)  # Windows refuses to delete a read-only file
            osfs.unlink(path)
            count += 1
    return count


async def obey(
    directory: Path,
    state: ClientState,
    lock: CopyLock | None,
    api: Server,
    order: WipeOrdered,
    run: RunBlocking,
    forget_credentials: Callable[[str], None],
) -> WipeResult:
    """Carry out ``order`` for the copy in ``directory`` (opened with ``state`` and holding
    ``lock``, or None: the lock is taken here) over ``api``, its own server's connection."""
    check_order(order, state, api.base_url)
    meta = state.meta()
    key: str = await run(state.copy_key)
    files: int = await run(count_files, directory)
    if lock is None:
        lock = await run(CopyLock.acquire, directory)  # CopyInUse: the holder obeys instead
    marker = WipeMarker(
        server=meta.server_url, engagement=meta.engagement, copy_id=meta.copy_id, key=key,
        ordered_by=order.ordered_by or "an admin", ordered_at=order.ordered_at or "-", files=files,
    )
    await run(begin, directory, marker)
    state.close()
    return await carry_out(directory, marker, lock, api, run, forget_credentials, resumed=False)


async def carry_out(
    directory: Path,
    marker: WipeMarker,
    lock: CopyLock,
    api: Server,
    run: RunBlocking,
    forget_credentials: Callable[[str], None],
    *,
    resumed: bool,
) -> WipeResult:
    """Delete what is left, forget the server's token, report; the marker goes once reported."""
    try:
        await run(remove_contents, directory)
        await run(forget_credentials, marker.server)
        problem = None
        try:
            await api.report_wipe(
                marker.engagement, marker.copy_id, marker.key, socket.gethostname() or "unknown",
                marker.files,
            )
        except ClientError as e:
            problem = str(e)
    finally:
        lock.release()
    if problem is None:
        await run(finish, directory)
    return WipeResult(
        directory=str(directory), engagement=marker.engagement, copy_id=marker.copy_id,
        ordered_by=marker.ordered_by, ordered_at=marker.ordered_at, files_removed=marker.files,
        reported=problem is None, problem=problem, resumed=resumed,
    )


async def resume(
    directory: Path,
    marker: WipeMarker,
    api: Server,
    run: RunBlocking,
    forget_credentials: Callable[[str], None],
) -> WipeResult:
    """Finish a wipe an earlier run began (its marker is ``marker``)."""
    if server_key(api.base_url) != server_key(marker.server):
        raise ProtocolError(f"the interrupted wipe reports to {marker.server}, not {api.base_url}")
    lock = await run(CopyLock.acquire, directory)
    return await carry_out(directory, marker, lock, api, run, forget_credentials, resumed=True)
