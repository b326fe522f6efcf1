"""Fewer request header bytes on a persistent connection (issue 15, "fewer bytes per sync").

A sync is a handful of small requests on one kept-alive connection, and their headers were a
large share of its bytes. ``LeanPool`` is the transport's connection pool: it hands Agent each
connection wrapped so that the request going out on it is trimmed as it is sent:

- ``User-Agent`` goes on a connection's first request only (the server's access log and
  support see which client a connection is; repeating it on every request said nothing new);
- ``Accept-Encoding`` keeps the first value only: treq's content decoder adds ``gzip`` to the
  client's own ``zstd``, a second header line the server never uses (it answers zstd or plain).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from smartsyncd.runtime.twistedcompat import newclient as _newclient

HTTP11ClientProtocol = _newclient.HTTP11ClientProtocol

USER_AGENT_HEADER = b"user-agent"
ACCEPT_ENCODING = b"accept-encoding"


def trim_headers(headers: Headers, first_on_connection: bool) -> None:
    """Trim one request's headers in place (see the module docstring)."""
    if not first_on_connection:
        headers.removeHeader(USER_AGENT_HEADER)
    encodings = headers.getRawHeaders(ACCEPT_ENCODING)
    if encodings and len(encodings) > 1:
        headers.setRawHeaders(ACCEPT_ENCODING, encodings[:1])


class _LeanConnection:
    """What Agent uses of a pooled connection for one request (its ``request``), trimming
    that request's headers first."""

    def __init__(self, connection: object, first: bool) -> None:
        self._connection = connection
        self._first = first

    def request(self, request: object) -> Deferred[object]:
        headers = getattr(request, "headers", None)
        if isinstance(headers, Headers):
            trim_headers(headers, self._first)
        sent: Deferred[object] = self._connection.request(request)  # type: ignore[attr-defined]
        return sent

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)


class LeanPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections send trimmed headers (``trim_headers``)."""

    def __init__(self, reactor: object, persistent: bool = True) -> None:
        super().__init__(reactor, persistent)
        self._introduced: weakref.WeakSet[object] = weakref.WeakSet()

    def getConnection(  # noqa: N802 - Twisted's name
        self, key: Hashable, endpoint: IStreamClientEndpoint
    ) -> Deferred[HTTP11ClientProtocol]:
        got = super().getConnection(key, endpoint)

        def lean(connection: HTTP11ClientProtocol) -> HTTP11ClientProtocol:
            # (the transport's pool never retries by itself: no wrapper hides the connection)
            first = connection not in self._introduced
            self._introduced.add(connection)
            # Agent only calls ``request`` on it
            return cast(HTTP11ClientProtocol, _LeanConnection(connection, first))

        return got.addCallback(lean)
