"""The per-copy lock and the stale temp file sweep (client/copylock.py), with real flocks and
real processes: a second open file description is refused, close releases, and a SIGKILLed
holder frees the lock (the kernel drops it; nothing stale is left)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smartsyncd.client.copylock import (
    CopyLock,
    begin_sync,
    end_sync,
    remove_stale_temps,
    syncing_path,
)
from smartsyncd.client.errors import CopyInUse, UsageError


def _copy(tmp_path: Path) -> Path:
    (tmp_path / "c" / ".smartsync").mkdir(parents=True)
    return tmp_path / "c"


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # polling a real condition, bounded by the deadline


def test_second_lock_in_the_same_process_is_refused_until_released(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    first = CopyLock.acquire(root)
    assert first.held
    with pytest.raises(CopyInUse) as refused:
        CopyLock.acquire(root)  # a second open file description: flock says no
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and "in use by another smartsync process" in message
    assert isinstance(refused.value, UsageError) and refused.value.exit_code == 2
    first.release()
    first.release()  # idempotent
    assert not first.held
    again = CopyLock.acquire(root)
    again.release()


HOLDER = """
import sys
from pathlib import Path
from smartsyncd.client.copylock import CopyLock
lock = CopyLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold until killed
"""


def test_a_sigkilled_holder_frees_the_lock(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child holds the lock
        assert line.strip() == "locked", child.stderr.read() if child.stderr else ""
        with pytest.raises(CopyInUse, match=f"pid {child.pid} "):
            CopyLock.acquire(root)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    # no cleanup ran in the child: the kernel released the flock with its descriptors
    lock = CopyLock.acquire(root)
    assert lock.held
    lock.release()


def test_the_lock_is_not_inherited_by_a_started_program(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    lock = CopyLock.acquire(root)
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.release()
        again = CopyLock.acquire(root)  # the child did not keep the descriptor
        again.release()
    finally:
        child.kill()
        child.wait(10)


def test_sweep_removes_only_temp_files_outside_state_dir(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "a" / "b").mkdir(parents=True)
    stale = [root / ".~smartsync-1f.tmp", root / "a" / "b" / ".~smartsync-2e.tmp"]
    kept = [
        root / "doc.txt", root / "a" / ".~smartsync-notes.txt", root / "a" / "x.tmp",
        root / ".smartsync" / ".~smartsync-3d.tmp", root / ".smartsync" / "partial.part",
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    (root / "a" / ".~smartsync-dir.tmp").mkdir()  # a folder of that name is not ours
    os.symlink(tmp_path, root / "link")  # never followed
    (tmp_path / ".~smartsync-outside.tmp").write_bytes(b"x")
    assert remove_stale_temps(root) == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert (tmp_path / ".~smartsync-outside.tmp").exists()
    assert (root / "a" / ".~smartsync-dir.tmp").is_dir()


def test_marker_sweeps_only_after_an_interrupted_sync(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / ".~smartsync-aa.tmp").write_bytes(b"x")
    assert begin_sync(root) == 0  # no marker: a clean previous end, no walk
    assert syncing_path(root).exists()
    assert (root / ".~smartsync-aa.tmp").exists()
    # "killed" here: the marker stays, the next start sweeps (and keeps the marker)
    assert begin_sync(root) == 1
    assert syncing_path(root).exists() and not (root / ".~smartsync-aa.tmp").exists()
    end_sync(root)
    assert not syncing_path(root).exists()
    end_sync(root)  # idempotent
