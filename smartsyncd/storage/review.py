"""Resolving a conflict item (docs/workflow.md, "Conflict review").

A resolution is one write transaction holding the engagement lock: the item is read
(``storage/conflicts``), ``core.review.resolution_changes`` decides the changes against the
head, they are committed by ``commit.commit_tx`` (a normal change-log record: locks and
sign-off apply, a retried request replays its first answer), the item is marked resolved and
the engagement's audit chain records who chose what. Synchronous functions over a
``MetadataDB``.
"""

from __future__ import annotations

from datetime import datetime

from smartsyncd.core import commit_rules
from smartsyncd.core.review import (
    Choice,
    ConflictItem,
    refuse_if_resolved,
    resolution_changes,
    resolve_digest,
)
from smartsyncd.storage import commit, conflicts
from smartsyncd.storage.api import CommitResult, PutManifest
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.db import MetadataDB, checked_line, lock_engagement, ts


def resolve(
    db: MetadataDB,
    engagement_id: int,
    item_id: int,
    choice: Choice,
    user: str,
    session: str | None,
    batch: str,
    seen: tuple[int | None, int | None],
    merged: tuple[str, int] | None,
    sent: PutManifest | None,
    now: datetime,
) -> tuple[ConflictItem, CommitResult]:
    """Resolve item ``item_id`` by ``choice`` in one transaction (module docstring).

    ``seen``: the (file, copy) versions the reviewer decided on; ``merged``: the merge's
    (content id, size), its chunks uploaded and its manifest ``sent`` unless the server
    has it. A retried ``batch`` answers as the first time did."""
    checked_line(batch, "batch", 200)
    when = ts(now)
    digest = resolve_digest(item_id, choice, merged)

    def tx() -> tuple[ConflictItem, CommitResult]:
        lock_engagement(db, engagement_id)
        item = conflicts.load_item(db, engagement_id, item_id)
        key = commit_rules.batch_key(user, batch)
        if item.resolved_at is not None:
            if _resolved_by_batch(db, engagement_id, item_id, key):  # a retry: its first answer
                replay = commit.commit_tx(db, engagement_id, user, session, batch, [], {}, now, when,
                                          digest=digest)
                return item, replay
            refuse_if_resolved(item)
        changes = resolution_changes(
            item, choice, conflicts.head_state(db, engagement_id, item.path),
            conflicts.head_state(db, engagement_id, item.copy_path), seen[0], seen[1], merged,
        )
        manifests = {} if sent is None else {item.path: sent}
        result = commit.commit_tx(
            db, engagement_id, user, session, batch, changes, manifests, now, when, digest=digest
        )
        db.execute(
            "UPDATE conflicts SET resolved_at = ?, resolved_by = ?, resolution = ?, resolved_seq = ?,"
            " resolved_batch = ? WHERE engagement_id = ? AND id = ?",
            (when, user, choice, result.head, key, engagement_id, item_id),
        )
        audit_engagement(
            db, engagement_id, "conflict_resolve", user, now,
            {"id": item_id, "path": item.path, "copy_path": item.copy_path, "choice": choice,
             "theirs": {"seq": item.theirs.seq, "user": item.theirs.user, "content": item.theirs.content},
             "ours": {"seq": item.ours.seq, "user": item.ours.user, "content": item.ours.content},
             "merged": None if merged is None else merged[0],
             "changes": [{"path": r.path, "status": r.status, "seq": r.seq} for r in result.results],
             "head": result.head},
        )
        return conflicts.load_item(db, engagement_id, item_id), result

    return db.write(tx)


def _resolved_by_batch(db: MetadataDB, engagement_id: int, item_id: int, key: str) -> bool:
    row = db.one(
        "SELECT resolved_batch FROM conflicts WHERE engagement_id = ? AND id = ?", (engagement_id, item_id)
    )
    return row is not None and row[0] == key
