"""Storage quotas per engagement and per user (issue 20, docs/workflow.md "Quotas").

A quota is a number of bytes that limits two measures, each checked before anything is written:
- **stored bytes**: what the chunk store holds (pack sizes, compressed, every version).
  An engagement's are its packs; a user's are the packs their uploads wrote. Checked by
  ``check_stored`` before a pack is written (``store_chunks``, the streamed upload).
- **logical bytes**: the size of the live files. An engagement's are all its current files; a
  user's are the current files whose latest version they wrote, in every engagement. Checked
  by ``check_logical`` inside the commit transaction, before any row is inserted.
A batch that does not grow a measure (deletes, a smaller version) is never refused, so a user
over quota can always clean up. Refusals are ``QuotaExceeded`` (507, naming the quota, the
limit, the use and what the batch needed). Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from smartsyncd.core.errors import BadRequest, QuotaExceeded
from smartsyncd.core.model import Change
from smartsyncd.storage.audit import append_audit, audit_engagement
from smartsyncd.storage.db import MetadataDB, checked_line, chunks_of, engagement_name

Scope = Literal["engagement", "user"]
MAX_QUOTA = 1 << 62


def _limit(db: MetadataDB, scope: Scope, principal: str) -> int | None:
    row = db.one("SELECT bytes FROM quotas WHERE scope = ? AND principal = ?", (scope, principal))
    return None if row is None else int(row[0])


def usage(db: MetadataDB, scope: Scope, principal: str) -> tuple[int, int]:
    """(logical bytes, stored bytes) of an engagement (by name) or a user."""
    if scope == "engagement":
        row = db.one(
            "SELECT (SELECT COALESCE(SUM(f.size), 0) FROM files f WHERE f.engagement_id = e.id"
            " AND f.content IS NOT NULL), (SELECT COALESCE(SUM(p.size), 0) FROM packs p"
            " WHERE p.engagement_id = e.id) FROM engagements e WHERE e.name = ?",
            (principal,),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))
    logical = db.one(
        "SELECT COALESCE(SUM(f.size), 0) FROM files f JOIN changes c ON c.engagement_id = f.engagement_id"
        " AND c.seq = f.seq WHERE f.content IS NOT NULL AND c.user_name = ?",
        (principal,),
    )
    stored = db.one("SELECT COALESCE(SUM(size), 0) FROM packs WHERE user_name = ?", (principal,))
    return int(logical[0]), int(stored[0])


def _refuse(scope: Scope, principal: str, measure: str, limit: int, used: int, needed: int) -> QuotaExceeded:
    who = f"engagement {principal!r}" if scope == "engagement" else f"user {principal!r}"
    return QuotaExceeded(
        f"the storage quota of {who} is {limit} bytes ({measure}); {used} are used and this"
        f" needs {needed} more: nothing was stored. Delete files or ask an admin to raise the quota",
        quota=scope, principal=principal, measure=measure, limit=limit, used=used, needed=needed,
    )


def check_stored(db: MetadataDB, engagement_id: int, user: str | None, incoming: int) -> None:
    """Before ``incoming`` bytes of new packs are written: refuse past a stored-bytes quota."""
    if incoming <= 0 or not _any_quota(db):
        return
    name = engagement_name(db, engagement_id)
    for scope, principal in (("engagement", name), ("user", user)):
        if principal is None:
            continue
        limit = _limit(db, scope, principal)  # type: ignore[arg-type]
        if limit is None:
            continue
        _, stored = usage(db, scope, principal)  # type: ignore[arg-type]
        if stored + incoming > limit:
            raise _refuse(scope, principal, "stored bytes", limit, stored, incoming)  # type: ignore[arg-type]


def _any_quota(db: MetadataDB) -> bool:
    return db.one("SELECT 1 FROM quotas LIMIT 1") is not None


def check_logical(db: MetadataDB, engagement_id: int, user: str, written: Sequence[Change]) -> None:
    """Inside the commit transaction, before any insert: refuse a batch that grows the live
    bytes of the engagement or of ``user`` past a quota."""
    if not written or not _any_quota(db):
        return
    name = engagement_name(db, engagement_id)
    eng_limit, user_limit = _limit(db, "engagement", name), _limit(db, "user", user)
    if eng_limit is None and user_limit is None:
        return
    final: dict[str, int] = {}
    for c in written:  # the last record at a path is what stays live
        final[c.path] = c.size if c.kind == "put" else 0
    before: dict[str, tuple[int, str]] = {}
    for part in chunks_of(list(final)):
        marks = ", ".join("?" for _ in part)
        for path, size, author in db.all(
            "SELECT f.path, f.size, c.user_name FROM files f JOIN changes c ON c.engagement_id = f.engagement_id"
            f" AND c.seq = f.seq WHERE f.engagement_id = ? AND f.content IS NOT NULL AND f.path IN ({marks})",
            (engagement_id, *part),
        ):
            before[path] = (int(size), author)
    growth = sum(final.values()) - sum(size for size, _ in before.values())
    mine = sum(final.values()) - sum(size for size, who in before.values() if who == user)
    for scope, principal, limit, delta in (("engagement", name, eng_limit, growth), ("user", user, user_limit, mine)):
        if limit is None or delta <= 0:
            continue
        logical, _ = usage(db, scope, principal)  # type: ignore[arg-type]
        if logical + delta > limit:
            raise _refuse(scope, principal, "logical bytes", limit, logical, delta)  # type: ignore[arg-type]


def set_quota(
    db: MetadataDB, scope: Scope, principal: str, limit: int | None, actor: str, now: datetime
) -> tuple[int, int]:
    """Set (or with None remove) a quota; audited. Returns the current (logical, stored) use."""
    checked_line(actor, "actor")
    checked_line(principal, scope)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_QUOTA):
        raise BadRequest("a quota is a whole number of bytes, 0 or more")

    def tx() -> tuple[int, int]:
        eid = None
        if scope == "engagement":
            eid = db._engagement_id(principal)
        old = _limit(db, scope, principal)
        db.execute("DELETE FROM quotas WHERE scope = ? AND principal = ?", (scope, principal))
        if limit is not None:
            db.execute("INSERT INTO quotas (scope, principal, bytes) VALUES (?, ?, ?)", (scope, principal, limit))
        detail = {"scope": scope, "principal": principal, "bytes": limit, "previous": old}
        if eid is not None:
            audit_engagement(db, eid, "quota", actor, now, detail)
        else:
            append_audit(db, "global", "quota", actor, now, None, detail)
        return usage(db, scope, principal)

    return db.write(tx)


def quota_report(db: MetadataDB) -> list[tuple[str, str, int, int, int]]:
    """(scope, principal, limit, logical, stored) of every quota."""

    def tx() -> list[tuple[str, str, int, int, int]]:
        out = []
        for scope, principal, limit in db.all("SELECT scope, principal, bytes FROM quotas ORDER BY scope, principal"):
            logical, stored = usage(db, scope, principal)
            out.append((str(scope), str(principal), int(limit), logical, stored))
        return out

    return db.read(tx)

