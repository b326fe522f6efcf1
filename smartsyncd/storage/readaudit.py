"""Read access in the audit trail (issue 20): downloads, exports and history views.

Each engagement has a third chain, ``read:<name>``, beside its change log and its ``eng:<name>``
events, so recording reads never waits on (or delays) a commit's audit appends. The web layer
buffers read events and hands them here in batches (``web/readaudit.py``): one write
transaction appends them all. A download is named by its content id; ``record_reads`` adds
where that content is (the paths and change numbers that hold it, up to a few), so the trail
says which file and version was read. Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smartsyncd.storage.audit import append_audit
from smartsyncd.storage.db import MetadataDB, engagement_name, hash_bytes

MAX_PLACES = 5  # paths named for one downloaded content


def read_chain(name: str) -> str:
    return f"read:{name}"


@dataclass(frozen=True)
class ReadEvent:
    engagement_id: int
    event: str  # download | export | history
    actor: str
    at: datetime
    detail: dict[str, Any]


def record_reads(db: MetadataDB, events: Sequence[ReadEvent]) -> int:
    """Append the events, in order, to their engagements' read chains (one transaction)."""

    def tx() -> int:
        names: dict[int, str] = {}
        for e in events:
            name = names.get(e.engagement_id)
            if name is None:
                name = names[e.engagement_id] = engagement_name(db, e.engagement_id)
            detail = dict(e.detail)
            content = detail.get("content")
            if e.event == "download" and isinstance(content, str):
                rows = db.all(
                    "SELECT path, seq FROM changes WHERE engagement_id = ? AND content = ? ORDER BY seq DESC LIMIT ?",
                    (e.engagement_id, db.dialect.binary(hash_bytes(content, "content")), MAX_PLACES),
                )
                detail["versions"] = [{"path": r[0], "seq": int(r[1])} for r in rows]
                if rows:
                    detail.setdefault("path", rows[0][0])
            append_audit(db, read_chain(name), e.event, e.actor, e.at, name, detail)
        return len(events)

    return db.write(tx)
