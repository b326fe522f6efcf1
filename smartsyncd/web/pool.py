"""The CPU pool as the web layer sees it: ``RunBlocking`` runs a function off the reactor.

The service passes its pool's ``deferToThreadPool``; unit tests pass a function that runs the
call at once. Typed with ``ParamSpec`` so mypy checks the arguments of every hand-off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class RunBlocking(Protocol):
    """``await run(f, *args, **kwargs)``: ``f(*args, **kwargs)`` on a worker thread."""

    def __call__(self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...
