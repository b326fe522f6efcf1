"""The server's view of this copy (docs/workflow.md): register a new copy at clone, report
its unsynced changes at each sync, and read back the engagement's locks and sign-off state."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable
from datetime import datetime

from smartsyncd.client.copycontext import CopyContext, log
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.server import Server
from smartsyncd.client.wire import CopyContact
from smartsyncd.core.locks import covers

# An idle copy still reports this often, so the copies list shows it alive (docs/workflow.md).
IDLE_REPORT_EVERY = 15 * 60.0


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


async def contact(
    ctx: CopyContext, api: Server, unsynced: int, since: datetime | None, *,
    skip_if_idle: bool = False,
) -> CopyContact | None:
    """Report this copy's unsynced count; the answer has locks and the sign-off state.
    Best effort on network trouble (the sync itself reports that); an abandoned copy's
    refusal is raised. ``skip_if_idle``: send nothing (None) when there is nothing to report
    and the server heard "nothing unsynced" from this copy less than ``IDLE_REPORT_EVERY``
    ago; a sync with nothing to push needs neither the locks nor the sign-off state."""
    api.copy_id = ctx.copy_id
    now = ctx.seconds()
    if skip_if_idle and unsynced == 0:
        last = await ctx.run(ctx.state.idle_report_at)
        if last is not None and 0 <= now - last < IDLE_REPORT_EVERY:
            return None
    try:
        answer = await api.report_copy(
            ctx.engagement, ctx.copy_id, _host(), unsynced, since, await _key_hash(ctx)
        )
    except NetworkError as e:
        log.warn("could not report to the server: {why}", why=str(e))
        return None
    await ctx.run(ctx.state.set_idle_report_at, now if unsynced == 0 else None)
    return answer


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
