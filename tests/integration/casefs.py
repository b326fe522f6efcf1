"""A real case-insensitive file system for tests: an exFAT image on a loop device, mounted.

Windows (NTFS) and macOS (APFS) copies treat ``Report.txt`` and ``REPORT.TXT`` as one file;
tests that must behave like those copies put a client's folder on this mount. Linux reaches
exFAT through FUSE (Debian ``exfat-fuse``, needs a block device, hence the loop device) or the
kernel's ``exfat`` driver; both are tried. Mounting needs root. ``exfat_mount`` never skips: a
caller decides (the ``exfat_dir`` fixture skips only when not root, with the reason, and fails
with ``CaseFsUnavailable``'s message otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

IMAGE_MB = 256


class CaseFsUnavailable(RuntimeError):
    """No case-insensitive file system could be mounted here (the message says what failed)."""


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise CaseFsUnavailable(
            f"{name} not found: install Debian's exfatprogs and exfat-fuse "
            "(.ci/install-system-deps does)"
        )
    return found


def is_case_insensitive(folder: Path) -> bool:
    probe = folder / f"case-probe-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    try:
        return (folder / probe.name.upper()).exists()
    finally:
        probe.unlink()


def _mount(image: Path, mountpoint: Path) -> tuple[str | None, str]:
    """Mount ``image`` at ``mountpoint``; return (loop device to detach or None, how)."""
    errors: list[str] = []
    fuse = shutil.which("mount.exfat-fuse") or shutil.which("mount.exfat-fuse", path="/usr/sbin")
    if fuse is not None:
        attached = _run(_tool("losetup"), "--find", "--show", str(image))
        if attached.returncode == 0:
            dev = attached.stdout.strip()
            done = _run(fuse, dev, str(mountpoint))
            if done.returncode == 0:
                return dev, "exfat-fuse"
            _run("losetup", "-d", dev)
            errors.append(f"mount.exfat-fuse {dev}: {done.stderr.strip() or done.returncode}")
        else:
            errors.append(f"losetup: {attached.stderr.strip()}")
    else:
        errors.append("mount.exfat-fuse not found (Debian package exfat-fuse)")
    done = _run("mount", "-t", "exfat", "-o", "loop", str(image), str(mountpoint))
    if done.returncode == 0:
        return None, "kernel exfat"
    errors.append(f"mount -t exfat -o loop: {done.stderr.strip() or done.returncode}")
    raise CaseFsUnavailable("cannot mount an exFAT image: " + "; ".join(errors))


def _unmount(mountpoint: Path, dev: str | None) -> None:
    done = _run("umount", str(mountpoint))
    if done.returncode != 0:  # a FUSE file system still busy: detach it lazily
        _run("umount", "-l", str(mountpoint))
    if dev is not None:
        _run("losetup", "-d", dev)


@contextmanager
def exfat_mount(workdir: Path, size_mb: int = IMAGE_MB) -> Iterator[Path]:
    """An empty, mounted, case-insensitive exFAT file system (a folder ``mnt`` in ``workdir``);
    unmounted and its loop device detached on exit. Raises ``CaseFsUnavailable``."""
    if os.geteuid() != 0:
        raise CaseFsUnavailable("mounting an exFAT image needs root")
    image = workdir / "exfat.img"
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(parents=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    made = _run(_tool("mkfs.exfat"), str(image))
    if made.returncode != 0:
        raise CaseFsUnavailable(f"mkfs.exfat failed: {made.stderr.strip()}")
    dev, _how = _mount(image, mountpoint)
    try:
        if not is_case_insensitive(mountpoint):
            raise CaseFsUnavailable(f"{mountpoint} mounted but is case-sensitive")
        yield mountpoint
    finally:
        _unmount(mountpoint, dev)
        image.unlink(missing_ok=True)


@contextmanager
def case_insensitive_folder(workdir: Path) -> Iterator[Path]:
    """A mounted exFAT folder for a test; skips (with the reason) only when not root, and a
    mount that fails fails the test: CI runs as root and must run these tests."""
    if os.geteuid() != 0:
        pytest.skip("a case-insensitive file system (exFAT on a loop device) needs root")
    with ExitStack() as stack:
        try:
            folder = stack.enter_context(exfat_mount(workdir))
        except CaseFsUnavailable as e:
            pytest.fail(f"no case-insensitive file system for this test: {e}", pytrace=False)
        yield folder
