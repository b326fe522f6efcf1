"""The admin status page at ``/status`` on the admin endpoint (issue 17): sign-in, pages, actions.

Who: a user signs in with a name and password through the daemon's own ``SessionManager``
(the configured backends, rate limits, account throttle and blocks, as ``POST /v1/login``);
the session is kept only if ``AdminPolicy`` (auth/admins.py) says the account is a status-page
admin, else it is ended at once and the answer is 403. The session token travels in a cookie
(``Secure; HttpOnly; SameSite=Strict; Path=/status``), never in a page or a URL; every later
request resolves it again (so an expired, signed-out or blocked session is refused) and asks
the policy again.

Forged requests: every POST carries a ``csrf`` field, an HMAC of a purpose under a secret the
browser holds only in its HttpOnly cookie (the session token, or before sign-in a random
per-browser value in its own cookie), so another site can neither read nor compute it.
A password is taken only over TLS, or over plain HTTP from this host (loopback). A POST
without it, or with a wrong one, changes nothing and is answered 403. Requests never change
anything on GET; each action (break a check-out, abandon a copy) is a GET of a confirmation
page, then a POST of its form with a reason, run by the same store methods ``smartsync-admin
lock break`` and ``copies abandon`` use, with ``status:<admin>`` as the actor in the audit log.

Answers are HTML from web/statushtml.py (everything escaped there), with a strict
Content-Security-Policy, ``no-store`` and no framing; refusals are pages naming what was wrong,
never a traceback. Every store read runs off the reactor (the store's own thread pools).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from smartsyncd.auth.admins import AdminPolicy
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core.errors import AuthFailed, BadRequest, SessionExpired, SyncError
from smartsyncd.storage.api import (
    AuditStore,
    GrantStore,
    SessionRecord,
    SessionStore,
    WorkflowStore,
)
from smartsyncd.storage.statusview import StatusViewSource
from smartsyncd.web import statushtml as html
from smartsyncd.web.bodies import LimitedRequest
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.inflight import InFlight
from smartsyncd.web.refusals import RecentRefusals

log = Logger(namespace="smartsyncd.web")

SESSION_COOKIE = b"smartsync_status"
SIGNIN_COOKIE = b"smartsync_status_signin"
MAX_FIELD = 1000  # characters of any form field (a reason, a path)
ENGAGEMENT_LIMIT = 500  # engagements read for one overview


class StatusStore(SessionStore, GrantStore, WorkflowStore, AuditStore, StatusViewSource, Protocol):
    """The store roles the status page uses."""


@dataclass
class StatusSources:
    """What the page reads besides the store (filled in by service/server.py)."""

    inflight: Callable[[], InFlight]
    refusals: RecentRefusals
    free_space: Callable[[], Awaitable[Mapping[str, tuple[int, int]]]]
    folders: Sequence[str]
    warn_bytes: int
    connections: Callable[[], int] = lambda: 0
    parked: Callable[[], int] = lambda: 0
    branch: Callable[[], html.BranchState | None] = lambda: None


class StatusRequest(LimitedRequest):
    """The admin site's requests: small bodies only (a form), refused with 413 above."""

    max_body = 64 * 1024
    admin: str | None = None  # the signed-in admin and the form token, once checked
    csrf: str = ""


def csrf_token(secret: str, purpose: str) -> str:
    """The form token for ``purpose``, bound to a secret only the browser's cookie holds."""
    return hmac.new(secret.encode("utf-8"), purpose.encode("ascii"), hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, purpose: str, given: str | None) -> bool:
    if not secret or not given:
        return False
    return hmac.compare_digest(csrf_token(secret, purpose), given)


