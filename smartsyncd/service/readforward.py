"""Sends a branch's spooled read events to central (issue 18, ``storage/readspool.py``).

``ReadForwarder`` looks at the spool every ``interval`` seconds on its clock and sends what
waits, oldest first, up to ``BATCH_EVENTS`` events per ``POST /v1/branch/reads`` with the
branch's credential (``web/branchreads.py`` records them at central under each reading user,
with the time of the read and ``via: branch:NAME``). A batch central recorded is removed; with
the link down the batches stay (``state`` ``link_down``) and go when it is back; a batch
central refuses as malformed (400, 404, 413) is set aside, never resent; a refused credential
(403) keeps everything and is logged. One send at a time; the spool's files are read and
removed off the reactor.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from smartsyncd.core.errors import CentralUnreachable
from smartsyncd.service.periodic import PeriodicService
from smartsyncd.storage.readspool import ReadSpool

log = Logger(namespace="smartsyncd.branch")

BATCH_EVENTS = 1000
INTERVAL_S = 5.0
URI = b"/v1/branch/reads"


class ReadForwarder(PeriodicService):
    """Sends the spooled read events to central in batches while the link is up."""

    def __init__(
        self, spool: ReadSpool, central: Any, credential: bytes, clock: IReactorTime,
        run_blocking: Callable[..., Awaitable[Any]], interval: float = INTERVAL_S,
    ) -> None:
        super().__init__(clock, interval, "read-forward")
        self._spool = spool
        self._central = central  # web/central.CentralLink
        self._credential = credential  # the Authorization header's value
        self._run_blocking = run_blocking
        self.state = "idle"
        self.sent = 0  # events central recorded since start

    def poke(self) -> None:
        if not self.running or self._running is not None:
            return
        self._running = Deferred.fromCoroutine(self.send())
        self._running.addBoth(self._sent)

    def _sent(self, _: object) -> None:
        self._running = None

    async def send(self) -> None:
        """Send what waits, batch after batch, until the spool is empty or a send fails."""
        try:
            while await self._send_one():
                pass
        except CentralUnreachable:
            self.state = "link_down"
        except Exception:
            log.failure("sending the branch's read events failed (retried)")
            self.state = "error"

    async def _send_one(self) -> bool:
        batches = await self._run_blocking(self._spool.pending, BATCH_EVENTS)
        if not batches:
            self.state = "idle"
            return False
        names = [name for name, _ in batches]
        events = [e for _, part in batches for e in part]
        headers = Headers({
            b"authorization": [self._credential], b"content-type": [b"application/json"],
        })
        body = FileBodyProducer(BytesIO(json.dumps({"events": events}).encode("utf-8")))
        status, _, data = await self._central.request(b"POST", URI, headers, body)
        if status == 200:
            await self._run_blocking(self._spool.remove, names)
            self.sent += len(events)
            self.state = "sending"
            return True
        if status in (400, 404, 413):
            log.error("central refused {n} read event(s) as malformed ({status}: {answer}); kept"
                      " aside in {folder}", n=len(events), status=status, folder=self._spool.folder,
                      answer=data[:300].decode("utf-8", "replace"))
            await self._run_blocking(self._spool.set_aside, names)
            return True
        log.warn("central did not take the branch's read events ({status}: {answer}); kept, retried",
                 status=status, answer=data[:300].decode("utf-8", "replace"))
        self.state = "refused"
        return False
