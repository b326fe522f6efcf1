"""Integration fixtures: ``daemon`` is a real ``twistd smartsync`` on a free loopback TLS port;
``exfat_dir`` a folder on a real case-insensitive file system (casefs.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from casefs import CaseFsUnavailable, exfat_mount
from daemon import Daemon, running_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A started daemon with its own data folder; stopped (SIGTERM) after the test."""
    d = running_daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@contextmanager
def case_insensitive_folder(workdir: Path) -> Iterator[Path]:
    """A mounted exFAT folder; skips (with the reason) only when not root, else a mount that
    fails fails the test: CI runs as root and must run these tests."""
    if os.geteuid() != 0:
        pytest.skip("a case-insensitive file system (exFAT on a loop device) needs root")
    with ExitStack() as stack:
        try:
            folder = stack.enter_context(exfat_mount(workdir))
        except CaseFsUnavailable as e:
            pytest.fail(f"no case-insensitive file system for this test: {e}", pytrace=False)
        yield folder


@pytest.fixture
def exfat_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on a freshly made, mounted exFAT image (case-insensitive and
    case-preserving, like NTFS and APFS); unmounted after the test."""
    with case_insensitive_folder(tmp_path / "exfat") as folder:
        yield folder
