"""The head as a commit reads it: ``core.commit_rules.HeadView`` implementations over ``files``.

``head_view`` picks one for a batch: the whole table read at once (``LoadedHeadView``) when the
engagement is small for the batch, the rows at the batch's keys (``KeyedHeadView``) when it is
large, or one indexed lookup at a time (``SqlHeadView``). All answer alike.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from smartsyncd.core import commit_rules
from smartsyncd.core.errors import (
    SyncError,
)
from smartsyncd.core.model import (
    FileState,
)
from smartsyncd.core.paths import ancestors, fold_key, normalize_path
from smartsyncd.storage.db import (
    MetadataDB,
    chunks_of,
    hex_or_none,
)

# ----------------------------------------------------------------------------- head view


class SqlHeadView:
    """``core.commit_rules.HeadView`` over the ``files`` table, inside the commit transaction."""

    def __init__(self, db: MetadataDB, engagement_id: int) -> None:
        self._db = db
        self._id = engagement_id

    def state(self, path: str) -> FileState | None:
        row = self._db.one(
            "SELECT seq, content, size FROM files WHERE engagement_id = ? AND path = ?",
            (self._id, path),
        )
        if row is None:
            return None
        return FileState(path=path, seq=int(row[0]), content=hex_or_none(row[1]), size=int(row[2]))

    def live_path_with_key(self, key: str) -> str | None:
        row = self._db.one(
            "SELECT path FROM files WHERE engagement_id = ? AND fold_key = ?"
            " AND content IS NOT NULL ORDER BY path LIMIT 1",
            (self._id, key),
        )
        return None if row is None else str(row[0])

    def folder_spelling(self, key: str) -> str | None:
        if not key:
            return ""
        # Live files below the folder have fold keys in [key + "/", key + "0"): "0" follows "/".
        row = self._db.one(
            "SELECT path FROM files WHERE engagement_id = ? AND fold_key >= ? AND fold_key < ?"
            " AND content IS NOT NULL ORDER BY fold_key LIMIT 1",
            (self._id, key + "/", key + "0"),
        )
        if row is None:
            return None
        # casefold may change a segment's length (ß -> ss) but never the segment count.
        return "/".join(str(row[0]).split("/")[: key.count("/") + 1])

    def live_paths_under(self, prefix: str, limit: int) -> list[str]:
        # paths starting with "F/" are those in ["F/", "F0"): "0" follows "/" bytewise
        rows = self._db.all(
            "SELECT path FROM files WHERE engagement_id = ? AND path >= ? AND path < ?"
            " AND content IS NOT NULL ORDER BY path LIMIT ?",
            (self._id, prefix, _prefix_end(prefix), limit),
        )
        return [str(row[0]) for row in rows]


def _prefix_end(prefix: str) -> str:
    """The least string above every string that starts with ``prefix`` (which ends in "/")."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# A commit of n changes reads the engagement's whole ``files`` table in one query when it has
# at most this many rows (cost proportional to the batch): three indexed lookups per change
# were most of a 10,000-file commit's time. Larger engagements: ``KeyedHeadView`` (the rows at
# the batch's keys), so the last of five batches of 2,000 no longer reads 8,000 rows.
_LOAD_HEAD_BASE = 256
_LOAD_HEAD_PER_CHANGE = 2  # beyond that, KeyedHeadView (about one range query per change) is cheaper


