"""The server's view of this copy (docs/workflow.md): register a new copy at clone, report
its unsynced changes at each sync, and read back the engagement's locks and sign-off state."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable
from datetime import datetime

from smartsyncd.client.copycontext import CopyContext, log
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import report_body
from smartsyncd.client.server import Server
from smartsyncd.client.wire import CopyContact
from smartsyncd.core.locks import covers


def _host() -> str:
    return socket.gethostname() or "unknown"


async def _key_hash(ctx: CopyContext) -> str:
    """SHA-256 of the copy's secret: the server keeps it from the first contact that names it,
    to authenticate a wipe report (client/wipe.py)."""
    key: str = await ctx.run(ctx.state.copy_key)
    return hashlib.sha256(bytes.fromhex(key)).hexdigest()


async def register(ctx: CopyContext, api: Server) -> None:
    """Tell the server about this new copy; later requests name it."""
    api.copy_id = ctx.copy_id
    await api.register_copy(ctx.engagement, ctx.copy_id, _host(), await _key_hash(ctx))
    await ctx.run(ctx.state.set_takes_zstd_uploads, api.stream_chunks)


async def contact(
    ctx: CopyContext, api: Server, unsynced: int, since: datetime | None
) -> CopyContact | None:
    """Report this copy's unsynced count; the answer has locks and the sign-off state.
    Best effort on network trouble (the sync itself reports that); an abandoned copy's
    refusal is raised."""
    api.copy_id = ctx.copy_id
    try:
        return await api.report_copy(
            ctx.engagement, ctx.copy_id, _host(), unsynced, since, await _key_hash(ctx)
        )
    except NetworkError as e:
        log.warn("could not report to the server: {why}", why=str(e))
        return None


async def folded(
    ctx: CopyContext, unsynced: int, since: datetime | None,
    expect: dict[str, object] | None = None, keyed: bool = False,
) -> dict[str, object]:
    """The report a commit carries (issue 15): what stays unsynced if the commit applies;
    ``expect`` (client/onerequest.py): the commit applies only while what the copy assumed
    holds; ``keyed``: the server said it holds the copy's key hash (a report alone always
    names it again, so a server that lost it learns it back)."""
    key = None if keyed else await _key_hash(ctx)
    body = report_body(_host(), unsynced, since if unsynced else None, key)
    if expect is not None:
        body["expect"] = expect
    return body


def blocked(user: str, answer: CopyContact | None, paths: Iterable[str]) -> dict[str, str]:
    """Pending paths covered by another user's active lock -> a line saying whose."""
    if not answer:
        return {}
    locks = [lk for lk in answer.locks if lk.holder != user]
    out: dict[str, str] = {}
    for path in paths:
        for lk in locks:
            if covers(lk.path, path):
                out[path] = (
                    f"checked out by {lk.holder} since {lk.since}"
                    + ("" if lk.path == path else f" (folder {lk.path})")
                    + "; kept locally until check-in"
                )
                break
    return out
