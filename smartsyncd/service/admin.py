"""The admin listener: ``[admin] listen = ENDPOINT`` serving web/adminsite.py.

A child service of ``SmartsyncServer`` (service/server.py), started once the public site is
built (so the metrics have their sources) and before the public listener (so when the daemon
is ready, the admin endpoint is too); stopped after the drain, so a drain can be watched in
the metrics. ``tcp:`` suits a scraper on the same host (``tcp:9100:interface=127.0.0.1``);
``ssl:`` uses the daemon's certificate unless the string names its own, with the same TLS
1.2+ AEAD-only settings as the public listener. Off (no listener) when not configured.
``status_page`` wires the status page (web/statuspage.py) to the daemon's store, sessions and
counters, for the ``[admin] users`` and ``groups`` (auth/admins.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from smartsyncd.service.tls import restrict_ciphers, tls_endpoint_string

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.server import Site

    from smartsyncd.auth.sessions import SessionManager
    from smartsyncd.service.config import ServerConfig
    from smartsyncd.service.reactor import DaemonReactor
    from smartsyncd.web.inflight import InFlight
    from smartsyncd.web.metrics import SyncMetrics
    from smartsyncd.web.statushtml import BranchState
    from smartsyncd.web.statuspage import StatusPage, StatusSources

log = Logger(namespace="smartsyncd.service")


def admin_endpoint_string(listen: str, cert_path: str, key_path: str) -> str:
    """``listen`` with the daemon's certificate filled in for ``ssl:`` when it names none."""
    if listen.split(":", 1)[0].lower() == "ssl":
        return tls_endpoint_string(listen, cert_path, key_path)
    return listen


def status_page(config: ServerConfig, store: object, sessions: SessionManager,
                reactor: DaemonReactor, sources: StatusSources) -> StatusPage:
    """The status page over the daemon's (metered) store and sign-in, for the configured admins."""
    from smartsyncd.auth.admins import AdminPolicy, GroupDirectory
    from smartsyncd.web.statuspage import StatusPage, StatusStore

    directory = cast("GroupDirectory | None", sessions.backend("ldap"))
    policy = AdminPolicy(config.admin_users, config.admin_groups, directory)
    if not policy.configured:
        log.info("the status page admits nobody: set [admin] users or groups")
    return StatusPage(cast(StatusStore, store), sessions, policy, sources, reactor)


def status_sources(config: ServerConfig, metrics: SyncMetrics, inflight: Callable[[], InFlight],
                   free_space: Callable[[], Any], folders: list[str],
                   branch: Callable[[], BranchState | None] = lambda: None) -> StatusSources:
    from smartsyncd.web.statuspage import StatusSources

    sources = metrics.sources
    return StatusSources(
        inflight=inflight, refusals=metrics.refusals, free_space=free_space, folders=folders,
        warn_bytes=config.warn_free_mb << 20,
        connections=lambda: sources.connections() if sources.connections else 0,
        parked=lambda: sources.parked() if sources.parked else 0, branch=branch,
    )


class AdminListener(Service):
    """Listens on the admin endpoint while running; ``listening`` fires once bound."""

    def __init__(self, reactor: DaemonReactor, listen: str, site: Site, cert_path: str,
                 key_path: str) -> None:
        self._reactor = reactor
        self._listen = listen
        self._site = site
        self._cert_path = cert_path
        self._key_path = key_path
        self.port: IListeningPort | None = None
        self.listening: Deferred[None] | None = None
        self.setName("admin")

    def startService(self) -> None:
        super().startService()
        self.listening = Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        endpoint = serverFromString(
            self._reactor, admin_endpoint_string(self._listen, self._cert_path, self._key_path)
        )
        restrict_ciphers(endpoint)
        self.port = port = await endpoint.listen(self._site)
        host: Any = port.getHost()
        log.info(
            "admin endpoint listening on {endpoint} ({host}:{port}): /metrics",
            endpoint=self._listen, host=host.host, port=host.port,
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()
