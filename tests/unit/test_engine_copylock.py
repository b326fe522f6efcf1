"""``SyncCopy`` and the copy lock against the real server Site in memory (the ``server``
fixture): a second open of the same folder is refused with the message until the first is
closed, a read-only open works beside it but cannot sync, a clone holds the lock, and the
first sync after an interrupted one removes the orphaned temp files (not the resumable
partial downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clientkit import MemoryServer, counting_api, driven, files_of

from smartsyncd.client.copylock import syncing_path
from smartsyncd.client.errors import CopyInUse, NetworkError, UsageError


@driven
async def test_second_open_is_refused_until_the_first_is_closed(
    server: MemoryServer, tmp_path: Path
) -> None:
    api = await server.api()
    root = tmp_path / "a"
    clone = await server.clone(api, root)
    with pytest.raises(CopyInUse) as refused:  # the clone holds it
        server.open(root)
    message = str(refused.value)
    assert str(root) in message and f"pid {os.getpid()}" in message
    assert "only one sync or watch at a time" in message
    assert refused.value.exit_code == 2
    clone.close()

    first = server.open(root)
    with pytest.raises(CopyInUse):
        server.open(root)
    # reading beside it is fine; syncing from a read-only open is refused
    reader = server.open(root, exclusive=False)
    assert (await reader.status(api)).clean
    with pytest.raises(UsageError, match="read-only"):
        await reader.sync(api)
    reader.close()
    (root / "memo.txt").write_bytes(b"one")
    assert (await first.sync(api)).uploaded == 1
    first.close()
    second = server.open(root)
    assert (await second.sync(api)).uploaded == 0
    second.close()


@driven
async def test_first_sync_after_an_interrupted_one_removes_its_temp_files(
    server: MemoryServer, tmp_path: Path
) -> None:
    api = await server.api()
    root = tmp_path / "a"
    copy = await server.clone(api, root)
    assert not syncing_path(root).exists()  # a clean clone leaves no marker
    (root / "dir").mkdir()
    (root / "dir" / "ledger.csv").write_bytes(b"rows\n")
    await copy.sync(api)
    assert not syncing_path(root).exists()
    copy.close()
    # what a process killed mid-download leaves: the marker, temp files, a partial download
    syncing_path(root).write_bytes(b"4242\n")
    (root / ".~smartsync-0123abcd.tmp").write_bytes(b"half")
    (root / "dir" / ".~smartsync-4567cdef.tmp").write_bytes(b"half")
    partial = root / ".smartsync" / "partial"
    partial.mkdir()
    (partial / "c0ffee.part").write_bytes(b"kept for resume until the pull completes")
    (root / "user.~smartsync-like.tmp").write_bytes(b"a user's file")
    again = server.open(root)
    report = await again.sync(api)
    again.close()
    assert not [p for p in root.rglob(".~smartsync-*") if ".smartsync" not in p.parts]
    assert not syncing_path(root).exists()
    assert files_of(root) == {"dir/ledger.csv": b"rows\n", "user.~smartsync-like.tmp": b"a user's file"}
    assert report.uploaded == 1  # the user's file, which only looks like ours


@driven
async def test_a_failed_sync_keeps_the_marker(server: MemoryServer, tmp_path: Path) -> None:  # noqa: F811
    api = await counting_api(server)
    root = tmp_path / "a"
    copy = await server.clone(api, root)
    # over the 32 KiB a commit may carry (client/inline.py): its chunks are uploaded first
    (root / "x.txt").write_bytes(os.urandom(40_000))
    api.fail_after = 0  # every chunk upload fails: the sync stops half-way
    with pytest.raises(NetworkError):
        await copy.sync(api)
    assert syncing_path(root).exists()  # noticed by the next sync (which sweeps)
    api.fail_after = None
    assert (await copy.sync(api)).uploaded == 1
    assert not syncing_path(root).exists()
    copy.close()


@driven
async def test_a_failed_clone_gives_the_lock_up(server: MemoryServer, tmp_path: Path) -> None:  # noqa: F811
    api = await counting_api(server)
    a = await server.clone(api, tmp_path / "a")
    (tmp_path / "a" / "report.pdf").write_bytes(os.urandom(300_000))
    await a.sync(api)
    a.close()
    cut = await counting_api(server, "bob")

    async def no_fetch(eng: str, hashes: object, stream: bool = False) -> dict[str, bytes]:
        raise NetworkError("connection lost (injected)")

    async def no_first_chunks(eng: str, *limits: int) -> dict[str, bytes]:
        raise NetworkError("connection lost (injected)")

    cut.fetch_chunks = no_fetch  # type: ignore[method-assign]
    cut.first_chunks = no_first_chunks  # type: ignore[method-assign]
    with pytest.raises(NetworkError):
        await server.clone(cut, tmp_path / "b")
    assert syncing_path(tmp_path / "b").exists()
    b = server.open(tmp_path / "b")  # same process: the failed clone did not keep the lock
    await b.sync(await counting_api(server, "bob"))
    b.close()
    assert files_of(tmp_path / "b") == files_of(tmp_path / "a")
    assert not syncing_path(tmp_path / "b").exists()
