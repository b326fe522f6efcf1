"""Read access in the audit trail (issue 20): downloads, exports and history views.

Each engagement has a third chain, ``read:<name>``, beside its change log and its ``eng:<name>``
events, so recording reads never waits on (or delays) a commit's audit appends. The web layer
buffers read events and hands them here in batches (``web/readaudit.py``): one write
transaction appends them all. A download is named by its content id; ``record_reads`` adds
where that content is (the paths and change numbers that hold it, up to a few), so the trail
says which file and version was read. ``global_records`` reads the ``global`` chain (sign-ins)
for export. Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smartsyncd.core.audit import GLOBAL_CHAIN
from smartsyncd.storage.api import AuditRecord
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


def global_records(db: MetadataDB) -> list[AuditRecord]:
    """The ``global`` chain (sign-ins, user quotas), oldest first, for ``audit export --global``."""
    rows = db.read(lambda: db.all(
        "SELECT chain, seq, event, actor, at, engagement, detail, record_hash FROM audit WHERE chain = ? ORDER BY seq",
        (GLOBAL_CHAIN,),
    ))
    return [
        AuditRecord(chain=r[0], seq=int(r[1]), event=r[2], actor=r[3], time=datetime.fromisoformat(r[4]),
                    engagement=r[5], detail=json.loads(r[6]), record_hash=bytes(r[7]).hex())
        for r in rows
    ]
