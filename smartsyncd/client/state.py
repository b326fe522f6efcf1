"""The client's durable local state: ``DIR/.smartsync/state.sqlite3`` and the root marker.

SQLite in WAL mode with ``synchronous=FULL``: a row saying "this file is synced at seq N" is only
written after the file itself is durable, and it must survive a power loss. Tables:

- ``meta``: server_url, engagement, user, copy_id, last_seq, pending batch id and digest,
  the copy's secret (``copy_key``: authenticates its wipe report);
- ``files``: the synced base per path (seq, content id, size), the (size, mtime_ns, inode) stat
  cache that lets a no-op scan skip reading files, and the encoded manifest (``chunks``) so the
  next edit can send a delta and reuse unchanged chunks;
- ``spellings``: the local spelling of each path (file or folder) whose name is decomposed
  (NFD) on this disk, by its NFC path on the wire.

The marker ``DIR/.smartsync/copy.json`` names the engagement, server and copy id. Every method
here blocks: the engine calls them on a thread (the connection is shared across threads, one
call at a time, guarded by a lock).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from smartsyncd.client import osfs
from smartsyncd.client.errors import UsageError
from smartsyncd.client.localfs import atomic_write_bytes, fsync_dir
from smartsyncd.core.manifest import decode_binary, encode_binary
from smartsyncd.core.model import ChunkRef, HistoryCheck
from smartsyncd.core.planner import BaseEntry

STATE_DIR = ".smartsync"
STATE_FILE = "state.sqlite3"
MARKER_FILE = "copy.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    content TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    chunks BLOB
);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spellings (path TEXT PRIMARY KEY, local TEXT NOT NULL);
"""


class StateError(UsageError):
    """The local state is missing or does not belong to this folder: sync stops (exit 2)."""


@dataclass(frozen=True, kw_only=True)
class FileRecord(BaseEntry):
    """A synced file: the base version plus the stat cache and its chunk list."""

    path: str
    mtime_ns: int
    inode: int
    chunks: Sequence[ChunkRef] | None = None


@dataclass(frozen=True)
class CopyMeta:
    server_url: str
    engagement: str
    user: str
    copy_id: str


def state_dir(directory: Path) -> Path:
    return directory / STATE_DIR


def marker_path(directory: Path) -> Path:
    return directory / STATE_DIR / MARKER_FILE


def read_marker(directory: Path) -> dict[str, str]:
    """Return the marker's fields; raise ``StateError`` when the folder or marker is missing."""
    if not osfs.is_dir(directory):
        raise StateError(f"sync folder {directory} is missing (unmounted or removed?)")
    path = marker_path(directory)
    try:
        data = json.loads(osfs.read_text(path, "utf-8"))
    except FileNotFoundError:
        raise StateError(
            f"{directory} has no {STATE_DIR}/{MARKER_FILE} marker: not a sync copy, or the "
            "folder was emptied; refusing to sync (nothing is deleted)"
        ) from None
    except (OSError, ValueError) as e:
        raise StateError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("engagement", "server", "copy_id")
    ):
        raise StateError(f"{path} is damaged")
    return {k: data[k] for k in ("engagement", "server", "copy_id")}


