"""The change log as read: head, the change feed (``changes_since``), the live snapshot.

``changes_since`` checks a copy's view of the log first when it gives one (``history``).
Synchronous functions over a ``MetadataDB``.
"""

from __future__ import annotations

from typing import Any

from smartsyncd.core.errors import (
    BadRequest,
)
from smartsyncd.core.model import (
    Change,
    FileState,
    HistoryCheck,
)
from smartsyncd.storage import history
from smartsyncd.storage.db import (
    MetadataDB,
    dt,
    hex_or_none,
)

CHANGE_COLUMNS = (
    "seq, path, kind, content, size, prev_seq, user_name, session_id, committed_at, conflict_of, batch,"
    " mtime_ns, readonly"
)


# what the change feed reads: the columns above and the record's chain hash (its token)
_FEED_COLUMNS = CHANGE_COLUMNS + ", record_hash"


def _change(row: Any) -> Change:
    return Change(
        seq=int(row[0]),
        path=row[1],
        kind=row[2],
        content=hex_or_none(row[3]),
        size=int(row[4]),
        prev_seq=None if row[5] is None else int(row[5]),
        user=row[6],
        session=row[7],
        time=dt(row[8]),
        conflict_of=row[9],
        batch=row[10],
        mtime_ns=None if row[11] is None else int(row[11]),
        readonly=None if row[12] is None else bool(row[12]),
        record_hash=hex_or_none(row[13]) if len(row) > 13 else None,
    )


# -- the change log


def head(db: MetadataDB, engagement_id: int) -> int:
    return db.engagement_head(engagement_id)


def changes_since(
    db: MetadataDB, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
) -> tuple[int, list[Change]]:
    """Changes after ``since`` (at most ``limit``) and the head; ``check`` (the copy's view
    of the log, ``storage/history.py``) raises ``HistoryDiverged`` when it does not hold."""
    if not isinstance(since, int) or since < 0:
        raise BadRequest("since must be a non-negative integer")
    if not isinstance(limit, int) or limit < 1:
        raise BadRequest("limit must be a positive integer")

    def tx() -> tuple[int, list[Change]]:
        head = db.engagement_head(engagement_id)
        if check is not None:
            history.check_history(db, engagement_id, head, check)
        rows = db.all(
            f"SELECT {_FEED_COLUMNS} FROM changes WHERE engagement_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (engagement_id, since, limit),
        )
        return head, [_change(r) for r in rows]

    return db.read(tx)


def snapshot(db: MetadataDB, engagement_id: int) -> tuple[int, list[FileState]]:
    def tx() -> tuple[int, list[FileState]]:
        head = db.engagement_head(engagement_id)
        rows = db.all(
            "SELECT path, seq, content, size, mtime_ns, readonly FROM files WHERE engagement_id = ?"
            " AND content IS NOT NULL ORDER BY path",
            (engagement_id,),
        )
        files = [
            FileState(
                path=r[0], seq=int(r[1]), content=hex_or_none(r[2]), size=int(r[3]),
                mtime_ns=None if r[4] is None else int(r[4]),
                readonly=None if r[5] is None else bool(r[5]),
            )
            for r in rows
        ]
        return head, files

    return db.read(tx)


# -- fsck support (read-only)


def engagement_ids(db: MetadataDB) -> list[tuple[int, str, int]]:
    return [(int(r[0]), r[1], int(r[2])) for r in db.all("SELECT id, name, head FROM engagements ORDER BY id")]
