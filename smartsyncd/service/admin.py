"""The admin listener: ``[admin] listen = ENDPOINT`` serving web/adminsite.py.

A child service of ``SmartsyncServer`` (service/server.py), started once the public site is
built (so the metrics have their sources) and before the public listener (so when the daemon
is ready, the admin endpoint is too); stopped after the drain, so a drain can be watched in
the metrics. ``tcp:`` suits a scraper on the same host (``tcp:9100:interface=127.0.0.1``);
``ssl:`` uses the daemon's certificate unless the string names its own, with the same TLS
1.2+ AEAD-only settings as the public listener. Off (no listener) when not configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from smartsyncd.service.tls import restrict_ciphers, tls_endpoint_string

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort
    from twisted.web.server import Site

    from smartsyncd.service.reactor import DaemonReactor

log = Logger(namespace="smartsyncd.service")


def admin_endpoint_string(listen: str, cert_path: str, key_path: str) -> str:
    """``listen`` with the daemon's certificate filled in for ``ssl:`` when it names none."""
    if listen.split(":", 1)[0].lower() == "ssl":
        return tls_endpoint_string(listen, cert_path, key_path)
    return listen


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
