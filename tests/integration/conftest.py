"""Integration fixtures: ``daemon`` is a real ``twistd smartsync`` on a free loopback TLS port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A started daemon with its own data folder; stopped (SIGTERM) after the test."""
    d = running_daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()
