"""``RunBlocking``: how a layer runs a blocking function off the reactor, as one type.

The daemon passes its pools' ``run_blocking`` (``deferToThreadPool``), the client library
``deferToThread``; unit tests pass a function that runs the call at once. Typed with
``ParamSpec`` so mypy checks the arguments and the result of every hand-off (web/ and client/
both use it; ``web/pool.py`` re-exports it for the web layer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class RunBlocking(Protocol):
    """``await run(f, *args, **kwargs)``: ``f(*args, **kwargs)`` on a worker thread."""

    # no ``/`` after ``f``: mypy 2.4 then no longer matches deferToThread against this
    def __call__(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...
