"""One daemon per data folder: a lock held in the folder for as long as the daemon runs.

Two daemons on one SQLite folder would both start and each answer long-polls only for its own
commits (the other's were seen only at the next timeout). The lock is Twisted's
``FilesystemLock`` (a symlink naming the holder's pid, atomic on every POSIX file system and
taken over when its holder has died), so a second daemon refuses to start and names the
first. Several instances on one host each have their own folder.
"""

from __future__ import annotations

import os

from twisted.python.lockfile import FilesystemLock

from smartsyncd.core.errors import SyncError

LOCK_NAME = "daemon.lock"


class DataFolderInUse(SyncError):
    """Another live process holds the data folder."""

    code = "data_folder_in_use"
    status = 409


def lock_data_folder(data_dir: str) -> FilesystemLock:
    """Take the folder's lock (blocking file work: call on a thread) or raise ``DataFolderInUse``."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock = FilesystemLock(os.path.join(data_dir, LOCK_NAME))
    if lock.lock():
        return lock
    try:
        holder = os.readlink(lock.name)
    except OSError:
        holder = "unknown"
    raise DataFolderInUse(
        f"data folder {data_dir} is in use by another smartsyncd (process {holder}); "
        "each daemon needs its own data folder"
    )
