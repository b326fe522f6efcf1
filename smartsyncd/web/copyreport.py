"""A sync copy's report (docs/workflow.md): how many local changes it holds unsynced, and since
when. Sent alone (``POST .../copies/<copy>/report``) or folded into a commit's body as
``"report"`` (issue 15: one request less per sync), and parsed here for both, before anything
is written: a bad report is a 400 naming the field and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.jsonvalue import JSONDict
from smartsyncd.storage.api import CopyRecord, WorkflowStore
from smartsyncd.storage.wipes import KEY_HEX
from smartsyncd.web.bodies import expect_object, get_int, get_str
from smartsyncd.web.parse import parse_time


@dataclass(frozen=True)
class CopyReport:
    host: str
    unsynced: int
    since: datetime | None
    key_hash: str | None  # SHA-256 of the copy's secret (authenticates its wipe report)

    async def record(
        self, store: WorkflowStore, engagement_id: int, copy: str, user: str, session: str | None
    ) -> CopyRecord:
        return await store.report_copy(
            engagement_id, copy, user, self.host, session, self.unsynced, self.since,
            self.key_hash,
        )


def parse_report(raw: object, prefix: str = "") -> CopyReport:
    """A report object; ``prefix`` names where it sits in the body (``"report."``)."""
    body = expect_object(raw, prefix.rstrip(".") or "body")
    host = get_str(body, "host", prefix + "host", max_len=255, non_empty=True)
    unsynced = get_int(body, "unsynced", prefix + "unsynced", minimum=0)
    assert unsynced is not None
    since_raw = body.get("since")
    if since_raw is not None and not isinstance(since_raw, str):
        raise BadRequest(f"field '{prefix}since' must be an ISO 8601 time or null",
                         field=prefix + "since")
    since = None if since_raw is None else parse_time(since_raw, prefix + "since")
    return CopyReport(host, unsynced, since, key_hash(body, prefix))


def key_hash(body: JSONDict, prefix: str = "") -> str | None:
    """The optional ``key_hash``: SHA-256 of the copy's secret, which authenticates its wipe
    report (web/wipes.py)."""
    value = body.get("key_hash")
    if value is None:
        return None
    if not isinstance(value, str) or not KEY_HEX.match(value):
        raise BadRequest(f"field '{prefix}key_hash' must be 64 lowercase hex digits",
                         field=prefix + "key_hash")
    return value
