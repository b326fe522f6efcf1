"""The admin endpoint's web site: ``/metrics`` (Prometheus text format), ``/status`` and an index.

Separate from the public site (its own listener, ``[admin] listen``, service/admin.py).
``/metrics`` has no sign-in, so the endpoint is meant for a loopback or management address;
its answers are built from the daemon's ``SyncMetrics``. ``/status`` is the admin status page
(web/statuspage.py), with its own sign-in, for ``[admin] users`` and ``groups``. Request bodies
are capped (``StatusRequest``): the only ones are the status page's forms.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from smartsyncd.web.metrics import SyncMetrics
from smartsyncd.web.statuspage import StatusPage, StatusRequest

log = Logger(namespace="smartsyncd.web")

_INDEX = (
    b"smartsyncd admin endpoint\n/metrics  Prometheus metrics (text format)\n"
    b"/status   the status page (sign in as an [admin] user or group member)\n"
)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: SyncMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> int:
        Deferred.fromCoroutine(self._answer(request))
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        try:
            await self._metrics.refresh()
            body = self._metrics.render()
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        except Exception:
            log.failure("rendering the metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            body = b"metrics unavailable\n"
        request.setHeader(b"cache-control", b"no-store")
        if not request._disconnected:
            request.write(body)
            request.finish()


class _Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return _INDEX


class _AdminSite(Site):
    def log(self, request: http.Request) -> None:
        pass  # a scrape every few seconds: no access line each time


def make_admin_site(
    metrics: SyncMetrics, clock: IReactorTime, status: StatusPage | None = None
) -> Site:
    root = _Index()
    root.putChild(b"metrics", MetricsResource(metrics))
    if status is not None:
        root.putChild(b"status", status)
    site = _AdminSite(root, reactor=clock, timeout=60)
    site.requestFactory = StatusRequest  # type: ignore[assignment]
    site.displayTracebacks = False
    return site
