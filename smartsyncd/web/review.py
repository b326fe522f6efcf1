"""HTTP routes of the conflict review queue (docs/protocol.md, "Conflict review").

``GET .../conflicts`` lists open items: a member's own (those they wrote a side of), or with
``?all=1`` every item, which needs the ``review`` operation (the ``reviewer`` and ``admin``
roles; 403 otherwise). ``POST .../conflicts/<id>/resolve`` needs ``review``: the body names
the choice, the versions the reviewer saw and, for a merge, its content (chunks uploaded
first, as for a commit); the store decides and commits in one transaction
(``storage/review``). Every refusal is JSON: 409 ``conflict_resolved`` or ``conflict_stale``,
403, 404 for an unknown item.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from klein import Klein
from twisted.web.server import Request

from smartsyncd.auth.acl import allows
from smartsyncd.core import manifest
from smartsyncd.core.errors import BadRequest, Forbidden
from smartsyncd.core.review import ConflictItem, Version, check_choice
from smartsyncd.storage.api import PutManifest
from smartsyncd.storage.review_store import review_of
from smartsyncd.web.access import Access, Authorizer, engagement_route
from smartsyncd.web.bodies import expect_object, get_int, get_str, query_str, read_json
from smartsyncd.web.errors import send_json
from smartsyncd.web.limits import Limits
from smartsyncd.web.notify import ChangeNotifier
from smartsyncd.web.parse import hash_field
from smartsyncd.web.push import log_commit
from smartsyncd.web.shapes import iso_utc, result_json

MAX_ITEM_ID = 2**63 - 1


def _version_json(v: Version) -> dict[str, Any]:
    return {"seq": v.seq, "user": v.user, "content": v.content, "size": v.size}


def conflict_json(item: ConflictItem) -> dict[str, Any]:
    """One item as the wire carries it (docs/protocol.md)."""
    return {
        "id": item.id,
        "path": item.path,
        "copy_path": item.copy_path,
        "created_at": iso_utc(item.created_at),
        "theirs": _version_json(item.theirs),
        "ours": _version_json(item.ours),
        "path_seq": item.path_seq,
        "copy_seq": item.copy_seq,
        "copy_live": item.copy_live,
        "state": "open" if item.open else "resolved",
        "resolved_at": None if item.resolved_at is None else iso_utc(item.resolved_at),
        "resolved_by": item.resolved_by,
        "resolution": item.resolution,
        "resolved_seq": item.resolved_seq,
    }


def _item_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ITEM_ID:
        raise BadRequest("the conflict in the URL must be its number (a positive integer)",
                         field="conflict")
    return int(raw)


def _flag(request: Request, name: str) -> bool:
    raw = query_str(request, name)
    if raw in (None, "", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest(f"query argument {name!r} must be 1 or 0", field=name)


def _merged(body: dict[str, Any]) -> tuple[tuple[str, int] | None, PutManifest | None]:
    """The merge's (content id, size) and its manifest when sent (``manifest``: the full chunk
    list, content id and size derived; or ``content`` and ``size`` of content the server has)."""
    full = body.get("manifest")
    if full is not None:
        chunks = manifest.chunks_from_json(full, field="manifest")
        content = manifest.content_id(chunks)
        return (content, sum(c.size for c in chunks)), PutManifest(content=content, chunks=chunks)
    if body.get("content") is None:
        return None, None
    content = hash_field(body.get("content"), "content")
    size = get_int(body, "size", minimum=0)
    assert size is not None
    return (content, size), None


class ReviewRoutes:
    """The review queue's list and resolve, over the store's review role."""

    def __init__(
        self, store: object, notifier: ChangeNotifier, limits: Limits, now: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._limits = limits
        self._now = now

    async def list_conflicts(self, request: Request, access: Access) -> bytes:
        everyone = _flag(request, "all")
        if everyone and not allows(access.role, "review"):
            raise Forbidden(
                f"role {access.role!r} sees only its own conflicts; --all needs the reviewer role",
                role=access.role,
            )
        items = await review_of(self._store).list_conflicts(
            access.engagement.id, None if everyone else access.session.user,
            include_resolved=_flag(request, "resolved"),
        )
        return send_json(request, {"conflicts": [conflict_json(i) for i in items]})

    async def resolve(self, request: Request, access: Access, item: str) -> bytes:
        item_id = _item_id(item)
        body = expect_object(read_json(request, self._limits.json_body))
        choice = check_choice(body.get("choice"))
        batch = get_str(body, "batch", max_len=128, non_empty=True)
        path_seq = get_int(body, "path_seq", minimum=0, nullable=True)
        copy_seq = get_int(body, "copy_seq", minimum=0, nullable=True)
        merged, sent = _merged(body)
        eng, session = access.engagement, access.session
        resolved, result = await review_of(self._store).resolve_conflict(
            eng.id, item_id, choice, session.user, session.id, batch, (path_seq, copy_seq),
            merged, sent,
        )
        self._notifier.notify(eng.id, result.head)
        log_commit(eng.name, session.user, batch, result)
        return send_json(request, {
            "conflict": conflict_json(resolved),
            "head": result.head,
            "results": [result_json(r) for r in result.results],
        })


def add_review_routes(app: Klein, authorizer: Authorizer, routes: ReviewRoutes) -> None:
    """Register the review routes on ``app`` behind ``authorizer``'s checks."""
    eng = "/v1/engagements/<engagement:eng>"
    engagement_route(app, authorizer, "read", eng + "/conflicts", methods=["GET"])(routes.list_conflicts)
    engagement_route(app, authorizer, "review", eng + "/conflicts/<item>/resolve", methods=["POST"])(
        routes.resolve
    )
