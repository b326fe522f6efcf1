"""A ``MultiService`` that stops its children one at a time, last started first.

Twisted's ``MultiService`` stops every child at once. The daemon's tree needs an order: the
server drains on SIGTERM (service/server.py) and an upload finishing meanwhile still needs the
CPU thread pool (chunk verification), and the drain's log lines still need the JSON log. So
the server stops first and the pool, the JSON log and the SIGHUP handler only after it.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger(namespace="smartsyncd.service")


class OrderedMultiService(MultiService):
    """Stops its children in reverse order, each after the previous one has stopped."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for service in reversed(list(self)):
            try:
                stopping = service.stopService()
                if isinstance(stopping, Deferred):
                    await stopping
            except Exception:  # noqa: BLE001 - the others must still stop
                log.failure("stopping {service} failed", service=service.name)
