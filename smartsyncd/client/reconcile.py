"""A copy that finds the server's log is not the one it synced: remember, detect, reconcile.

A store restored from a backup, or its folder copied back from a snapshot, holds an earlier log:
copies that synced past it would ask only for changes after their own last seq and so miss
what colleagues commit after the restore, and never send their own newer files. Each copy
therefore keeps what it knows of the log (``ClientState.history_check``): the store identity and
generation it synced with, and the record token (the record's chain hash) at its last seq.
``ServerAPI`` sends them with every change feed and commit (``StateHistory``); the server
answers 409 ``history_diverged`` when they do not hold (docs/protocol.md).

Then ``SyncCopy.sync`` calls ``reconcile``: every synced base becomes unknown, never deleted
(an error never reads as a deletion). The sync that follows sends every local file as new:
the server answers ``unchanged`` (it has it: the base is adopted), ``applied`` (it lacked it)
or ``conflict`` (another version is there: ours becomes a conflict copy beside it). The pull
then follows the new log from 0: files added after the restore arrive, and files this copy
deleted before the restore come back (their deletion is not in this log).
"""

from __future__ import annotations

from twisted.logger import Logger

from smartsyncd.client.copycontext import RunBlocking
from smartsyncd.client.errors import HistoryDiverged
from smartsyncd.client.state import ClientState
from smartsyncd.client.wire import HistoryMark
from smartsyncd.core.model import HistoryCheck

log = Logger(namespace="smartsyncd.client")

class StateHistory:
    """``http.HistoryKeeper`` over a copy's ``ClientState`` (state calls run off the reactor)."""

    def __init__(self, state: ClientState, run: RunBlocking) -> None:
        self._state = state
        self._run = run

    async def check(self, since: int | None) -> HistoryCheck:
        check: HistoryCheck = await self._run(self._state.history_check, since)
        return check

    async def seen(self, mark: HistoryMark) -> None:
        if (mark.seq is None or mark.token is None) and mark.store is None and (
            mark.generation is None
        ):
            return
        await self._run(
            self._state.remember_history, mark.seq, mark.token, mark.store, mark.generation
        )


async def after_clone(state: ClientState, run: RunBlocking, mark: HistoryMark | None) -> None:
    """Keep the token and identity of the snapshot a clone was made from (its last seq)."""
    if mark is not None:
        await run(state.remember_history, mark.seq, mark.token, mark.store, mark.generation)


async def reconcile(
    state: ClientState, run: RunBlocking, engagement: str, error: HistoryDiverged
) -> None:
    """Forget the synced bases (files stay) and adopt the server's identity; the caller then
    syncs again, which sends what the server lacks and follows the new log from 0."""
    log.warn(
        "the server's log of {engagement} is not the one this copy synced ({why}): "
        "reconciling; local files are kept and sent again, differing versions become "
        "conflict copies",
        engagement=engagement, why=error.message,
    )
    await run(state.forget_history, error.store, error.generation)
