"""HTTP routes of an engagement's own admins (issue 17; docs/protocol.md "Engagement admin").

A member whose role on the engagement allows ``admin`` may, on that engagement only, break a
check-out, list and abandon sync copies, finalize and reopen, and list, give and take away
roles, and set or clear the engagement's ignore rules (any member may read them). Every route goes through ``engagement_route`` with the ``admin`` operation (an editor or
reader is answered ``403 forbidden`` naming the role needed), and each handler calls the same
store method ``smartsync-admin`` calls, with the signed-in user as the actor of the audit
event. Grants are resolved as ``smartsync-admin grant`` resolves them (``auth/grantees.py``)
and checked inside the store's transaction (``delegated_check``: nothing above one's own role,
never the last admin).
"""

from __future__ import annotations

from klein import Klein
from twisted.web.http import CACHED
from twisted.web.server import Request

from smartsyncd.auth.grantees import GranteeResolver, delegated_check, matching_grants
from smartsyncd.core.errors import BadRequest, NotFound
from smartsyncd.core.ignore import MAX_RULES_BYTES, rules_etag
from smartsyncd.core.jsonvalue import JSONDict
from smartsyncd.core.model import ROLES, Role
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import Grant, GrantStore, PrincipalKind, WorkflowStore
from smartsyncd.storage.db import MAX_REASON
from smartsyncd.storage.wipes import wipes_or_none
from smartsyncd.web.access import Access, Authorizer, engagement_route
from smartsyncd.web.bodies import expect_object, get_str, parse_json, read_body, read_json
from smartsyncd.web.errors import send_json
from smartsyncd.web.limits import Limits
from smartsyncd.web.shapes import JsonObject, copy_json, finalized_json, lock_json


class ManageRoutes:
    """Lock breaks, copies, sign-off and grants, for the engagement's admins."""

    def __init__(
        self, store: WorkflowStore, grants: GrantStore, resolver: GranteeResolver, limits: Limits
    ) -> None:
        self._store = store
        self._grants = grants
        self._resolver = resolver
        self._limits = limits

    def _body(self, request: Request) -> JSONDict:
        return expect_object(read_json(request, self._limits.small_json))

    async def break_lock(self, request: Request, access: Access) -> bytes:
        body = self._body(request)
        path = normalize_path(get_str(body, "path", max_len=4096))
        reason = _reason(body)
        lock = await self._store.break_lock(access.engagement.id, path, access.session.user, reason)
        return send_json(request, {"lock": lock_json(lock)})

    async def list_copies(self, request: Request, access: Access) -> bytes:
        copies = await self._store.list_copies(access.engagement.id)
        return send_json(request, {"copies": [copy_json(c) for c in copies]})

    async def abandon_copy(self, request: Request, access: Access, copy: str) -> bytes:
        """Abandon a copy; with ``{"wipe": true}`` also order it wiped at its next contact
        (docs/workflow.md, "Remote wipe"). A body is optional (older clients send none)."""
        raw = read_body(request, self._limits.small_json)
        wipe = expect_object(parse_json(raw)).get("wipe", False) if raw.strip() else False
        if not isinstance(wipe, bool):
            raise BadRequest("field 'wipe' must be true or false", field="wipe")
        eid, user = access.engagement.id, access.session.user
        if not wipe:
            record = await self._store.abandon_copy(eid, copy, user)
            return send_json(request, {"copy": copy_json(record)})
        wipes = wipes_or_none(self._store)
        if wipes is None:
            raise BadRequest("this server's store cannot order a wipe", field="wipe")
        order = await wipes.order_wipe(eid, copy, user)  # abandons it too, in one transaction
        copies = {c.copy_id: c for c in await self._store.list_copies(eid)}
        return send_json(request, {
            "copy": copy_json(copies[order.copy_id]),
            "wipe": {"ordered_by": order.ordered_by, "ordered_at": order.ordered_at.isoformat()},
        })

    async def finalize(self, request: Request, access: Access) -> bytes:
        body = self._body(request)
        reason = _reason(body)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("field 'force' must be true or false", field="force")
        status, pending = await self._store.finalize(access.engagement.id, access.session.user, reason, force)
        return send_json(
            request, {"finalized": finalized_json(status), "unsynced_copies": [copy_json(c) for c in pending]}
        )

    async def reopen(self, request: Request, access: Access) -> bytes:
        reason = _reason(self._body(request))
        status = await self._store.reopen(access.engagement.id, access.session.user, reason)
        return send_json(request, {"finalized": finalized_json(status)})

    async def list_grants(self, request: Request, access: Access) -> bytes:
        grants = await self._grants.list_grants(access.engagement.name)
        return send_json(request, {"grants": [grant_json(g) for g in grants]})

    async def grant(self, request: Request, access: Access) -> bytes:
        body = self._body(request)
        kind, name = _grantee(body)
        role = _role(body)
        eng = access.engagement.name
        record = await self._resolver.grant(eng, kind, name, role)
        await self._grants.grant(record, access.session.user, delegated_check(access.role, eng))
        return send_json(request, {"grant": grant_json(record)})

    async def revoke(self, request: Request, access: Access) -> bytes:
        kind, name = _grantee(self._body(request))
        eng = access.engagement.name
        matches = matching_grants(await self._grants.list_grants(eng), kind, name)
        if not matches:
            raise NotFound(f"{kind} {name!r} has no grant on {eng!r}", **{kind: name})
        check = delegated_check(access.role, eng)
        revoked = [g for g in matches if await self._grants.revoke(eng, g.kind, g.principal, access.session.user, check)]
        return send_json(request, {"revoked": [grant_json(g) for g in revoked]})

    async def show_ignore(self, request: Request, access: Access) -> bytes:
        """The engagement's ignore rules and their digest (``null`` both when it has none).
        The digest is the ETag: a client that names it in If-None-Match gets a bodiless 304."""
        rules = await self._grants.ignore_rules(access.engagement.id)
        if request.setETag(rules_etag(rules.digest if rules else None).encode()) == CACHED:
            request.setHeader(b"cache-control", b"no-cache")
            return b""
        if rules is None:
            return send_json(request, {"rules": None, "digest": None})
        return send_json(request, {"rules": rules.text, "digest": rules.digest})

    async def set_ignore(self, request: Request, access: Access) -> bytes:
        """Set (``{"rules": "..."}``) or clear (``{"rules": null}``) the rules; a bad pattern
        is refused naming its line, and nothing changes."""
        body = expect_object(read_json(request, MAX_RULES_BYTES * 2 + 1024))
        if "rules" not in body:
            raise BadRequest("field 'rules' is required (text, or null to clear)", field="rules")
        text = body["rules"]
        if text is not None and not isinstance(text, str):
            raise BadRequest("field 'rules' must be text or null", field="rules")
        digest = await self._grants.set_ignore_rules(access.engagement.name, text, access.session.user)
        return send_json(request, {"rules": text, "digest": digest})