class Refused(Exception):
    """Answer ``status`` with a page saying ``message`` (nothing was changed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        super().__init__(to)
        self.to = to


def _field(request: StatusRequest, name: str, required: bool = True) -> str:
    values = (request.args or {}).get(name.encode("ascii")) or []
    if len(values) > 1:
        raise Refused(400, f"the form field {name!r} was sent more than once")
    raw = values[0] if values else b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, f"the form field {name!r} is not UTF-8") from None
    if len(text) > MAX_FIELD:
        raise Refused(400, f"the form field {name!r} is longer than {MAX_FIELD} characters")
    if required and not text:
        raise Refused(400, f"the form field {name!r} is missing")
    return text


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _cookie(request: StatusRequest, name: bytes) -> str | None:
    raw = request.getCookie(name)
    return None if not raw else raw.decode("ascii", "replace")


def _set_cookie(request: StatusRequest, name: bytes, value: str, max_age: int | None = None) -> None:
    request.addCookie(name, value.encode("ascii"), path=html.ROOT.encode(), secure=True,
                      httpOnly=True, sameSite="strict",
                      max_age=None if max_age is None else str(max_age).encode())


class StatusPage(Resource):
    """``/status`` and below; one handler per (method, page)."""

    isLeaf = True

    def __init__(self, store: StatusStore, sessions: SessionManager, policy: AdminPolicy,
                 sources: StatusSources, clock: IReactorTime) -> None:
        super().__init__()
        self._store = store
        self._sessions = sessions
        self._policy = policy
        self._sources = sources
        self._clock = clock
        self._get: dict[str, Callable[[StatusRequest, SessionRecord, str], Awaitable[str]]] = {
            "": self._overview, "audit": self._audit,
            "confirm-break": self._confirm_break, "confirm-abandon": self._confirm_abandon,
        }
        self._post: dict[str, Callable[[StatusRequest, SessionRecord, str], Awaitable[str]]] = {
            "break": self._break, "abandon": self._abandon, "signout": self._signout,
        }

    def render(self, request: Request) -> object:
        Deferred.fromCoroutine(self._answer(cast(StatusRequest, request)))
        return NOT_DONE_YET

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    async def _answer(self, request: StatusRequest) -> None:
        status, body = 200, ""
        try:
            body = await self._dispatch(request)
        except _Redirect as r:
            status = 303
            request.setHeader(b"location", r.to.encode("utf-8"))
        except Refused as e:
            status, body = e.status, self._refusal_page(request, e)
        except SyncError as e:  # a refusal of the store (no such lock, already abandoned...)
            status = e.status
            body = html.render_message("Refused", e.message, getattr(request, "admin", None),
                                       getattr(request, "csrf", ""), ok=False)
        except Exception:
            log.failure("the status page failed")
            status = 500
            body = html.render_message("Error", "the page could not be built; see the daemon's"
                                       " log", ok=False)
        request.setResponseCode(status)
        for name, value in ((b"content-type", b"text/html; charset=utf-8"),
                            (b"cache-control", b"no-store"),
                            (b"content-security-policy", html.CSP.encode()),
                            (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")):
            request.setHeader(name, value)
        if not request._disconnected:
            request.write(body.encode("utf-8"))
            request.finish()

    def _refusal_page(self, request: StatusRequest, e: Refused) -> str:
        return html.render_message("Refused", e.message, request.admin, request.csrf, ok=False)

    async def _dispatch(self, request: StatusRequest) -> str:
        page = b"/".join(request.postpath or []).decode("utf-8", "replace").strip("/")
        method = request.method
        if page == "signin":
            if method == b"POST":
                return await self._signin(request)
            if method == b"GET":
                return self._signin_form(request)
        table = self._get if method == b"GET" else self._post if method == b"POST" else None
        if table is None:
            raise Refused(405, "only GET and POST are answered here")
        handler = table.get(page)
        if handler is None:
            raise Refused(404, f"no page {page!r} here")
        session, token = await self._admin_session(request, redirect=method == b"GET")
        csrf = csrf_token(token, "status")
        request.admin, request.csrf = session.user, csrf
        if method == b"POST" and not csrf_ok(token, "status", _field(request, "csrf", False)):
            log.warn("status page: a POST to {page} by {user} without a valid CSRF token",
                     page=page, user=session.user)
            raise Refused(403, "the form's CSRF token is missing or wrong: nothing was changed;"
                          " reload the page and try again")
        return await handler(request, session, csrf)

    # -- sign-in ------------------------------------------------------------------------------

    def _signin_form(self, request: StatusRequest, message: str | None = None) -> str:
        secret = _cookie(request, SIGNIN_COOKIE)
        if not secret:
            secret = secrets.token_urlsafe(32)
            _set_cookie(request, SIGNIN_COOKIE, secret)
        return html.render_signin(csrf_token(secret, "signin"), message, self._sources.branch())

    async def _signin(self, request: StatusRequest) -> str:
        if not csrf_ok(_cookie(request, SIGNIN_COOKIE), "signin", _field(request, "csrf", False)):
            raise Refused(403, "the sign-in form's CSRF token is missing or wrong; reload the"
                          " sign-in page")
        user, password = _field(request, "user"), _field(request, "password")
        address = client_address(request)
        if not request.isSecure() and not _loopback(address):
            # the password would have crossed the network in the clear: say so, sign nobody in
            log.warn("status page: refused a sign-in over plain HTTP from {address}",
                     address=address)
            raise Refused(403, "sign in over TLS: this admin endpoint is plain HTTP, which is"
                          " only for this host (set [admin] listen = ssl:...)")
        try:
            token, record = await self._sessions.sign_in(user, password, address)
        except AuthFailed:
            raise Refused(401, "sign-in failed: wrong user name or password") from None
        if not await self._policy.allows(record):
            await self._sessions.sign_out(token)
            log.warn("status page: {user} signed in from {address} but is not a status-page"
                     " admin ([admin] users / groups)", user=record.user, address=address)
            raise Refused(403, f"{record.user} is not a status-page admin")
        log.info("status page: {user} signed in from {address}", user=record.user,
                 address=address)
        _set_cookie(request, SESSION_COOKIE, token)
        _set_cookie(request, SIGNIN_COOKIE, "", max_age=0)
        raise _Redirect(html.ROOT)

    async def _admin_session(self, request: StatusRequest, redirect: bool) -> tuple[SessionRecord, str]:
        token = _cookie(request, SESSION_COOKIE)
        try:
            session = await self._sessions.resolve(token)
        except SessionExpired:
            if redirect:
                raise _Redirect(f"{html.ROOT}/signin") from None
            raise Refused(403, "not signed in (or the session ended): sign in again") from None
        assert token is not None
        if not await self._policy.allows(session):
            raise Refused(403, f"{session.user} is not a status-page admin")
        return session, token

    async def _signout(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        token = _cookie(request, SESSION_COOKIE)
        if token:
            await self._sessions.sign_out(token)
        _set_cookie(request, SESSION_COOKIE, "", max_age=0)
        raise _Redirect(f"{html.ROOT}/signin")

    # -- pages --------------------------------------------------------------------------------

    async def _overview(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        src = self._sources
        now = self._now()
        overview, store_error = None, None
        try:
            overview = await self._store.status_overview(ENGAGEMENT_LIMIT)
        except SyncError as e:  # the database is unavailable: the rest of the page still shows
            store_error = e.message
        try:
            sessions = await self._store.list_sessions()
        except SyncError:
            sessions = []
        try:
            space: Mapping[str, tuple[int, int]] = await src.free_space()
        except OSError:
            space = {}
        return html.render_overview(html.OverviewPage(
            admin=session.user, csrf=csrf, now=now, overview=overview, store_error=store_error,
            sessions=sessions, transfers=self._transfers(), refusals=src.refusals.newest_first(),
            refusals_total=src.refusals.total,
            disk={f: space.get(f) for f in src.folders}, warn_bytes=src.warn_bytes,
            connections=src.connections(), parked=src.parked(), branch=src.branch(),
        ))

    def _transfers(self) -> list[html.Transfer]:
        inflight = self._sources.inflight()
        seconds = self._clock.seconds()
        out = []
        for request in inflight.live():
            started = getattr(request, "smartsync_started", None)
            method = getattr(request, "method", None) or b"?"
            route = inflight.route(request)
            if method == b"GET" and route.endswith("/changes"):
                continue  # a parked long-poll: waiting, not transferring (counted on the page)
            out.append(html.Transfer(
                method=method.decode("ascii", "replace"), route=route,
                client=client_address(request),
                seconds=0.0 if started is None else max(0.0, seconds - started),
                received=int(getattr(request, "_body_bytes", 0)), sent=int(request.sentLength),
            ))
        return out

    async def _audit(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        return html.render_audit(session.user, csrf, await self._store.verify_audit(None))

    async def _engagement_id(self, request: StatusRequest) -> tuple[str, int]:
        name = _field(request, "engagement")
        record = await self._store.get_engagement(name)
        if record is None:
            raise Refused(404, f"no engagement {name!r}")
        return name, record.id

    async def _confirm_break(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        name, eid = await self._engagement_id(request)
        path = _field(request, "path")
        for lock in await self._store.list_locks(eid):
            if lock.path == path:
                return html.render_confirm_break(session.user, csrf, name, lock)
        raise Refused(404, f"{path!r} is not checked out in {name}")

    async def _confirm_abandon(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        name, eid = await self._engagement_id(request)
        copy_id = _field(request, "copy")
        for copy in await self._store.list_copies(eid):
            if copy.copy_id == copy_id:
                return html.render_confirm_abandon(session.user, csrf, name, copy)
        raise Refused(404, f"no copy {copy_id!r} in {name}")

    # -- actions (POST, after the confirmation page) ------------------------------------------

    def _confirmed(self, request: StatusRequest) -> None:
        if _field(request, "confirm", False) != "yes":
            raise BadRequest("not confirmed: use the confirmation page's button")

    async def _break(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        self._confirmed(request)
        reason = _field(request, "reason")
        name, eid = await self._engagement_id(request)
        lock = await self._store.break_lock(eid, _field(request, "path"), actor(session), reason)
        log.info("status page: {user} broke the check-out of {path} in {engagement} held by"
                 " {holder}", user=session.user, path=lock.path, engagement=name,
                 holder=lock.holder)
        return html.render_message(
            "Check-out broken", f"Broke the check-out of {lock.path} in {name} held by "
            f"{lock.holder}.", session.user, csrf)

    async def _abandon(self, request: StatusRequest, session: SessionRecord, csrf: str) -> str:
        self._confirmed(request)
        name, eid = await self._engagement_id(request)
        copy = await self._store.abandon_copy(eid, _field(request, "copy"), actor(session))
        log.info("status page: {user} abandoned copy {copy} of {owner} on {host} in"
                 " {engagement}", user=session.user, copy=copy.copy_id, owner=copy.user,
                 host=copy.host, engagement=name)
        return html.render_message(
            "Copy abandoned", f"Abandoned the copy {copy.copy_id} of {copy.user} on {copy.host}"
            f" in {name}; it can never commit again.", session.user, csrf)


def actor(session: SessionRecord) -> str:
    """Who acted, for the audit log: the admin's account, through the status page."""
    return f"status:{session.user}"

