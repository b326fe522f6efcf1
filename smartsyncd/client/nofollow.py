"""Writes inside a copy that never pass through a symbolic link (all blocking: call on a thread).

A pulled path names a place inside the copy; if one of its folders is a symbolic link (or a
Windows junction), a plain ``open`` would write wherever the link points: ``Shared ->
../outside`` turns a remote editor's ``Shared/evil.txt`` into ``outside/evil.txt``. Here each
folder between the copy's root and the file is opened relative to the one before with
``O_NOFOLLOW`` (``openat``), where the platform allows ``dir_fd``; elsewhere (Windows) each
component is ``lstat``-ed and the folder's real path must be the one asked for. A link anywhere
raises ``LinkInPath``: the caller skips that file and reports it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.osfs import open_fd, sync_file

_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: symbolic links and junctions


class LinkInPath(OSError):
    """A folder on the way to a file inside the copy is a symbolic link (or a junction)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ELOOP, "a folder on the way is a symbolic link; not written",
                         str(path))


def _parts(root: Path, folder: Path) -> list[str]:
    rel = folder.relative_to(root)
    return [p for p in rel.parts if p not in ("", ".")]


def _has_dir_fd() -> bool:
    return os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd  # noqa: TID251


def open_folder(root: Path, folder: Path, *, create: bool) -> int:
    """A read-only descriptor of ``folder`` (inside ``root``), reached without following a
    link; missing folders are made (each durably) when ``create``. POSIX only."""
    if sys.platform == "win32":
        raise NotImplementedError("no dir_fd on Windows")
    else:
        directory = os.O_DIRECTORY  # noqa: TID251 (this branch is POSIX only)
        flags = os.O_RDONLY | directory | os.O_NOFOLLOW
        fd = open_fd(root, os.O_RDONLY | directory)
        try:
            for name in _parts(root, folder):
                try:
                    child = open_fd(name, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        osfs.make_folder(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    sync_file(fd)
                    child = _open_child(name, flags, fd, folder)
                except OSError as e:
                    # ELOOP: the name is a link; ENOTDIR: a link to a file or a plain file
                    if e.errno in (errno.ELOOP, errno.EMLINK) or _is_link_at(name, fd):
                        raise LinkInPath(folder) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _open_child(name: str, flags: int, fd: int, folder: Path) -> int:
    try:
        return open_fd(name, flags, dir_fd=fd)
    except OSError as e:
        if e.errno == errno.ELOOP or _is_link_at(name, fd):
            raise LinkInPath(folder) from None
        raise


def _is_link_at(name: str, fd: int) -> bool:
    try:
        return stat.S_ISLNK(osfs.stat_path(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_by_path(root: Path, folder: Path, *, create: bool) -> None:
    """The fallback without ``dir_fd``: no component is a link or reparse point, and the
    folder's real path is the one asked for."""
    here = root
    for name in _parts(root, folder):
        here = here / name
        try:
            st = osfs.stat_path(here, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                raise
            osfs.make_folder(here, exist_ok=True)
            st = osfs.stat_path(here, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & _REPARSE_POINT:
            raise LinkInPath(folder)
    if osfs.real_path(folder) != os.path.join(osfs.real_path(root), *_parts(root, folder)):
        raise LinkInPath(folder)


def ensure_folder(root: Path, folder: Path, *, create: bool = True) -> None:
    """Raise ``LinkInPath`` if reaching ``folder`` from ``root`` passes a link; make missing
    folders when ``create``."""
    if _has_dir_fd():
        os.close(open_folder(root, folder, create=create))
    else:
        _check_by_path(root, folder, create=create)


def open_new(root: Path, path: Path, mode: int = 0o644) -> int:
    """Create ``path`` (exclusive, not a link) inside ``root`` for writing, its folders made
    without following links; returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    if _has_dir_fd():
        dfd = open_folder(root, path.parent, create=True)
        try:
            return open_fd(path.name, flags, mode, dir_fd=dfd)
        finally:
            os.close(dfd)
    _check_by_path(root, path.parent, create=True)
    return open_fd(path, flags, mode)


def replace_into(root: Path, source: Path, target: Path) -> None:
    """``os.replace(source, target)`` where ``target``'s folder is reached from ``root``
    without following a link (``source`` is a temp file this process made)."""
    if _has_dir_fd() and os.rename in os.supports_dir_fd:  # renameat (replace is not listed)
        dfd = open_folder(root, target.parent, create=False)
        try:
            osfs.replace(source, target.name, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
        return
    _check_by_path(root, target.parent, create=False)
    osfs.replace(source, target)