class LoadedHeadView:
    """``HeadView`` over every ``files`` row of an engagement, read once inside the commit
    transaction; answers exactly as ``SqlHeadView`` does (same bytewise orderings)."""

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        """``rows``: (path, fold_key, seq, content, size) of every row, tombstones too."""
        self._states: dict[str, FileState] = {}
        self._live_paths: list[str] | None = None
        live: list[tuple[str, str]] = []
        for path, key, seq, content, size in rows:
            self._states[path] = FileState(path=path, seq=int(seq), content=hex_or_none(content), size=int(size))
            if content is not None:
                live.append((key, path))
        live.sort()  # str order is code point order: the bytewise order of UTF-8 (both DBs)
        self._live: dict[str, str] = {}
        self._folders: dict[str, str] = {}
        for key, path in live:
            self._live.setdefault(key, path)  # ORDER BY path LIMIT 1
            key_parts = key.split("/")
            if len(key_parts) == 1:
                continue
            path_parts = path.split("/")
            for i in range(1, len(key_parts)):  # ORDER BY fold_key LIMIT 1 under each folder
                self._folders.setdefault("/".join(key_parts[:i]), "/".join(path_parts[:i]))

    def state(self, path: str) -> FileState | None:
        return self._states.get(path)

    def live_path_with_key(self, key: str) -> str | None:
        return self._live.get(key)

    def folder_spelling(self, key: str) -> str | None:
        if not key:
            return ""
        return self._folders.get(key)

    def live_paths_under(self, prefix: str, limit: int) -> list[str]:
        if self._live_paths is None:  # asked only when a batch deletes files under a folder
            self._live_paths = sorted(p for p, s in self._states.items() if s.content is not None)
        start = bisect.bisect_left(self._live_paths, prefix)
        out: list[str] = []
        for path in itertools.islice(self._live_paths, start, start + limit):
            if not path.startswith(prefix):
                break
            out.append(path)
        return out


class KeyedHeadView:
    """``HeadView`` for a batch on an engagement too big to read whole: the ``files`` rows whose
    fold key is that of a proposed path or of one of its folders, read in ``IN`` batches (cost
    proportional to the batch, not the engagement). Those keys are answered from the rows read;
    any other key (a conflict copy's name) and every ``folder_spelling`` (one indexed range query
    per key; ``commit_rules`` asks each folder once) by ``SqlHeadView``: the same answers."""

    def __init__(self, db: MetadataDB, engagement_id: int, paths: Iterable[str], normalized: bool = False) -> None:
        """``normalized``: ``paths`` are already NFC and valid (``commit_rules.validate_batch``)."""
        keys: set[str] = set()
        for raw in paths:
            if normalized:
                path = raw
            else:
                try:
                    path = normalize_path(raw)
                except SyncError:
                    continue  # plan_commit refuses it, naming the path
            keys.add(fold_key(path))
            keys.update(fold_key(folder) for folder in ancestors(path))
        rows: list[Any] = []
        for part in chunks_of(sorted(keys)):
            marks = ", ".join("?" for _ in part)
            rows += db.all(
                "SELECT path, fold_key, seq, content, size FROM files WHERE engagement_id = ?"
                f" AND fold_key IN ({marks})",
                (engagement_id, *part),
            )
        self._keys = keys
        self._loaded = LoadedHeadView(rows)
        self._sql = SqlHeadView(db, engagement_id)

    def state(self, path: str) -> FileState | None:
        if fold_key(path) in self._keys:  # every row with this path has this key: all read
            return self._loaded.state(path)
        return self._sql.state(path)

    def live_path_with_key(self, key: str) -> str | None:
        if key in self._keys:
            return self._loaded.live_path_with_key(key)
        return self._sql.live_path_with_key(key)

    def folder_spelling(self, key: str) -> str | None:
        # the rows read hold only names at the batch's keys, not every file below a folder
        return self._sql.folder_spelling(key)

    def live_paths_under(self, prefix: str, limit: int) -> list[str]:
        return self._sql.live_paths_under(prefix, limit)


def head_view(
    db: MetadataDB, engagement_id: int, changes: int, paths: Sequence[str] | None = None, normalized: bool = False
) -> commit_rules.HeadView:
    """The head as a commit of ``changes`` changes reads it: the whole ``files`` table in
    one query when that is at most a few rows per change; else, given the batch's
    ``paths``, the rows at their keys (``KeyedHeadView``), or one lookup at a time."""
    limit = _LOAD_HEAD_BASE + _LOAD_HEAD_PER_CHANGE * min(changes, commit_rules.MAX_CHANGES)
    # count first (an index-only scan), so a big engagement is not read to be dropped
    count = db.one(
        "SELECT COUNT(*) FROM (SELECT 1 FROM files WHERE engagement_id = ? LIMIT ?) AS f",
        (engagement_id, limit + 1),
    )[0]
    if count <= limit:
        return LoadedHeadView(
            db.all("SELECT path, fold_key, seq, content, size FROM files WHERE engagement_id = ?", (engagement_id,))
        )
    if paths is not None:
        return KeyedHeadView(db, engagement_id, paths, normalized)
    return SqlHeadView(db, engagement_id)
