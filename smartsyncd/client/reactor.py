"""The reactor as the client library sees it: one type instead of ``Any``.

``ClientReactor`` exists for the type checker only (as the daemon's ``service/reactor.py``):
the interfaces the client's reactor provides, joined into one interface the mypy-zope plugin
understands: time (timeouts, backoff, the bandwidth limit), threads (compression off the
reactor) and TCP (HTTPS connections, directly or through a CONNECT proxy). Unit tests pass a
``Clock`` together with an in-memory HTTP client, which then needs only the time part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorThreads, IReactorTime

    class ClientReactor(IReactorTime, IReactorThreads, IReactorTCP):
        pass
