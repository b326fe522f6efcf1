"""``POST /v1/branch/reads``: a branch office's read events, into central's audit trail (issue 18).

A branch's standby is read-only, so its users' downloads, exports and history views are
spooled there and sent here in batches (``service/readforward.py``) with the branch's
credential (``web/branchauth.BranchGate.branch_of``; no user's session can call this). Each
event names the engagement (by id: the branch's ids are central's, replicated), the event
(``download``, ``export`` or ``history``), the reading user and the time of the read, and its
detail; it is appended to the engagement's read chain (``storage/readaudit``) as by that user,
with ``via: branch:NAME`` added, so the trail says where the read happened. At most
``MAX_EVENTS`` events and ``small_json`` bytes; a malformed batch is a 400 naming the field
and nothing is recorded (one transaction); an unknown engagement id is a 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest, Forbidden
from smartsyncd.storage.branches import principal
from smartsyncd.storage.lifecycle_store import lifecycle_or_none
from smartsyncd.storage.readaudit import ReadEvent
from smartsyncd.web.access import Authorizer, add_route
from smartsyncd.web.bodies import expect_object
from smartsyncd.web.errors import send_json
from smartsyncd.web.limits import Limits
from smartsyncd.web.parse import json_body, parse_json_off_reactor
from smartsyncd.web.pool import RunBlocking

MAX_EVENTS = 1000
EVENTS = frozenset({"download", "export", "history"})
MAX_DETAIL = 4096


def add_branch_read_routes(app: Klein, authorizer: Authorizer, store: Any, limits: Limits, run_blocking: RunBlocking) -> None:
    async def reads(request: Request) -> bytes:
        gate = authorizer.branch_gate
        if gate is None:
            raise Forbidden("this server takes no branch credential")
        branch = await gate.branch_of(request)
        body = expect_object(await parse_json_off_reactor(run_blocking, json_body(request, limits.small_json)))
        events = parse_events(body.get("events"), principal(branch))
        recorder = lifecycle_or_none(store)
        recorded = await recorder.record_reads(events) if recorder is not None and events else 0
        return send_json(request, {"recorded": recorded})

    add_route(app, "/v1/branch/reads", ["POST"], reads, "branch_reads")


def parse_events(raw: object, via: str) -> list[ReadEvent]:
    if not isinstance(raw, list) or len(raw) > MAX_EVENTS:
        raise BadRequest(f"field 'events' must be a list of at most {MAX_EVENTS} events", field="events")
    return [_event(item, f"events[{i}]", via) for i, item in enumerate(raw)]


def _event(item: object, field: str, via: str) -> ReadEvent:
    if not isinstance(item, dict):
        raise BadRequest(f"field {field!r} must be an object", field=field)
    engagement_id, event, actor = item.get("engagement_id"), item.get("event"), item.get("actor")
    if not isinstance(engagement_id, int) or isinstance(engagement_id, bool) or engagement_id < 1:
        raise BadRequest(f"field '{field}.engagement_id' must be a positive integer", field=field)
    if event not in EVENTS:
        raise BadRequest(f"field '{field}.event' must be one of {sorted(EVENTS)}", field=field)
    if not isinstance(actor, str) or not 0 < len(actor) <= 256 or not actor.isprintable():
        raise BadRequest(f"field '{field}.actor' must be a user name", field=field)
    try:
        at = datetime.fromisoformat(str(item.get("at")))
    except ValueError:
        raise BadRequest(f"field '{field}.at' must be an ISO 8601 time", field=field) from None
    detail = item.get("detail")
    if not isinstance(detail, dict) or len(repr(detail)) > MAX_DETAIL:
        raise BadRequest(f"field '{field}.detail' must be an object under {MAX_DETAIL} bytes", field=field)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return ReadEvent(engagement_id, str(event), actor, at, {**detail, "via": via})
