"""The Klein application implementing docs/protocol.md v1, and the Site that serves it.

``SyncAPI`` gets everything it needs injected (store, sessions, notifier, clock, a runner for CPU
work) and holds no sync rules: it builds the app, hands each route group the store roles it
uses, and answers the server and session routes itself. The route groups:

- web/pull.py: snapshot, change feed (long-polls: web/longpoll.py), manifests, chunk fetch;
  web/firstchunks.py: a clone's first small files' chunks, asked beside its snapshot;
- web/push.py: missing chunks, chunk upload (streamed: web/upload.py), commit;
- web/workflow.py: locks, history, restore, export, sync copies;
- web/manage.py: what an engagement's admins manage (lock breaks, copies, sign-off, grants);
- web/contentroot.py: the signed engagement content root and its listing.
- web/review.py: the conflict review queue (list, resolve).

Every engagement route goes through ``access.engagement_route`` (session -> engagement + role ->
``acl.allows``), every path segment through a converter of web/segments.py, every failure
through ``errors.error_response``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

import smartsyncd
from smartsyncd.auth.acl import allows
from smartsyncd.auth.grantees import Directory, GranteeResolver
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core import bodycodec, chunking
from smartsyncd.storage.api import ServerStore
from smartsyncd.storage.wipes import wipes_or_none
from smartsyncd.web.access import Access, Authorizer, add_route, bearer_token, engagement_route
from smartsyncd.web.admission import ClientAddresses
from smartsyncd.web.bodies import expect_object, get_str, guarded_channel_factory, read_body
from smartsyncd.web.branchreads import add_branch_read_routes
from smartsyncd.web.clientaddr import Network, access_log_formatter, client_address
from smartsyncd.web.contentroot import ContentRootRoutes, add_content_root_routes
from smartsyncd.web.deltas import DeltaBases
from smartsyncd.web.errors import error_response, send_json
from smartsyncd.web.firstchunks import FirstChunks
from smartsyncd.web.health import Checks, HealthCache, health_answer, with_disk
from smartsyncd.web.inlinechunks import INLINE_RAW_BYTES, InlineChunks
from smartsyncd.web.limits import ClientLimits, Limits
from smartsyncd.web.longpoll import LongPolls
from smartsyncd.web.manage import ManageRoutes, add_manage_routes
from smartsyncd.web.negotiate import NegotiateSignIn, negotiate_login  # issue 19: SSO
from smartsyncd.web.notify import ChangeNotifier
from smartsyncd.web.parse import parse_json_off_reactor
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.pull import PullRoutes, StoreIdentity
from smartsyncd.web.push import PushRoutes
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.review import ReviewRoutes, add_review_routes
from smartsyncd.web.segments import install_converters
from smartsyncd.web.shapes import changes_body, iso_utc
from smartsyncd.web.upload import UploadServices, upload_request_factory
from smartsyncd.web.wipes import add_wipe_routes
from smartsyncd.web.workflow import WorkflowRoutes, add_workflow_routes

__all__ = ["Limits", "SyncAPI", "make_site"]


class SyncAPI:
    """The HTTP interface of the sync server (see docs/protocol.md)."""

    sso: NegotiateSignIn | None = None  # issue 19: set by service/server.py with [kerberos]

    def __init__(
        self,
        store: ServerStore,
        sessions: SessionManager,
        notifier: ChangeNotifier,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        limits: Limits = Limits(),
        server_version: str = smartsyncd.__version__,
        now: Callable[[], datetime] | None = None,
        disk: Callable[[], Awaitable[Checks]] | None = None,  # /healthz free space
        directory: Directory | None = None,  # names in an engagement admin's grants (issue 17)
    ) -> None:
        self._store = store
        self._sessions = sessions
        self.clock = clock
        self._seconds = clock.seconds
        self._run_blocking = run_blocking
        self.limits = limits
        self._version = server_version
        now = now or self._clock_now
        self._health = HealthCache(with_disk(lambda: self._store.check_health(), disk), clock)
        self.authorizer = Authorizer(sessions, store, store, wipes_or_none(store))
        identity = StoreIdentity(store)
        # parked long-polls: answered in bulk, one query and one encoding per woken group
        self.longpolls = LongPolls(
            notifier, clock, lambda e, s, n: self._store.changes_since(e, s, n),
            lambda h, c, folders: changes_body(h, c, identity.known, folders),
        )
        deltas = DeltaBases(store, run_blocking, limits.delta_prefix_bytes)
        self.uploads = UploadServices(self.authorizer, store, deltas, run_blocking, limits)
        self.app = app = Klein()
        install_converters(app)
        app.handle_errors(Exception)(self._error)
        self._add_routes(app)
        # downloads, exports, history views: buffered into the audit trail (web/readaudit.py)
        self.read_audit = ReadAudit(store, clock.callLater, now)
        if self.authorizer.branch_gate is not None:  # a branch's prefetch is audited too
            self.authorizer.branch_gate.read_audit = self.read_audit
        PullRoutes(
            store, store, identity, self.longpolls, deltas, run_blocking, limits, self.read_audit
        ).add_to(
            app, self.authorizer
        )
        FirstChunks(store, store, store, run_blocking, limits, self.read_audit).add_to(
            app, self.authorizer)
        workflow = WorkflowRoutes(
            store, notifier, limits, now, self.read_audit, store, (store, identity),
            INLINE_RAW_BYTES)
        PushRoutes(
            store, store, self.authorizer, identity, self.longpolls, run_blocking, limits, now, store,
            InlineChunks(self.authorizer, store, deltas, run_blocking), workflow.answers,
        ).add_to(app)
        add_workflow_routes(app, self.authorizer, workflow)
        add_review_routes(app, self.authorizer, ReviewRoutes(store, notifier, limits, now))
        resolver = GranteeResolver(store, directory)
        add_manage_routes(app, self.authorizer, ManageRoutes(store, store, resolver, limits))
        add_wipe_routes(app, wipes_or_none(store), limits)
        add_branch_read_routes(app, self.authorizer, store, limits, run_blocking)  # issue 18
        add_content_root_routes(  # issue 20: the signed content root
            app, self.authorizer, ContentRootRoutes(store, store, identity, run_blocking, self.read_audit, now)
        )

    def _add_routes(self, app: Klein) -> None:
        add_route(app, "/healthz", ["GET"], self.healthz, "healthz")
        add_route(app, "/v1/info", ["GET"], self.info, "info")
        add_route(app, "/v1/login", ["POST"], self.login, "login")
        add_route(app, "/v1/logout", ["POST"], self.logout, "logout")
        add_route(app, "/v1/session", ["GET"], self.session, "session")
        add_route(app, "/v1/engagements", ["GET"], self.engagements, "engagements")
        engagement_route(app, self.authorizer, "read", "/v1/engagements/<engagement:eng>", methods=["GET"])(
            self.engagement
        )

    def _clock_now(self) -> datetime:
        return datetime.fromtimestamp(self._seconds(), UTC)

    def resource(self) -> IResource:
        """The twisted.web resource serving this API."""
        return cast(IResource, self.app.resource())

    def _error(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, failure)

    # -- server information ----------------------------------------------------------------

    async def healthz(self, request: Request) -> bytes:
        body, status = health_answer(await self._health.get())
        return send_json(request, body, status)

    def info(self, request: Request) -> bytes:
        return send_json(
            request,
            {
                "server": "smartsyncd",
                "version": self._version,
                "protocol": [1],
                "chunking": {
                    "algorithm": "fastcdc",
                    "min": chunking.MIN_CHUNK,
                    "avg": chunking.AVG_CHUNK,
                    "max": chunking.MAX_CHUNK,
                },
                "limits": {
                    "json_body": self.limits.json_body,
                    "chunk_body": self.limits.chunk_body,
                    "chunks_per_request": self.limits.chunks_per_request,
                    "manifests_per_request": self.limits.manifests_per_request,
                },
                "encodings": [bodycodec.ENCODING],
            },
        )

    # -- sessions --------------------------------------------------------------------------

    async def login(self, request: Request) -> bytes:
        await self.authorizer.refuse_if_wiped(request, None)  # a wiped copy signing in again
        signed_in = await negotiate_login(request, self.sso)  # issue 19: None unless Negotiate
        if signed_in is None:
            raw = read_body(request, self.limits.login_json)
            body = expect_object(await parse_json_off_reactor(self._run_blocking, raw))
            user = get_str(body, "user", max_len=256)
            password = get_str(body, "password", max_len=4096)
            signed_in = await self._sessions.sign_in(user, password, client_address(request))
        token, session = signed_in
        return send_json(
            request,
            {"token": token, "user": session.user, "expires_at": iso_utc(session.expires_at, False)},
        )

    async def logout(self, request: Request) -> bytes:
        token = bearer_token(request)
        await self._sessions.resolve(token)
        assert token is not None  # resolve refuses a missing token
        await self._sessions.sign_out(token)
        request.setResponseCode(204)
        return b""

    async def session(self, request: Request) -> bytes:
        session = await self._sessions.resolve(bearer_token(request))
        return send_json(
            request,
            {
                "user": session.user,
                "groups": list(session.groups),
                "expires_at": iso_utc(session.expires_at, False),
            },
        )

    # -- engagements -----------------------------------------------------------------------

    async def engagements(self, request: Request) -> bytes:
        session = await self._sessions.resolve(bearer_token(request))
        visible = []
        for e in await self._store.list_engagements():
            role = await self._store.role_for(e.name, session.principal, session.groups)
            if role is not None and allows(role, "read"):
                visible.append({"name": e.name, "title": e.title, "role": role, "head": e.head})
        return send_json(request, {"engagements": visible})

    async def engagement(self, request: Request, access: Access) -> bytes:
        e = access.engagement
        return send_json(request, {"name": e.name, "title": e.title, "role": access.role, "head": e.head})


class _SyncSite(Site):
    """A Site whose access log leaves out answered long-polls: one commit answers every waiting
    client, and 10,000 lines per commit cost about a third of the wake-up (bench/sessions.py);
    refusals and every other request are still logged."""

    def log(self, request: http.Request) -> None:
        if request.code == 200 and request.method == b"GET" and request.path.endswith(b"/changes"):
            return
        super().log(request)


def make_site(
    api: SyncAPI,
    *,
    timeout: float = 120,
    clients: ClientLimits = ClientLimits(),
    trusted_proxies: tuple[Network, ...] = (),
) -> Site:
    """The twisted.web Site for ``api``: body caps, idle timeout, per-address caps and the
    deadline before sign-in (web/admission.py), chunk uploads streamed (web/upload.py), no
    version in ``Server``; behind ``trusted_proxies`` the client address comes from their
    X-Forwarded-For."""
    site = _SyncSite(
        api.resource(),
        reactor=api.clock,
        timeout=timeout,
        logFormatter=access_log_formatter(trusted_proxies),
    )
    site.client_addresses = ClientAddresses(clients)  # type: ignore[attr-defined]
    site.trusted_proxies = trusted_proxies  # type: ignore[attr-defined]
    site.requestFactory = upload_request_factory(api.uploads)  # type: ignore[assignment]
    site.protocol = guarded_channel_factory  # type: ignore[assignment]
    site.displayTracebacks = False
    return site
