"""The client's SQLite state and root marker: round trips, durability settings, refusal cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartsyncd.client.state import (
    ClientState,
    CopyMeta,
    FileRecord,
    StateError,
    marker_path,
    read_marker,
)
from smartsyncd.core.model import ChunkRef

META = CopyMeta("https://127.0.0.1:8443", "acme-2026", "alice", "copy-1")


def rec(path: str, seq: int = 1, chunks: tuple[ChunkRef, ...] | None = None) -> FileRecord:
    return FileRecord(
        path=path, seq=seq, content="c" * 64, size=12, mtime_ns=123456789, inode=42,
        chunks=chunks,
    )


def test_create_then_open_round_trips(tmp_path: Path) -> None:
    chunks = (ChunkRef("a" * 64, 5), ChunkRef("b" * 64, 7))
    state = ClientState.create(tmp_path, META)
    state.update(put=[rec("x/ä.txt", 3, chunks), rec("y", 4)], last_seq=9)
    state.set_pending_batch("batch-1", "digest")
    state.close()

    again = ClientState.open(tmp_path)
    assert again.meta() == META
    assert again.last_seq == 9
    assert again.pending_batch() == ("batch-1", "digest")
    files = again.all_files()
    assert files == {"x/ä.txt": rec("x/ä.txt", 3, chunks), "y": rec("y", 4)}
    assert again.get("x/ä.txt") == rec("x/ä.txt", 3, chunks)
    assert again.get("nope") is None
    again.clear_pending_batch()
    again.update(delete=["y"])
    assert again.pending_batch() is None
    assert set(again.all_files()) == {"x/ä.txt"}


def test_database_uses_wal_and_full_sync(tmp_path: Path) -> None:
    state = ClientState.create(tmp_path, META)
    conn = state._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_update_is_atomic(tmp_path: Path) -> None:
    state = ClientState.create(tmp_path, META)
    state.update(put=[rec("a")], last_seq=1)
    # the last_seq conversion fails after the rows were written: all of it must roll back
    with pytest.raises(TypeError):
        state.update(put=[rec("b", 2), rec("c", 3)], delete=["a"], last_seq=object())  # type: ignore[arg-type]
    assert set(state.all_files()) == {"a"}
    assert state.last_seq == 1


def test_marker_written_and_required(tmp_path: Path) -> None:
    ClientState.create(tmp_path, META).close()
    data = json.loads(marker_path(tmp_path).read_text())
    assert data == {"engagement": "acme-2026", "server": META.server_url, "copy_id": "copy-1"}
    marker_path(tmp_path).unlink()
    with pytest.raises(StateError, match="marker"):
        ClientState.open(tmp_path)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="missing"):
        read_marker(tmp_path / "unmounted")


def test_marker_of_another_copy_is_refused(tmp_path: Path) -> None:
    state = ClientState.create(tmp_path, META)
    marker_path(tmp_path).write_text(
        json.dumps({"engagement": "acme-2026", "server": "x", "copy_id": "other"})
    )
    with pytest.raises(StateError, match="another copy"):
        state.check_marker()


def test_create_refuses_existing_state(tmp_path: Path) -> None:
    ClientState.create(tmp_path, META).close()
    with pytest.raises(FileExistsError):
        ClientState.create(tmp_path, META)
