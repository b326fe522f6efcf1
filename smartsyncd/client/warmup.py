"""A connection pool's first connections opened before any request (issue 15).

The command's early TCP connections (client/preconnect.py) are ready well before its sync
engine has imported. :func:`open_into` starts TLS on them at once, as the pool would for a
request (same endpoint, so the same policy, pinning and resumption ticket), and puts each
into the pool idle; the engine then imports while the handshake's round trip is on the wire,
and the first requests find the connections there. A connection that fails (refused, a
certificate that does not verify) is simply not used: the pool skips a lost connection and
the request opens its own, which fails the same way and reports it as before.

Twisted's ``HTTPConnectionPool`` has no public call for "open one and keep it": this module
uses its ``_newConnection`` and ``_putConnection`` (their signatures and Agent's pool key
are checked by tests/unit/test_warmup.py) and nothing else private.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, HTTPConnectionPool

from smartsyncd.client import preconnect

log = Logger()


class EndpointFactory(Protocol):
    def endpointForURI(self, uri: URI) -> Any: ...  # noqa: N802 - Twisted's name


def pool_key(uri: URI) -> Hashable:
    """The key ``Agent.request`` files a connection under for ``uri``."""
    return (uri.scheme, uri.host, uri.port)


def open_early(pool: HTTPConnectionPool, endpoints: EndpointFactory,
               base_url: str) -> list[Deferred[None]]:
    """Open into ``pool`` as many connections to ``base_url`` as were begun for it at the
    start (none otherwise); each Deferred fires (never fails) once its connection is in the
    pool or was given up."""
    uri = URI.fromBytes(base_url.encode("ascii"))
    return open_into(pool, endpoints, uri,
                     preconnect.pending(uri.host.decode("ascii"), uri.port))


def open_into(pool: HTTPConnectionPool, endpoints: EndpointFactory, uri: URI,
              count: int) -> list[Deferred[None]]:
    """Open ``count`` connections to ``uri``'s server into ``pool`` (see ``open_early``)."""
    key = pool_key(uri)
    opened: list[Deferred[None]] = []
    for _ in range(count):
        # the pool's own way to connect: when a request on it ends, the connection goes
        # back to the pool as any other
        connecting: Deferred[Any] = pool._newConnection(key, endpoints.endpointForURI(uri))

        def idle(connection: Any) -> None:
            pool._putConnection(key, connection)  # type: ignore[no-untyped-call]

        def given_up(failure: Failure) -> None:
            log.debug("early connection to {url} not opened: {why}", url=uri.toBytes(),
                      why=failure.getErrorMessage())

        opened.append(connecting.addCallbacks(idle, given_up))
    return opened
