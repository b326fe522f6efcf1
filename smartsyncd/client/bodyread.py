"""A response body read without joining it on the reactor (issue 15, the loopback download).

treq's ``content()`` joins the pieces of a body in the callback that ends it, on the reactor: a
chunk fetch answer of 8 MiB is then a fresh 8 MiB copy (and its page faults) on the thread that
also decrypts TLS, about a third of the client reactor's CPU in a 256 MiB clone (py-spy).
``read_body`` keeps the pieces as they arrive and joins a large body on a pool thread, a small
one in place (a thread hop costs more than joining a few KiB). ``read_pieces`` does not join at
all: for a chunk fetch answer, whose records are cut from the pieces as they are
(client/fetchanswer.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from treq import collect


async def read_body(
    response: Any, run_in_thread: Callable[..., Awaitable[Any]], in_thread_bytes: int
) -> bytes:
    """The whole body of ``response`` (a treq response), joined off the reactor when it is
    larger than ``in_thread_bytes``."""
    pieces: list[bytes] = []
    await collect(response, pieces.append)
    if len(pieces) == 1:
        return pieces[0]
    if sum(len(p) for p in pieces) > in_thread_bytes:
        joined: bytes = await run_in_thread(b"".join, pieces)
        return joined
    return b"".join(pieces)


async def read_pieces(response: Any) -> list[bytes]:
    """The body of ``response`` (a treq response) as the pieces it arrived in, not joined."""
    pieces: list[bytes] = []
    await collect(response, pieces.append)
    return pieces
