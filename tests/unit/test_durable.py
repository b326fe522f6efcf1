"""Tests for the crash-safe write helpers: call order, cleanup on failure, folder creation."""

from __future__ import annotations

import os

import pytest

from smartsyncd.storage.durable import AtomicFile, FileOps, ensure_dir, is_temp_name, write_durably


class RecordingOps(FileOps):
    """Real file operations that also record what happened, in order."""

    def __init__(self, fail_fsync_of: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self._names: dict[int, str] = {}
        self._fail_fsync_of = fail_fsync_of

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self._names[fd] = path
        self.calls.append(("open", path))
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls.append(("write", self._names[fd]))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        name = self._names[fd]
        self.calls.append(("fsync", name))
        if self._fail_fsync_of is not None and name.endswith(self._fail_fsync_of):
            raise OSError(5, "injected fsync failure")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self.calls.append(("close", self._names.pop(fd)))
        super().close(fd)

    def rename(self, src: str, dst: str) -> None:
        self.calls.append(("rename", dst))
        super().rename(src, dst)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.calls.append(("mkdir", path))
        super().mkdir(path, mode)


def test_write_fsyncs_file_then_renames_then_fsyncs_folder(tmp_path) -> None:
    ops = RecordingOps()
    target = str(tmp_path / "key.pem")
    write_durably(target, b"secret", mode=0o600, ops=ops)

    kinds = [(kind, name) for kind, name in ops.calls]
    temp = kinds[0][1]
    assert kinds == [
        ("open", temp),
        ("write", temp),
        ("fsync", temp),
        ("close", temp),
        ("rename", target),
        ("open", str(tmp_path)),
        ("fsync", str(tmp_path)),
        ("close", str(tmp_path)),
    ]
    assert os.path.dirname(temp) == str(tmp_path)
    with open(target, "rb") as f:
        assert f.read() == b"secret"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]


def test_replaces_existing_file_whole(tmp_path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    write_durably(str(target), [b"new ", b"parts"])
    assert target.read_bytes() == b"new parts"


def test_failed_fsync_leaves_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    ops = RecordingOps(fail_fsync_of=".tmp")
    with pytest.raises(OSError, match="injected"):
        write_durably(str(target), b"new", ops=ops)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    # fsync is never retried on the same descriptor, and nothing was renamed
    assert [k for k, _ in ops.calls].count("fsync") == 1
    assert "rename" not in [k for k, _ in ops.calls]


def test_abort_removes_temp(tmp_path) -> None:
    with AtomicFile(str(tmp_path)) as f:
        f.write(b"partial")
        assert is_temp_name(os.path.basename(f.temp_path))
        assert os.path.exists(f.temp_path)
    assert os.listdir(tmp_path) == []


def test_ensure_dir_creates_and_fsyncs_each_parent(tmp_path) -> None:
    ops = RecordingOps()
    target = tmp_path / "a" / "b"
    created = ensure_dir(str(target), ops)
    assert created == [str(tmp_path / "a"), str(target)]
    assert target.is_dir()
    assert ops.calls == [
        ("mkdir", str(tmp_path / "a")),
        ("open", str(tmp_path)),
        ("fsync", str(tmp_path)),
        ("close", str(tmp_path)),
        ("mkdir", str(target)),
        ("open", str(tmp_path / "a")),
        ("fsync", str(tmp_path / "a")),
        ("close", str(tmp_path / "a")),
    ]
    assert ensure_dir(str(target), ops) == []