def grant_json(g: Grant) -> JsonObject:
    return {"kind": g.kind, "principal": g.principal, "name": g.display_name, "role": g.role}


def _reason(body: JSONDict) -> str:
    reason = get_str(body, "reason", max_len=MAX_REASON, non_empty=True)
    if not reason.strip():
        raise BadRequest("field 'reason' must say why (it is kept in the audit trail)", field="reason")
    return reason


def _grantee(body: JSONDict) -> tuple[PrincipalKind, str]:
    """Exactly one of ``user`` and ``group``."""
    given = [k for k in ("user", "group") if body.get(k) is not None]
    if len(given) != 1:
        raise BadRequest("give exactly one of the fields 'user' and 'group'", field="user")
    kind: PrincipalKind = "user" if given[0] == "user" else "group"
    return kind, get_str(body, kind, max_len=256, non_empty=True)


def _role(body: JSONDict) -> Role:
    role = get_str(body, "role", max_len=32)
    for known in ROLES:
        if role == known:
            return known
    raise BadRequest(f"field 'role' must be one of {', '.join(ROLES)}", field="role")


def add_manage_routes(app: Klein, authorizer: Authorizer, routes: ManageRoutes) -> None:
    """Register the engagement admin's routes on ``app``, each behind the ``admin`` check."""
    eng = "/v1/engagements/<engagement:eng>"
    get, post = ["GET"], ["POST"]
    on = engagement_route
    on(app, authorizer, "admin", eng + "/locks/break", methods=post)(routes.break_lock)
    on(app, authorizer, "admin", eng + "/copies", methods=get)(routes.list_copies)
    on(app, authorizer, "admin", eng + "/copies/<copy:copy>/abandon", methods=post)(routes.abandon_copy)
    on(app, authorizer, "admin", eng + "/finalize", methods=post)(routes.finalize)
    on(app, authorizer, "admin", eng + "/reopen", methods=post)(routes.reopen)
    on(app, authorizer, "admin", eng + "/grants", methods=get)(routes.list_grants)
    on(app, authorizer, "admin", eng + "/grants", methods=post)(routes.grant)
    on(app, authorizer, "admin", eng + "/grants/revoke", methods=post)(routes.revoke)
    on(app, authorizer, "read", eng + "/ignore", methods=get)(routes.show_ignore)
    on(app, authorizer, "admin", eng + "/ignore", methods=post)(routes.set_ignore)
