"""Known sync copies: register, report unsynced work, list, abandon (docs/workflow.md).

An abandoned copy may never commit again (``raise_if_abandoned``, checked inside the commit
transaction). Synchronous functions over a ``MetadataDB``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from smartsyncd.core.errors import (
    BadRequest,
    CopyAbandoned,
    Forbidden,
    NotFound,
)
from smartsyncd.storage.api import (
    CopyRecord,
)
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.db import (
    MetadataDB,
    checked_line,
    dt_or_none,
    ts,
)

_COPY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def raise_if_abandoned(db: MetadataDB, engagement_id: int, copy: str | None) -> None:
    if not copy:
        return
    row = db.one(
        "SELECT abandoned_at, abandoned_by FROM copies WHERE engagement_id = ? AND copy_id = ?",
        (engagement_id, copy),
    )
    if row is not None and row[0] is not None:
        raise CopyAbandoned(
            f"this sync copy ({copy}) was abandoned by {row[1]} at {row[0][:16].replace('T', ' ')} UTC"
            " and may never commit again; clone the engagement anew",
            copy=copy,
        )


# ----------------------------------------------------------------------------------- copies

_COPY_COLUMNS = (
    "copy_id, user_name, host, registered_at, last_contact, unsynced, unsynced_since, abandoned_at, abandoned_by"
)


def _copy(row: Sequence[Any]) -> CopyRecord:
    return CopyRecord(
        copy_id=row[0],
        user=row[1],
        host=row[2],
        registered_at=datetime.fromisoformat(row[3]),
        last_contact=datetime.fromisoformat(row[4]),
        unsynced=int(row[5]),
        unsynced_since=dt_or_none(row[6]),
        abandoned_at=dt_or_none(row[7]),
        abandoned_by=row[8],
    )


def copies_of(db: MetadataDB, engagement_id: int) -> list[CopyRecord]:
    rows = db.all(
        f"SELECT {_COPY_COLUMNS} FROM copies WHERE engagement_id = ? ORDER BY registered_at, copy_id",
        (engagement_id,),
    )
    return [_copy(r) for r in rows]


def _get_copy(db: MetadataDB, engagement_id: int, copy_id: str) -> CopyRecord | None:
    row = db.one(f"SELECT {_COPY_COLUMNS} FROM copies WHERE engagement_id = ? AND copy_id = ?", (engagement_id, copy_id))
    return None if row is None else _copy(row)


def _check_copy_id(copy_id: object) -> str:
    if not isinstance(copy_id, str) or not _COPY_ID.match(copy_id):
        raise BadRequest("a copy id is 1-64 characters of letters, digits, '-' and '_'")
    return copy_id


def _upsert_copy(
    db: MetadataDB, engagement_id: int, copy_id: str, user: str, host: str, session: str | None, now: datetime,
    key_hash: str | None = None,
) -> tuple[CopyRecord, bool]:
    existing = _get_copy(db, engagement_id, copy_id)
    if existing is not None:
        if existing.abandoned_at is not None:
            raise_if_abandoned(db, engagement_id, copy_id)
        if existing.user != user:
            raise Forbidden(f"copy {copy_id} belongs to another user")
        # the copy's secret is kept from its first contact that names one (storage/wipes.py)
        db.execute(
            "UPDATE copies SET host = ?, session_id = ?, last_contact = ?, key_hash = COALESCE(key_hash, ?)"
            " WHERE engagement_id = ? AND copy_id = ?",
            (host, session, ts(now), key_hash, engagement_id, copy_id),
        )
        return existing, False
    db.execute(
        f"INSERT INTO copies (engagement_id, {_COPY_COLUMNS}, session_id, key_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, NULL, NULL, NULL, ?, ?)",
        (engagement_id, copy_id, user, host, ts(now), ts(now), session, key_hash),
    )
    audit_engagement(db, engagement_id, "copy_register", user, now, {"copy": copy_id, "host": host})
    return _get_copy(db, engagement_id, copy_id), True  # type: ignore[return-value]


def register_copy(
    db: MetadataDB, engagement_id: int, copy_id: str, user: str, host: str, session: str | None, now: datetime,
    key_hash: str | None = None,
) -> CopyRecord:
    _check_copy_id(copy_id)
    checked_line(host, "host name")

    def tx() -> CopyRecord:
        _upsert_copy(db, engagement_id, copy_id, user, host, session, now, key_hash)
        found = _get_copy(db, engagement_id, copy_id)
        assert found is not None
        return found

    return db.write(tx)


def report_copy(
    db: MetadataDB,
    engagement_id: int,
    copy_id: str,
    user: str,
    host: str,
    session: str | None,
    unsynced: int,
    since: datetime | None,
    now: datetime,
    key_hash: str | None = None,
) -> CopyRecord:
    """A contact: the copy holds ``unsynced`` local changes, unsynced since ``since``."""
    _check_copy_id(copy_id)
    checked_line(host, "host name")
    if not isinstance(unsynced, int) or isinstance(unsynced, bool) or unsynced < 0:
        raise BadRequest("unsynced must be a non-negative integer")

    def tx() -> CopyRecord:
        before, _new = _upsert_copy(db, engagement_id, copy_id, user, host, session, now, key_hash)
        if unsynced == 0:
            since_text = None
        elif since is not None:
            since_text = ts(min(since, now))
        elif before.unsynced_since is not None:
            since_text = ts(before.unsynced_since)
        else:
            since_text = ts(now)
        db.execute(
            "UPDATE copies SET unsynced = ?, unsynced_since = ? WHERE engagement_id = ? AND copy_id = ?",
            (unsynced, since_text, engagement_id, copy_id),
        )
        found = _get_copy(db, engagement_id, copy_id)
        assert found is not None
        return found

    return db.write(tx)


def list_copies(db: MetadataDB, engagement_id: int) -> list[CopyRecord]:
    return db.read(lambda: copies_of(db, engagement_id))


def abandon_copy(db: MetadataDB, engagement_id: int, copy_id: str, actor: str, now: datetime) -> CopyRecord:
    """Revoke a copy for good: its session ends and its commits are refused from now on."""

    def tx() -> CopyRecord:
        found = find_copy(db, engagement_id, copy_id)
        if found.abandoned_at is not None:
            raise BadRequest(f"copy {copy_id} was already abandoned by {found.abandoned_by}")
        return abandon_in_transaction(db, engagement_id, found, actor, now)

    return db.write(tx)


def find_copy(db: MetadataDB, engagement_id: int, copy_id: str) -> CopyRecord:
    """The copy, or ``NotFound`` naming it."""
    found = _get_copy(db, engagement_id, copy_id)
    if found is None:
        raise NotFound(f"no copy {copy_id!r} in this engagement", copy=copy_id)
    return found


def abandon_in_transaction(
    db: MetadataDB, engagement_id: int, found: CopyRecord, actor: str, now: datetime
) -> CopyRecord:
    """``abandon_copy``'s writes, inside the caller's transaction (storage/wipes.py too)."""
    copy_id = found.copy_id
    row = db.one("SELECT session_id FROM copies WHERE engagement_id = ? AND copy_id = ?", (engagement_id, copy_id))
    ended = 0
    if row is not None and row[0]:
        ended = max(db.execute("DELETE FROM sessions WHERE id = ?", (row[0],)).rowcount, 0)
    db.execute(
        "UPDATE copies SET abandoned_at = ?, abandoned_by = ? WHERE engagement_id = ? AND copy_id = ?",
        (ts(now), actor, engagement_id, copy_id),
    )
    audit_engagement(
        db, engagement_id, "copy_abandon", actor, now,
        {"copy": copy_id, "user": found.user, "host": found.host, "unsynced": found.unsynced,
         "sessions_ended": ended},
    )
    result = _get_copy(db, engagement_id, copy_id)
    assert result is not None
    return result
