"""Least privilege on the daemon's files: a private umask, a private data folder, and start-up
warnings for secrets other accounts can read.

twistd passes on whatever umask started it (often 022): the database (password hashes,
sessions), packs and logs came out world-readable. ``private_umask`` runs first in
``makeService`` (before twistd opens its log file); ``tighten_data_dir`` makes the data folder
0700 at every start, so files made under an older umask are out of reach too. The TLS key and
the LDAP bind password file may live elsewhere and be shared with other services: they are
not changed, only reported when group or others may read them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

PRIVATE_UMASK = 0o077
DATA_DIR_MODE = 0o700


def private_umask() -> int:
    """Set umask 077 (new files 0600, folders 0700); returns the previous one."""
    return os.umask(PRIVATE_UMASK)


def tighten_data_dir(path: str) -> bool:
    """chmod the data folder to 0700 when it is more open; True when it was changed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, DATA_DIR_MODE)
        return True
    return False


def readable_by_others(paths: Iterable[tuple[str, str | None]]) -> list[tuple[str, str, int]]:
    """(what, path, mode) of each existing file that group or others may read."""
    found: list[tuple[str, str, int]] = []
    for what, path in paths:
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            found.append((what, path, mode))
    return found
