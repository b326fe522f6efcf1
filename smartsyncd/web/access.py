"""Who may do what: the sign-in check and the per-engagement authorization of every request.

``Authorizer.authorize`` is the one check of an engagement request: bearer token -> session ->
engagement + role (an engagement the user has no role on is answered exactly like an unknown
one) -> ``acl.allows(role, operation)``. Before all of it, a request naming a sync copy
(``Smartsync-Copy``) that an admin ordered wiped is answered with that order (410
``wipe_ordered``): the abandoned copy's session has ended, and the order must reach it.
A branch office's credential (``Authorization: SmartsyncBranch``) is checked by
``web/branchauth.py`` instead: chunk and manifest reads of a carried engagement, else 403.
``engagement_route`` registers a handler behind it, so
a handler receives an ``Access`` instead of the engagement name and cannot skip the check; the
streamed chunk upload (web/upload.py) calls ``authorize`` itself before reading the body.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar, cast

from klein import Klein
from twisted.web.resource import Resource
from twisted.web.server import Request

from smartsyncd.auth.acl import allows, least_role
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core.errors import Finalized, Forbidden, NotFound, WipeOrdered
from smartsyncd.core.model import Role
from smartsyncd.storage.api import EngagementRecord, GrantStore, SessionRecord, WorkflowStore
from smartsyncd.storage.wipes import WipeStore
from smartsyncd.web import branchauth
from smartsyncd.web.parse import copy_header
from smartsyncd.web.shapes import iso_utc

P = ParamSpec("P")
R = TypeVar("R", bound=bytes | Resource)

_BEARER = re.compile(r"Bearer ([A-Za-z0-9._~+/=-]{1,512})", re.IGNORECASE)


@dataclass(frozen=True)
class Access:
    """Who is asking, about which engagement, with which role (the auth check's result)."""

    session: SessionRecord
    engagement: EngagementRecord
    role: Role


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None; a branch credential
    is refused (403): it is never a user's session."""
    if branchauth.claims(request):
        raise Forbidden(branchauth.ONLY_READS)
    raw = request.requestHeaders.getRawHeaders(b"authorization")
    if not raw:
        return None
    match = _BEARER.fullmatch(raw[0].decode("latin-1").strip())
    return match.group(1) if match else None


class Authorizer:
    """The session and per-engagement checks, over the sessions and the store's grants."""

    def __init__(
        self, sessions: SessionManager, grants: GrantStore, status: WorkflowStore,
        wipes: WipeStore | None = None,
    ) -> None:
        self._sessions = sessions
        self._grants = grants
        self._status = status
        self._wipes = wipes
        # told of each request's signed-in session (web/usershaping.py: the per-user limit)
        self.on_session: Callable[[Request, SessionRecord], object] | None = None
        # branch offices' credentials (None at a branch daemon itself: service/branch.py)
        self.branch_gate: branchauth.BranchGate | None = branchauth.BranchGate(grants)

    async def refuse_if_wiped(self, request: Request, engagement: str | None) -> None:
        """Answer the wipe order of the copy the request names, if an admin gave one (in
        ``engagement``; None: in any, for a sign-in). One indexed read per such request."""
        copy = copy_header(request)
        if copy is None or self._wipes is None:
            return
        order = await self._wipes.wipe_order(engagement, copy)
        if order is not None:
            raise WipeOrdered(
                f"an admin ({order.ordered_by}) ordered this sync copy ({copy}) wiped on"
                f" {iso_utc(order.ordered_at)}: it deletes itself and reports that",
                engagement=order.engagement, copy=order.copy_id, ordered_by=order.ordered_by,
                ordered_at=iso_utc(order.ordered_at),
            )

    async def check_session(self, request: Request) -> SessionRecord:
        """The live session of the request's bearer token (or SessionExpired)."""
        await self.refuse_if_wiped(request, None)
        return self._seen(request, await self._sessions.resolve(bearer_token(request)))

    def _seen(self, request: Request, session: SessionRecord) -> SessionRecord:
        if self.on_session is not None:
            self.on_session(request, session)
        return session

    async def authorize(self, request: Request, name: str, operation: str) -> Access:
        """Session, then the engagement if this user may see it, then the role check."""
        if branchauth.claims(request):
            if self.branch_gate is None:
                raise Forbidden(branchauth.ONLY_READS)
            session, record = await self.branch_gate.authorize(request, name, operation)
            return Access(session=session, engagement=record, role="reader")
        await self.refuse_if_wiped(request, name)
        session = self._seen(request, await self._sessions.resolve(bearer_token(request)))
        engagement = await self._grants.get_engagement(name)
        role = None
        if engagement is not None:
            role = await self._grants.role_for(name, session.principal, session.groups)
        if engagement is None or role is None:
            # Same answer whether it does not exist or is not visible: no hint which.
            raise NotFound("no such engagement")
        if not allows(role, operation):
            needed = least_role(operation)
            raise Forbidden(
                f"this needs the role {needed!r} in engagement {name!r}; you have {role!r}",
                role=role, required=needed,
            )
        return Access(session=session, engagement=engagement, role=role)

    async def refuse_if_finalized(self, access: Access) -> None:
        """A signed-off engagement takes no new chunks (423 ``finalized``), as it takes no
        commit: they could never be used, and would only fill the disk."""
        status = await self._status.engagement_status(access.engagement.id)
        if status.finalized_at is not None:
            raise Finalized(
                f"the engagement was finalized (signed off) by {status.finalized_by}; it is"
                " read-only until an admin reopens it, and takes no chunks",
                reason=status.finalized_reason, finalized_by=status.finalized_by,
                finalized_at=iso_utc(status.finalized_at),
            )


# What a handler returns: the body, or (awaited) the body or a resource that answers later.
Renderable = bytes | Awaitable[bytes | Resource]
Handler = Callable[Concatenate[Request, Access, P], Awaitable[R]]
Routed = Callable[Concatenate[Request, str, P], Awaitable[R]]


def engagement_route(
    app: Klein, authorizer: Authorizer, operation: str, url: str, *, methods: list[str]
) -> Callable[[Handler[P, R]], Routed[P, R]]:
    """Like ``app.route``, but the handler gets an ``Access`` instead of the engagement name
    (the ``<engagement:eng>`` segment of ``url``), after the session, visibility and role checks
    for ``operation`` passed. Other URL segments reach the handler as keyword arguments."""

    def decorator(f: Handler[P, R]) -> Routed[P, R]:
        async def handler(request: Request, eng: str, *args: P.args, **kwargs: P.kwargs) -> R:
            access = await authorizer.authorize(request, eng, operation)
            return await f(request, access, *args, **kwargs)

        add_route(app, url, methods, handler, getattr(f, "__name__", url))
        return handler

    return decorator


def add_route(app: Klein, url: str, methods: list[str], handler: Callable[..., Renderable], name: str) -> None:
    """``app.route(url)(handler)`` under the endpoint ``name``, which must be new (Klein would
    silently replace an endpoint of the same name)."""
    if name in app.endpoints:
        raise ValueError(f"a second route named {name!r}")
    # cast: Klein's handler type names IResource, which Resource provides only for zope
    app.route(url, methods=methods, endpoint=name)(cast(Callable[..., Awaitable[bytes]], handler))
