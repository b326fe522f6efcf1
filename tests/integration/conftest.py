"""Integration fixtures: ``daemon`` is a real ``twistd smartsync`` on a free loopback TLS port;
``exfat_dir`` a folder on a real case-insensitive file system (casefs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from casefs import case_insensitive_folder
from daemon import Daemon, running_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A started daemon with its own data folder; stopped (SIGTERM) after the test."""
    d = running_daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def exfat_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on a freshly made, mounted exFAT image (case-insensitive and
    case-preserving, like NTFS and APFS); unmounted after the test."""
    with case_insensitive_folder(tmp_path / "exfat") as folder:
        yield folder
