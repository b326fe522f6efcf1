"""The reactor as the service tree sees it: one type instead of ``Any``.

``DaemonReactor`` exists for the type checker only (as Twisted's own ``_IReactorCommon``): the
interfaces the daemon's reactor provides (core, time, threads, TCP), joined into one interface
that the mypy-zope plugin understands. ``tap.makeService`` casts the global reactor to it once,
at the root of the tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IReactorCore,
        IReactorTCP,
        IReactorThreads,
        IReactorTime,
    )

    class DaemonReactor(IReactorCore, IReactorTime, IReactorThreads, IReactorTCP):
        pass
