"""Storage volumes (storage/volumes.py, storage/packs.py): placement, choice, and the online move
with a crash injected between each of its steps, on real folders and both metadata backends.

A "crash" is an exception raised from inside the real step functions; the store is then closed
and opened again (a new daemon: nothing remembered in memory) and must serve every chunk, with
the database naming a volume that holds every pack. Running the move again must finish it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage import volumes
from smartsyncd.storage.backup import BackupError, backup_sqlite, restore_sqlite
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.sqlite import open_server_store
from smartsyncd.storage.sqlstore import SqlServerStore
from smartsyncd.testing.syncpool import SyncReactor, SyncThreadPool, run_sync

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_storage import T0, Backend, chunk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from pg import PgCluster  # noqa: E402


class Crash(Exception):
    """Stands for the process dying at this point."""


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path / "data", None)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return Backend("postgresql", tmp_path / "data", cluster.fresh_url())


def open_store(backend: Backend, tmp_path: Path) -> SqlServerStore:
    vols = {"nas1": str(tmp_path / "nas1"), "nas2": str(tmp_path / "nas2")}
    return run_sync(open_server_store(
        str(backend.data_dir), reactor=SyncReactor(), database_url=backend.url, now=lambda: T0,
        pool=SyncThreadPool, volumes=vols,
    ))


def pack_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pack"))


async def fill(store: SqlServerStore, engagement_id: int, uploads: int, tag: str = "") -> list[str]:
    hashes: list[str] = []
    for i in range(uploads):
        batch = [chunk(f"upload {tag}{i} chunk {j} ".encode() * 200, codec=j % 2) for j in range(3)]
        await store.store_chunks(engagement_id, batch)
        hashes += [c.hash for c in batch]
    return hashes


async def readable(store: SqlServerStore, engagement_id: int, hashes: list[str]) -> None:
    got = await store.read_chunks(engagement_id, hashes)
    assert [c.hash for c in got] == hashes


# -- choice and placement


def test_choose_volume_takes_most_free_space_first_configured_on_ties() -> None:
    assert volumes.choose_volume({"default": 5, "nas1": 9, "nas2": 7}, ["default", "nas1", "nas2"]) == "nas1"
    assert volumes.choose_volume({"default": 9, "nas1": 9}, ["default", "nas1"]) == "default"
    assert volumes.choose_volume({"nas2": 1}, ["default", "nas1", "nas2"]) == "nas2"  # others unreadable
    assert volumes.choose_volume({}, ["default", "nas1"]) == "default"


def test_a_read_that_misses_finds_the_pack_on_another_volume(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path / "default"), volumes={"nas1": str(tmp_path / "nas1")})
    packs.prepare()
    packs.place(3, "nas1")
    written = packs.write_pack(3, [(chunk(b"x" * 100).hash, 0, 100, b"x" * 100)])
    assert written.volume == "nas1" and len(pack_files(tmp_path / "nas1")) == 1
    stale = PackStore(str(tmp_path / "default"), volumes={"nas1": str(tmp_path / "nas1")})
    entry = written.entries[0]
    assert stale.read_range(3, written.name, entry.offset, entry.stored_size) == b"x" * 100
    assert stale.volume_of(3) == "nas1"  # learned from the miss


def test_unknown_volume_in_the_database_is_a_storage_error(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path / "default"))
    packs.place(4, "gone")
    with pytest.raises(OSError, match="'gone' is not in"):
        packs.open_writer(4)


def test_create_on_a_volume_writes_there(backend: Backend, tmp_path: Path) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", "", "nas2"))
        hashes = run_sync(fill(store, e.id, 2))
        assert len(pack_files(tmp_path / "nas2" / str(e.id))) == 2
        assert pack_files(backend.data_dir / "chunks") == []
        assert run_sync(store.fsck()) == []
    finally:
        run_sync(store.close())
    store = open_store(backend, tmp_path)  # a new daemon learns the placement from the database
    try:
        assert store.packs.volume_of(e.id) == "nas2"
        run_sync(readable(store, e.id, hashes))
    finally:
        run_sync(store.close())


# -- the move


def test_move_copies_verifies_switches_and_removes(backend: Backend, tmp_path: Path) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        hashes = run_sync(fill(store, e.id, 3))
        report = run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))
        assert (report.source, report.target, report.packs, report.caught_up) == ("default", "nas1", 3, 0)
        assert report.bytes_copied == sum(p.stat().st_size for p in pack_files(tmp_path / "nas1"))
        assert not (backend.data_dir / "chunks" / str(e.id)).exists()
        assert backend.raw("SELECT volume, moving_to FROM engagements") == [("nas1", None)]
        run_sync(readable(store, e.id, hashes))
        assert run_sync(store.fsck()) == []
        with pytest.raises(BadRequest, match="no volume 'nas9'"):
            run_sync(volumes.move_engagement(store, store.packs, "acme", "nas9"))
    finally:
        run_sync(store.close())


def test_uploads_during_the_copy_are_caught_up_under_the_lock(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        hashes = run_sync(fill(store, e.id, 2))
        late: list[str] = []
        real_copy = volumes.copy_packs

        def copy_then_upload(packs: PackStore, *args: Any) -> int:
            copied = real_copy(packs, *args)
            if not late:  # an upload lands (on the old volume) right after the first pass
                batch = [chunk(b"late upload " * 300)]
                late.append(batch[0].hash)
                run_sync(store.store_chunks(e.id, batch))
            return copied

        monkeypatch.setattr(volumes, "copy_packs", copy_then_upload)
        report = run_sync(volumes.move_engagement(store, store.packs, "acme", "nas2"))
        assert report.caught_up == 1 and report.packs == 3
        assert len(pack_files(tmp_path / "nas2")) == 3
        run_sync(readable(store, e.id, hashes + late))
        assert run_sync(store.fsck()) == []
    finally:
        run_sync(store.close())


def test_a_pack_written_on_the_old_volume_after_the_switch_is_copied_over(
    backend: Backend, tmp_path: Path
) -> None:
    """Another daemon still believing the old volume writes there; recording it copies it."""
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        run_sync(fill(store, e.id, 1))
        run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))
        store.packs.place(e.id, "default")  # stale, as in a daemon that did not do the move
        hashes = run_sync(fill(store, e.id, 1, tag="later"))
        assert store.packs.volume_of(e.id) == "nas1"
        assert len(pack_files(tmp_path / "nas1")) == 2
        run_sync(readable(store, e.id, hashes))
        assert run_sync(store.fsck()) == []
        # the stray copy on the old volume is gc's, once older than the grace period
        assert len(pack_files(backend.data_dir / "chunks")) == 1
        old = T0.timestamp() - 7200  # gc measures age by the store's clock
        for p in pack_files(backend.data_dir / "chunks"):
            os.utime(p, (old, old))
        run_sync(store.gc(e.id, timedelta(hours=1)))
        assert pack_files(backend.data_dir / "chunks") == []
        assert len(pack_files(tmp_path / "nas1")) == 2
    finally:
        run_sync(store.close())


def _crash_after(name: str, calls: int = 1) -> Callable[[Any], Any]:
    real = getattr(volumes, name)
    seen = [0]

    def step(*args: Any) -> Any:
        result = real(*args)
        seen[0] += 1
        if seen[0] == calls:
            raise Crash(f"after {name}")
        return result

    return step


# (step that dies, how many calls of it complete first, volume the database names after)
CRASH_POINTS = [
    ("begin_move", 1, "default"),
    ("copy_pack", 2, "default"),  # mid-copy: two of three packs on the target
    ("copy_packs", 1, "default"),
    ("check_packs", 1, "default"),  # verified, not switched
    ("switch_volume", 1, "nas1"),  # switched, old files still there
    ("remove_engagement_files", 1, "nas1"),
]


@pytest.mark.parametrize(("step", "calls", "named"), CRASH_POINTS, ids=[c[0] for c in CRASH_POINTS])
def test_a_crash_between_steps_leaves_a_complete_volume_and_the_move_can_finish(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, calls: int, named: str
) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        hashes = run_sync(fill(store, e.id, 3))
        with monkeypatch.context() as patch:
            patch.setattr(volumes, step, _crash_after(step, calls))
            with pytest.raises(Crash):
                run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))
    finally:
        run_sync(store.close())

    store = open_store(backend, tmp_path)  # the restarted daemon
    try:
        assert run_sync(store.run_read(volumes.volumes_in_use, e.id))[0] == named
        own = backend.data_dir / "chunks" if named == "default" else tmp_path / "nas1"
        assert len(pack_files(own / str(e.id))) == 3  # the named volume is complete
        run_sync(readable(store, e.id, hashes))
        problems = run_sync(store.fsck())
        assert [p.kind for p in problems] == (["unfinished_move"] if named == "default" else [])
        report = run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))  # again
        assert report.target == "nas1"
        assert run_sync(store.fsck()) == []
        assert not (backend.data_dir / "chunks" / str(e.id)).exists()
        assert len(pack_files(tmp_path / "nas1" / str(e.id))) == 3
        run_sync(readable(store, e.id, hashes))
    finally:
        run_sync(store.close())


def test_an_interrupted_move_is_cancelled_by_moving_to_the_current_volume(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        hashes = run_sync(fill(store, e.id, 2))
        with monkeypatch.context() as patch:
            patch.setattr(volumes, "copy_packs", _crash_after("copy_packs"))
            with pytest.raises(Crash):
                run_sync(volumes.move_engagement(store, store.packs, "acme", "nas2"))
        with pytest.raises(BadRequest, match="being moved to volume 'nas2'"):
            run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))
        report = run_sync(volumes.move_engagement(store, store.packs, "acme", "default"))
        assert report.source == report.target == "default"
        assert not (tmp_path / "nas2" / str(e.id)).exists()
        assert run_sync(store.fsck()) == []
        run_sync(readable(store, e.id, hashes))
    finally:
        run_sync(store.close())


def test_a_corrupt_copy_is_not_switched_to(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(backend, tmp_path)
    try:
        e = run_sync(store.create_engagement("acme", ""))
        hashes = run_sync(fill(store, e.id, 2))
        real_copy = volumes.copy_packs

        def copy_and_damage(packs: PackStore, *args: Any) -> int:
            copied = real_copy(packs, *args)
            victim = pack_files(tmp_path / "nas1")[0]
            data = bytearray(victim.read_bytes())
            data[-2] ^= 0xFF
            victim.write_bytes(bytes(data))
            return copied

        monkeypatch.setattr(volumes, "copy_packs", copy_and_damage)
        with pytest.raises(Exception, match="does not verify"):
            run_sync(volumes.move_engagement(store, store.packs, "acme", "nas1"))
        assert backend.raw("SELECT volume FROM engagements") == [(None,)]
        run_sync(readable(store, e.id, hashes))
    finally:
        run_sync(store.close())


def test_backup_and_restore_cover_every_volume(tmp_path: Path) -> None:
    sqlite = Backend("sqlite", tmp_path / "data", None)
    store = open_store(sqlite, tmp_path)
    try:
        on_default = run_sync(store.create_engagement("acme", ""))
        on_nas2 = run_sync(store.create_engagement("beta", "", "nas2"))
        hashes = {on_default.id: run_sync(fill(store, on_default.id, 1)), on_nas2.id: run_sync(fill(store, on_nas2.id, 2))}
        roots = dict(store.packs.volumes)
    finally:
        run_sync(store.close())
    db = str(sqlite.data_dir / "metadata.sqlite3")
    info = backup_sqlite(db, roots, str(sqlite.data_dir / "tls"), str(tmp_path / "backup"))
    assert info["packs"] == 3 and info["volumes"] == ["default", "nas2"]
    assert len(pack_files(tmp_path / "backup" / "volumes" / "nas2")) == 2

    with pytest.raises(BackupError, match="volumes not in \\[storage\\] volumes: nas2"):
        restore_sqlite(str(tmp_path / "backup"), str(tmp_path / "new"), str(tmp_path / "x.db"),
                       {"default": str(tmp_path / "new" / "chunks")}, force=False)
    for folder in (sqlite.data_dir, tmp_path / "nas1", tmp_path / "nas2"):
        os.rename(folder, f"{folder}.lost")
    restore_sqlite(str(tmp_path / "backup"), str(sqlite.data_dir), db, roots, force=False)
    assert len(pack_files(tmp_path / "nas2")) == 2
    store = open_store(sqlite, tmp_path)
    try:
        assert run_sync(store.fsck()) == []
        for engagement_id, wanted in hashes.items():
            run_sync(readable(store, engagement_id, wanted))
    finally:
        run_sync(store.close())
