"""client/nofollow.py: both ways (openat with O_NOFOLLOW, and the lstat/realpath fallback used
where ``dir_fd`` is missing, as on Windows) refuse a symbolic link anywhere on the way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smartsyncd.client import nofollow
from smartsyncd.client.nofollow import LinkInPath, ensure_folder, open_new, replace_into


@pytest.fixture(params=["openat", "fallback"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        monkeypatch.setattr(nofollow, "_has_dir_fd", lambda: False)
    return str(request.param)


def test_writes_inside_and_makes_folders(tmp_path: Path, way: str) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    fd = open_new(root, root / "a" / "b" / "new.tmp")
    os.write(fd, b"x")
    os.close(fd)
    replace_into(root, root / "a" / "b" / "new.tmp", root / "a" / "b" / "f.txt")
    assert (root / "a" / "b" / "f.txt").read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        open_new(root, root / "a" / "b" / "f.txt")


@pytest.mark.parametrize("at", ["Shared", "a/Shared"])
def test_a_link_on_the_way_is_refused(tmp_path: Path, way: str, at: str) -> None:
    root, outside = tmp_path / "copy", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / at).symlink_to(outside)
    target = root / at / "deep" / "evil.txt"
    with pytest.raises(LinkInPath):
        open_new(root, target)
    with pytest.raises(LinkInPath):
        ensure_folder(root, target.parent)
    temp = root / "t.tmp"
    temp.write_bytes(b"evil")
    with pytest.raises(LinkInPath):
        replace_into(root, temp, root / at / "evil.txt")
    assert list(outside.iterdir()) == []


def test_a_link_to_a_file_as_a_folder_is_refused(tmp_path: Path, way: str) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    (tmp_path / "f").write_bytes(b"")
    (root / "x").symlink_to(tmp_path / "f")
    with pytest.raises(LinkInPath):
        open_new(root, root / "x" / "y.txt")
