"""Copies on case-insensitive file systems (NTFS, APFS, exFAT): detection and in-place renames.

On such a volume ``Memo.txt`` and ``memo.txt`` are one file, so "does this path exist?" is not
enough: before the engine deletes or adopts a path whose fold key another path of the same pull
shares, it asks for the spelling actually stored (``stored_spelling``). A case-only rename from
the server is applied in place (``rename_case``), never as a write of the new name followed by
a delete of the old one (which is the same file there).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.localfs import fsync_dir
from smartsyncd.client.osfs import open_fd

PROBE_NAME = ".smartsync-case-probe"


def probe_case_insensitive(folder: Path) -> bool:
    """True when ``folder``'s file system treats names differing in case as one (blocking).

    Creates a probe file with lower-case letters and looks it up in upper case."""
    probe = folder / f"{PROBE_NAME}-{uuid.uuid4().hex}"
    fd = open_fd(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        return osfs.lexists(folder / probe.name.upper())
    finally:
        osfs.unlink(probe)


def _stored_name(folder: Path, name: str) -> str | None:
    """The stored spelling in ``folder`` of ``name`` (exact match first), or None."""
    try:
        names = osfs.list_names(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if name in names:
        return name
    key = name.casefold()
    for other in names:
        if other.casefold() == key:
            return other
    return None


def stored_spelling(root: Path, path: str) -> str | None:
    """The relative path as the file system stores it (each segment's case), or None if
    nothing is there under any case (blocking: one listing per segment)."""
    folder = root
    out: list[str] = []
    for segment in path.split("/"):
        stored = _stored_name(folder, segment)
        if stored is None:
            return None
        out.append(stored)
        folder = folder / stored
    return "/".join(out)


def _rename_entry(folder: Path, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` in ``folder`` where both name one entry; through a temp name
    when the file system keeps the old spelling on a direct rename."""
    osfs.rename(folder / old, folder / new)
    if _stored_name(folder, new) != new:
        # a visible name: a crash between the two renames leaves a file the next scan pushes
        # as a rename, not a temp file cleaned away
        temp = f"{new}.case-{uuid.uuid4().hex[:8]}"
        osfs.rename(folder / old, folder / temp)
        osfs.rename(folder / temp, folder / new)
    fsync_dir(folder)


def rename_case(root: Path, old: str, new: str) -> bool:
    """Give the file at ``old`` the spelling ``new`` (same fold key), folders included, in
    place on a case-insensitive file system (blocking). False if nothing is at ``old``."""
    stored = stored_spelling(root, old)
    if stored is None:
        return False
    match_folders(root, new)
    folder = root / new.rpartition("/")[0] if "/" in new else root
    have = stored.rpartition("/")[2]
    want = new.rpartition("/")[2]
    if have != want:
        _rename_entry(folder, have, want)
    return True


def match_folders(root: Path, path: str) -> None:
    """Give the existing folders of ``path`` its spelling (blocking). The server keeps one
    spelling per folder, so a folder stored in other case is that folder renamed."""
    folder = root
    for segment in path.split("/")[:-1]:
        stored = _stored_name(folder, segment)
        if stored is None:
            return  # created with this spelling when the file is written
        if stored != segment:
            _rename_entry(folder, stored, segment)
        folder = folder / segment
