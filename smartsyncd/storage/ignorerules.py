"""Engagement-wide ignore rules in the metadata database (issue 16).

One row per engagement that has rules (``engagement_ignore``, migration 72): the text as set,
its digest (the version clients compare) and who set it when. Each change, clearing included,
is an ``ignore_rules`` event in the engagement's audit chain with the digest (never the text:
the chain stays small). The commit reads the rules inside its own transaction, so a rule set
and a commit never race.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from smartsyncd.core.audit import engagement_chain
from smartsyncd.core.ignore import EngagementRules, check_engagement_rules, rules_digest
from smartsyncd.storage.audit import append_audit
from smartsyncd.storage.db import MetadataDB, ts


def set_ignore_rules(
    db: MetadataDB, engagement: str, text: str | None, actor: str, now: datetime
) -> str | None:
    """Set (``text``) or clear (``None``) the engagement's rules; return the new digest."""
    if text is not None:
        check_engagement_rules(text)
    digest = None if text is None else rules_digest(text)

    def tx() -> str | None:
        engagement_id = db._engagement_id(engagement)
        db.execute("DELETE FROM engagement_ignore WHERE engagement_id = ?", (engagement_id,))
        if text is not None:
            db.execute(
                "INSERT INTO engagement_ignore (engagement_id, rules, digest, set_by, set_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (engagement_id, text, digest, actor, ts(now)),
            )
        append_audit(
            db, engagement_chain(engagement), "ignore_rules", actor, now, engagement,
            {"digest": digest, "lines": 0 if text is None else len(text.splitlines())},
        )
        return digest

    return db.write(tx)


def ignore_rules(db: MetadataDB, engagement_id: int) -> EngagementRules | None:
    """The engagement's rules, or ``None`` when it has none."""
    row = db.one("SELECT rules FROM engagement_ignore WHERE engagement_id = ?", (engagement_id,))
    return None if row is None else compiled(str(row[0]))


@lru_cache(maxsize=64)
def compiled(text: str) -> EngagementRules:
    """Rules compiled once per distinct text (each commit reads them)."""
    return EngagementRules.parse(text)
