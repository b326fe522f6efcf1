"""The conflict review queue's items (docs/workflow.md, "Conflict review"): made inside
the commit transaction, read for listing and resolving.

``record_conflicts`` runs inside the commit transaction (``storage/commit``): every conflict
copy the commit writes becomes an item, keyed by the seq of that write, with the version the
edit lost to (the live file of the same fold key before the batch) and its author. That covers
the copies a client made itself (``core.conflicts.conflict_origin`` reads the name back) as
well as those the server made. A
resolution is in ``storage/review`` (which commits, so it cannot live here: ``commit`` imports
this module). Synchronous functions over a ``MetadataDB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from smartsyncd.core.conflicts import LABEL_MARK, conflict_origin
from smartsyncd.core.errors import NotFound
from smartsyncd.core.model import Change, FileState
from smartsyncd.core.paths import fold_key
from smartsyncd.core.review import Choice, ConflictItem, Version
from smartsyncd.storage.db import MetadataDB, dt_or_none

MAX_LISTED = 1000  # items per answer, newest first

_ITEM_COLUMNS = (
    "k.id, k.path, k.copy_path, k.theirs_seq, k.theirs_user, k.theirs_content, k.theirs_size,"
    " k.ours_user, k.ours_content, k.ours_size, k.created_at, k.resolved_at, k.resolved_by,"
    " k.resolution, k.resolved_seq, fp.seq, fc.seq, fc.content"
)
_ITEM_FROM = (
    " FROM conflicts k"
    " LEFT JOIN files fp ON fp.engagement_id = k.engagement_id AND fp.path = k.path"
    " LEFT JOIN files fc ON fc.engagement_id = k.engagement_id AND fc.path = k.copy_path"
)


def _hex(value: Any) -> str | None:
    return None if value is None else bytes(value).hex()


def makes_item(change: Change) -> bool:
    """Whether ``change`` writes a conflict copy: one the server made (``conflict_of``), or a
    new file named as one (a copy the client made when a pulled version hit an unpushed edit,
    pushed as a new file). A cheap test: the commit runs it on every written change."""
    if change.kind != "put" or change.content is None:
        return False
    return change.conflict_of is not None or (LABEL_MARK in change.path and change.prev_seq is None)


def record_conflicts(db: MetadataDB, engagement_id: int, written: Sequence[Change], when: str) -> None:
    """One item per conflict copy among ``written`` (called before the batch's files rows are
    written, so the live file each edit lost to is still the head's). A copy the client made
    becomes an item only when the file its name points at is live."""
    binary = db.dialect.binary
    for c in written:
        if not makes_item(c):
            continue
        origin = c.conflict_of or conflict_origin(c.path)
        if origin is None:
            continue
        won = db.one(
            "SELECT f.path, f.seq, f.content, f.size, ch.user_name FROM files f"
            " LEFT JOIN changes ch ON ch.engagement_id = f.engagement_id AND ch.seq = f.seq"
            " WHERE f.engagement_id = ? AND f.fold_key = ? AND f.content IS NOT NULL",
            (engagement_id, fold_key(origin)),
        )
        if won is None and c.conflict_of is None:
            continue  # named like a conflict copy, of nothing live: an ordinary file
        path, seq, content, size, user = won if won is not None else (origin, None, None, 0, None)
        assert c.content is not None
        db.execute(
            "INSERT INTO conflicts (engagement_id, id, path, copy_path, theirs_seq, theirs_user,"
            " theirs_content, theirs_size, ours_user, ours_content, ours_size, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                engagement_id, c.seq, path, c.path, seq, user,
                None if content is None else binary(bytes(content)), int(size),
                c.user, binary(bytes.fromhex(c.content)), c.size, when,
            ),
        )


def _item(row: Sequence[Any]) -> ConflictItem:
    resolution: Choice | None = row[13]
    return ConflictItem(
        id=int(row[0]),
        path=row[1],
        copy_path=row[2],
        theirs=Version(None if row[3] is None else int(row[3]), row[4], _hex(row[5]), int(row[6])),
        ours=Version(int(row[0]), row[7], _hex(row[8]), int(row[9])),
        created_at=datetime.fromisoformat(row[10]),
        resolved_at=dt_or_none(row[11]),
        resolved_by=row[12],
        resolution=resolution,
        resolved_seq=None if row[14] is None else int(row[14]),
        path_seq=None if row[15] is None else int(row[15]),
        copy_seq=None if row[16] is None else int(row[16]),
        copy_live=row[17] is not None,
    )


def list_conflicts(
    db: MetadataDB, engagement_id: int, user: str | None, include_resolved: bool = False
) -> list[ConflictItem]:
    """The engagement's items, newest first: open ones (and resolved ones when asked), all of
    them (``user`` None: the reviewer's view) or those ``user`` wrote either side of."""

    def tx() -> list[ConflictItem]:
        db.engagement_head(engagement_id)  # NotFound for an unknown engagement
        where = "k.engagement_id = ?"
        params: list[Any] = [engagement_id]
        if not include_resolved:
            where += " AND k.resolved_at IS NULL"
        if user is not None:
            where += " AND (k.ours_user = ? OR k.theirs_user = ?)"
            params += [user, user]
        rows = db.all(
            f"SELECT {_ITEM_COLUMNS}{_ITEM_FROM} WHERE {where} ORDER BY k.id DESC LIMIT {MAX_LISTED}",
            params,
        )
        return [_item(r) for r in rows]

    return db.read(tx)


def load_item(db: MetadataDB, engagement_id: int, item_id: int) -> ConflictItem:
    row = db.one(
        f"SELECT {_ITEM_COLUMNS}{_ITEM_FROM} WHERE k.engagement_id = ? AND k.id = ?",
        (engagement_id, item_id),
    )
    if row is None:
        raise NotFound(f"no conflict {item_id} in this engagement", id=item_id)
    return _item(row)


def head_state(db: MetadataDB, engagement_id: int, path: str) -> FileState | None:
    row = db.one(
        "SELECT seq, content, size FROM files WHERE engagement_id = ? AND path = ?", (engagement_id, path)
    )
    return None if row is None else FileState(path, int(row[0]), _hex(row[1]), int(row[2]))