class ClientState:
    """The SQLite state of one sync copy. Create with ``create`` or ``open``."""

    def __init__(self, directory: Path, conn: sqlite3.Connection) -> None:
        self.directory = directory
        self._conn = conn
        self._lock = threading.Lock()

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        return conn

    @classmethod
    def create(cls, directory: Path, meta: CopyMeta) -> ClientState:
        """Create ``DIR/.smartsync`` with a fresh database and the marker (durably)."""
        sdir = state_dir(directory)
        osfs.make_folders(sdir, exist_ok=False)
        fsync_dir(directory)
        conn = cls._connect(sdir / STATE_FILE)
        state = cls(directory, conn)
        state._set_many(
            {
                "server_url": meta.server_url,
                "engagement": meta.engagement,
                "user": meta.user,
                "copy_id": meta.copy_id,
                "last_seq": "0",
            }
        )
        marker = {"engagement": meta.engagement, "server": meta.server_url,
                  "copy_id": meta.copy_id}
        atomic_write_bytes(marker_path(directory), json.dumps(marker, indent=2).encode())
        fsync_dir(sdir)
        return state

    @classmethod
    def open(cls, directory: Path) -> ClientState:
        """Open an existing copy; the marker must be present and match the database."""
        marker = read_marker(directory)
        db = state_dir(directory) / STATE_FILE
        if not osfs.is_file(db):
            raise StateError(f"{db} is missing: the sync state of this copy is gone")
        state = cls(directory, cls._connect(db))
        state.check_marker(marker)
        return state

    def check_marker(self, marker: dict[str, str] | None = None) -> None:
        """Raise ``StateError`` unless the folder's marker names this copy."""
        if marker is None:
            marker = read_marker(self.directory)
        if marker["copy_id"] != self.meta().copy_id:
            raise StateError(
                f"{marker_path(self.directory)} belongs to another copy "
                f"({marker['copy_id']}); refusing to sync"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- meta ---------------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_many(self, values: dict[str, str | None]) -> None:
        with self._lock, _transaction(self._conn):
            for key, value in values.items():
                if value is None:
                    self._conn.execute("DELETE FROM meta WHERE key=?", (key,))
                else:
                    self._conn.execute(
                        "INSERT INTO meta(key, value) VALUES(?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value),
                    )

    def takes_zstd_uploads(self) -> bool:
        """Whether the server said, when this copy registered, that it takes uploads as one
        zstd stream (kept for the copy's first upload, which asks nothing before sending)."""
        return self._get("zstd_uploads") == "1"

    def set_takes_zstd_uploads(self, takes: bool) -> None:
        self._set_many({"zstd_uploads": "1" if takes else None})

    def meta(self) -> CopyMeta:
        values = {k: self._get(k) for k in ("server_url", "engagement", "user", "copy_id")}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise StateError(f"sync state is damaged: missing {', '.join(missing)}")
        return CopyMeta(**{k: str(v) for k, v in values.items()})

    def copy_key(self) -> str:
        """This copy's secret (64 hex digits), drawn at its first use: the server keeps only
        its SHA-256, which authenticates the copy's wipe report (client/wipe.py)."""
        key = self._get("copy_key")
        if key is None:
            key = secrets.token_hex(32)
            self._set_many({"copy_key": key})
        return key

    @property
    def last_seq(self) -> int:
        value = self._get("last_seq")
        return int(value) if value is not None else 0

    def set_last_seq(self, seq: int) -> None:
        self._set_many({"last_seq": str(int(seq))})

    def root_key(self) -> str | None:
        """The public key (hex) this copy accepts for signed content roots (issue 20)."""
        return self._get("root_key")

    def set_root_key(self, public_hex: str) -> None:
        self._set_many({"root_key": public_hex})

    def pending_batch(self) -> tuple[str, str] | None:
        """The (batch id, digest of its changes) sent but not yet answered, if any."""
        batch, digest = self._get("pending_batch"), self._get("pending_digest")
        if batch is None or digest is None:
            return None
        return batch, digest

    def set_pending_batch(self, batch: str, digest: str) -> None:
        self._set_many({"pending_batch": batch, "pending_digest": digest})

    def clear_pending_batch(self) -> None:
        self._set_many({"pending_batch": None, "pending_digest": None})

    # -- the log this copy follows (client/reconcile.py) ---------------------------------------

    def history_check(self, seq: int | None = None) -> HistoryCheck:
        """What this copy knows of the server's log at ``seq`` (default: its last seq): the
        record token there, if seen, and the store identity and generation it synced with."""
        at = self.last_seq if seq is None else seq
        with self._lock:
            row = self._conn.execute("SELECT hash FROM history WHERE seq=?", (at,)).fetchone()
        generation = self._get("store_generation")
        return HistoryCheck(
            seq=at, hash=None if row is None else str(row[0]), store=self._get("store_id"),
            generation=None if generation is None else int(generation),
        )

    def remember_history(
        self, seq: int | None, token: str | None, store: str | None, generation: int | None
    ) -> None:
        """Keep the token of the record at ``seq`` as seen from the server (before last_seq
        may move there), and the store identity and generation; drop tokens behind last_seq."""
        with self._lock, _transaction(self._conn):
            if seq is not None and token is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO history(seq, hash) VALUES(?, ?)", (seq, token)
                )
            row = self._conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
            last = int(row[0]) if row is not None else 0
            self._conn.execute("DELETE FROM history WHERE seq < ?", (last,))
            for key, value in (("store_id", store), ("store_generation", generation)):
                if value is not None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, str(value))
                    )

    def forget_history(self, store: str | None, generation: int | None) -> None:
        """The server's log is not the one this copy synced (``reconcile``): every synced base
        becomes unknown (files stay on disk and are sent again: the server answers unchanged,
        applied or conflict), last_seq goes to 0, and the server's identity is adopted."""
        with self._lock, _transaction(self._conn):
            self._conn.execute("DELETE FROM files")
            self._conn.execute("DELETE FROM history")
            self._conn.execute(
                "DELETE FROM meta WHERE key IN ('last_seq', 'pending_batch', 'pending_digest',"
                " 'store_id', 'store_generation')"
            )
            for key, value in (("store_id", store), ("store_generation", generation)):
                if value is not None:
                    self._conn.execute(
                        "INSERT INTO meta(key, value) VALUES(?, ?)", (key, str(value))
                    )

    # -- files --------------------------------------------------------------------------------

    def get(self, path: str) -> FileRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT path, seq, content, size, mtime_ns, inode, chunks FROM files WHERE path=?",
                (path,),
            ).fetchone()
        return None if row is None else _record(row)

    def all_files(self) -> dict[str, FileRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT path, seq, content, size, mtime_ns, inode, chunks FROM files"
            ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def update(
        self, put: Iterable[FileRecord] = (), delete: Iterable[str] = (),
        last_seq: int | None = None,
    ) -> None:
        """Write file rows, drop others and optionally move last_seq, in one transaction."""
        rows = [
            (
                rec.path, rec.seq, rec.content, rec.size, rec.mtime_ns, rec.inode,
                None if rec.chunks is None else encode_binary(rec.chunks),
            )
            for rec in put
        ]
        gone = [(path,) for path in delete]
        with self._lock, _transaction(self._conn):
            # rows in order, in one statement each (a first sync writes thousands)
            self._conn.executemany(
                "INSERT OR REPLACE INTO files(path, seq, content, size, mtime_ns, inode, "
                "chunks) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.executemany("DELETE FROM files WHERE path=?", gone)
            if last_seq is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('last_seq', ?)",
                    (str(int(last_seq)),),
                )


    # -- local spellings of decomposed names ---------------------------------------------------

    def spellings(self) -> dict[str, str]:
        """Wire (NFC) path -> local spelling, for the names this copy has decomposed."""
        with self._lock:
            rows = self._conn.execute("SELECT path, local FROM spellings").fetchall()
        return {path: local for path, local in rows}

    def save_spellings(self, spellings: dict[str, str]) -> None:
        """Replace the remembered spellings with those of the last walk (if they changed)."""
        if spellings == self.spellings():
            return
        with self._lock, _transaction(self._conn):
            self._conn.execute("DELETE FROM spellings")
            self._conn.executemany(
                "INSERT INTO spellings(path, local) VALUES (?, ?)", sorted(spellings.items())
            )


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _record(row: tuple) -> FileRecord:
    path, seq, content, size, mtime_ns, inode, chunks = row
    return FileRecord(
        path=path, seq=seq, content=content, size=size, mtime_ns=mtime_ns, inode=inode,
        chunks=None if chunks is None else decode_binary(bytes(chunks)),
    )

