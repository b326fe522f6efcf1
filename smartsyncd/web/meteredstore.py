"""A ``ServerStore`` that counts commits, conflicts and store errors (web/metrics.py).

The daemon hands this wrapper, not the store itself, to the web application and the sign-in
code: every store call goes through it, so the counts cover every route with no counting in
the handlers. Errors counted: ``Unavailable`` (the database or the chunk folder failed),
``StorageFull`` (no space left) and anything that is not a ``SyncError`` (a bug or an unexpected
failure: answered 500). Refusals of bad requests (``NotFound``, ``Forbidden``, ...) are not
store errors. A method the daemon does not call through here is passed on untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from twisted.internet.defer import CancelledError

from smartsyncd.core.errors import StorageFull, SyncError, Unavailable
from smartsyncd.core.model import HistoryCheck, ProposedChange
from smartsyncd.storage.api import (
    ChunkUpload,
    CommitResult,
    PutManifest,
    ServerStore,
    VerifiedChunk,
)
from smartsyncd.web.metrics import SyncMetrics


def error_kind(error: BaseException) -> str | None:
    """The ``error`` label of a failed store call; None for a refusal of the request."""
    if isinstance(error, (CancelledError, GeneratorExit)):
        return None  # the client went away
    if isinstance(error, StorageFull):
        return "full"
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, SyncError):
        return None
    return "internal"


class MeteredStore:
    """Passes every call to ``store``; counts what ``metrics`` reports (module docstring)."""

    def __init__(self, store: ServerStore, metrics: SyncMetrics) -> None:
        self._store = store
        self.inner = store  # looked through for the lifecycle methods (lifecycle_or_none)
        self._metrics = metrics
        self._wrapped: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        target = getattr(self._store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(target):
            return target
        metrics = self._metrics

        async def call(*args: object, **kwargs: object) -> object:
            try:
                return await target(*args, **kwargs)
            except BaseException as e:
                _count_error(metrics, name, e)
                raise

        self._wrapped[name] = call
        return call

    async def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: dict[str, PutManifest],
        now: datetime,
        copy: str | None = None,
        check: HistoryCheck | None = None,
    ) -> CommitResult:
        try:
            result = await self._store.commit(
                engagement_id, user, session, batch, changes, manifests, now, copy=copy, check=check
            )
        except BaseException as e:
            _count_error(self._metrics, "commit", e)
            raise
        m = self._metrics
        if result.replayed:
            m.commits.labels("replayed").inc()
        elif result.changes:
            m.commits.labels("written").inc()
            m.committed_files.inc(len(result.changes))
        else:
            m.commits.labels("empty").inc()
        conflicts = sum(1 for item in result.results if item.status == "conflict")
        if conflicts:
            m.conflicts.inc(conflicts)
        return result

    def open_upload(self, engagement_id: int, user: str | None = None) -> ChunkUpload:
        return _MeteredUpload(self._store.open_upload(engagement_id, user), self._metrics)


class _MeteredUpload:
    """A ``ChunkUpload`` whose write errors (a full chunk folder) are counted."""

    def __init__(self, upload: ChunkUpload, metrics: SyncMetrics) -> None:
        self._upload = upload
        self._metrics = metrics

    async def append(self, chunks: Sequence[VerifiedChunk]) -> None:
        try:
            await self._upload.append(chunks)
        except BaseException as e:
            _count_error(self._metrics, "upload_append", e)
            raise

    async def finish(self, total: int) -> tuple[int, int]:
        try:
            return await self._upload.finish(total)
        except BaseException as e:
            _count_error(self._metrics, "upload_finish", e)
            raise

    async def abort(self) -> None:
        await self._upload.abort()


def _count_error(metrics: SyncMetrics, operation: str, error: BaseException) -> None:
    kind = error_kind(error)
    if kind is not None:
        metrics.store_errors.labels(operation, kind).inc()
