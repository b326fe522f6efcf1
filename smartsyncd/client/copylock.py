"""One process per sync copy, and no stale temp files after a crash.

**The copy lock.** ``CopyLock.acquire`` takes an exclusive, non-blocking lock on
``DIR/.smartsync/lock`` (``osfs.lock_exclusive``: ``flock`` on POSIX, ``LockFileEx`` on Windows). A second holder (another process, or a second open file description
in the same process) is refused at once with :class:`CopyInUse`, whose message names the
holder (pid, host and start time, which the holder writes into the file after its first byte:
Windows locks byte 0, and a locked byte cannot be read by others there). The lock lives as
long as the descriptor: ``release`` closes it, and the kernel drops it when the process dies
for any reason (SIGKILL, power off), so a crash never leaves a stale lock; the file's
contents are only a hint for the message and are never trusted to decide anything. The
descriptor is close-on-exec: a program the client starts does not inherit the lock.

**The "sync in progress" marker.** ``DIR/.smartsync/syncing`` is created (durably) when a
sync starts and removed at its clean end. When a sync starts and finds it already there, the
previous sync of this copy stopped half-way (killed, crashed, or failed): with the lock held,
no other process is writing here, so every ``.~smartsync-*.tmp`` file in the folder is an
orphan of a download that will never be installed, and ``remove_stale_temps`` deletes them
(one ``os.scandir`` walk, ``.smartsync/`` skipped: resumable partial downloads live in
``.smartsync/partial`` and are left to the engine). A clean sync costs one create, one folder
fsync and one unlink; the walk happens only after an interrupted sync.

Everything here blocks (file system calls): the engine runs it on a thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from twisted.logger import Logger

from smartsyncd.client import osfs
from smartsyncd.client.errors import CopyInUse
from smartsyncd.client.localfs import TEMP_PREFIX, fsync_dir
from smartsyncd.client.osfs import lock_exclusive, open_fd, pread, pwrite, sync_file

log = Logger()

LOCK_FILE = "lock"
SYNCING_FILE = "syncing"
STATE_DIR = ".smartsync"
TEMP_SUFFIX = ".tmp"
NOTE_OFFSET = 1  # the holder note starts after the byte Windows locks


class CopyLock:
    """An exclusive lock on one sync copy, held while the descriptor is open."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, directory: Path, now: datetime | None = None) -> CopyLock:
        """Lock the copy in ``directory`` (its ``.smartsync`` folder must exist) or raise
        :class:`CopyInUse` naming the holder. ``now`` is recorded as the start time."""
        path = directory / STATE_DIR / LOCK_FILE
        fd = open_fd(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = lock_exclusive(fd)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            locked = False
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise CopyInUse(busy_message(directory, holder))
        try:
            when = now or datetime.now(UTC)
            info = {"pid": os.getpid(), "host": socket.gethostname() or "unknown",
                    "since": when.isoformat(timespec="seconds")}
            os.ftruncate(fd, NOTE_OFFSET)
            pwrite(fd, json.dumps(info).encode() + b"\n", NOTE_OFFSET)
        except OSError:
            pass  # the note is only a hint for the message; the lock is what counts
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Give the lock up (idempotent). The holder note is cleared first, while still held."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file drops the lock


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(pread(fd, 4096, NOTE_OFFSET) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def busy_message(directory: Path, holder: dict[str, object]) -> str:
    """The one line a refused second process prints."""
    who = "another smartsync process"
    if holder.get("pid"):
        who += f" (pid {holder.get('pid')} on {holder.get('host', '?')}"
        who += f", since {holder['since']})" if holder.get("since") else ")"
    return (
        f"{directory} is in use by {who}: only one sync or watch at a time per copy; "
        "wait for it to finish or stop it, then try again (nothing was changed)"
    )


# -- the "sync in progress" marker ---------------------------------------------------------------


def syncing_path(directory: Path) -> Path:
    return directory / STATE_DIR / SYNCING_FILE


def begin_sync(directory: Path) -> int:
    """Call with the lock held, before a sync or clone writes anything. When the marker of an
    interrupted sync is there, remove its orphaned temp files first (returns how many); then
    make sure the marker exists, durably (so a crash from here on is noticed next time)."""
    marker = syncing_path(directory)
    if osfs.exists(marker):
        return remove_stale_temps(directory)  # the marker stays until this sync ends cleanly
    fd = open_fd(marker, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        sync_file(fd)
    finally:
        os.close(fd)
    fsync_dir(marker.parent)
    return 0


def end_sync(directory: Path) -> None:
    """The sync ended cleanly: no temp file of it is left. A lost unlink (power cut) only
    costs one harmless walk next time."""
    osfs.unlink(syncing_path(directory), missing_ok=True)


def is_stale_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(directory: Path) -> int:
    """Delete every ``.~smartsync-*.tmp`` regular file under ``directory`` (not following
    symbolic links, ``.smartsync/`` skipped) and fsync the folders touched. Only call with the
    copy lock held and no sync running in this process: then none of them is in use.
    Unreadable folders are skipped. Returns how many were removed."""
    removed = 0
    pending = [directory]
    while pending:
        folder = pending.pop()
        touched = False
        try:
            with osfs.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not (folder == directory and entry.name == STATE_DIR):
                                pending.append(Path(entry.path))
                        elif is_stale_temp(entry.name) and entry.is_file(follow_symlinks=False):
                            osfs.unlink(entry.path)
                            removed += 1
                            touched = True
                    except FileNotFoundError:
                        continue
                    except OSError as e:  # e.g. no permission: left, reported
                        log.warn("cannot remove {path}: {why}", path=entry.path, why=str(e))
        except OSError as e:
            log.warn("cannot look for leftover temp files in {folder}: {why}",
                     folder=str(folder), why=str(e))
            continue
        if touched:
            with contextlib.suppress(OSError):
                fsync_dir(folder)
    if removed:
        log.info("removed {n} temp files left by an interrupted sync of {directory}",
                 n=removed, directory=str(directory))
    return removed
