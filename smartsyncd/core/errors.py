"""Errors raised by the pure core; the web layer maps each to an HTTP status and JSON body."""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    """A refusal with a stable machine-readable code and a human message.

    ``status`` is the HTTP status the web layer answers with; ``details`` are extra JSON fields
    (for example the offending ``path``).
    """

    code = "bad_request"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        body.update(self.details)
        return body


class BadRequest(SyncError):
    code = "bad_request"
    status = 400


class InvalidPath(SyncError):
    """A path breaks a path rule; ``details['path']`` names it."""

    code = "invalid_path"
    status = 400


class PathClash(SyncError):
    """A name case-folds (after NFC) equal to another live name in the same folder."""

    code = "path_clash"
    status = 409


class MissingChunks(SyncError):
    """A manifest names chunks the engagement does not hold; ``details['chunks']`` lists them."""

    code = "missing_chunks"
    status = 409


class UnknownContent(SyncError):
    """A put names content the server has no manifest for and none was sent."""

    code = "unknown_content"
    status = 409


class BadChunk(SyncError):
    """An uploaded chunk does not hash to its name, or is malformed or too large."""

    code = "bad_chunk"
    status = 400


class NotFound(SyncError):
    code = "not_found"
    status = 404


class Forbidden(SyncError):
    code = "forbidden"
    status = 403


class AuthFailed(SyncError):
    code = "auth_failed"
    status = 401


class RateLimited(SyncError):
    code = "rate_limited"
    status = 429


class TooLarge(SyncError):
    code = "too_large"
    status = 413


class SessionExpired(SyncError):
    """Bearer token missing, unknown, expired or ended: sign in again."""

    code = "session_expired"
    status = 401


class Retained(SyncError):
    """A minimum retention period or a legal hold forbids removing this (issue 20)."""

    code = "retained"
    status = 409


class QuotaExceeded(SyncError):
    """A storage quota of the engagement or the user would be exceeded; nothing was stored
    (``quota``, ``principal``, ``measure``, ``limit``, ``used``, ``needed``)."""

    code = "quota_exceeded"
    status = 507


class StorageFull(SyncError):
    """The server's chunk storage has no room: an operator must act, so clients do not retry."""

    code = "storage_full"
    status = 507


class HistoryDiverged(SyncError):
    """The copy's history is not this store's: it names another store identity or generation,
    a sequence number past the head, or a record token at its last sequence number that the log
    does not hold there (the store was restored or rolled back). Nothing was applied; the copy
    reconciles (docs/reliability.md) and follows the log from there. ``store``, ``generation``
    and ``head`` describe the server's side, ``reason`` what did not match."""

    code = "history_diverged"
    status = 409


class Unavailable(SyncError):
    """Database or storage unreachable; clients retry and never read this as a deletion."""

    code = "unavailable"
    status = 503


# -- engagement workflow (docs/workflow.md) ----------------------------------------------------


class Locked(SyncError):
    """A path of the commit is checked out by another user (``path``, ``holder``, ``since``,
    ``expires_at``, ``lock_path``); nothing in the batch is applied. The edit stays local."""

    code = "locked"
    status = 409


class BatchReused(SyncError):
    """A batch key this user already committed, sent with different changes: refused, not
    replayed (a replay answers only the very request it stored)."""

    code = "batch_reused"
    status = 409


class Finalized(SyncError):
    """The engagement is signed off (finalized) and read-only for everyone (``reason``,
    ``finalized_by``, ``finalized_at``); nothing is applied until an admin reopens it."""

    code = "finalized"
    status = 423


class CopyAbandoned(SyncError):
    """The sync copy named by the ``Smartsync-Copy`` header was abandoned by an admin (a lost
    laptop): it may never commit again (``copy``)."""

    code = "copy_abandoned"
    status = 403


class WipeOrdered(SyncError):
    """An admin ordered the sync copy named by the ``Smartsync-Copy`` header wiped (a lost
    laptop): the answer to any request that names it (``engagement``, ``copy``, ``ordered_by``,
    ``ordered_at``), sent before its session is checked. The client deletes the copy."""

    code = "wipe_ordered"
    status = 410


class UnsyncedCopies(SyncError):
    """Finalize refused: copies still hold unsynced work (``copies``); use --force to override."""

    code = "unsynced_copies"
    status = 409


class ConflictResolved(SyncError):
    """The conflict item was already resolved (``resolved_by``, ``resolved_at``,
    ``resolution``): nothing changed (docs/workflow.md, "Conflict review")."""

    code = "conflict_resolved"
    status = 409


class ConflictStale(SyncError):
    """The file or its conflict copy changed since the reviewer looked (``path_seq``,
    ``copy_seq``: the versions now); nothing changed. List the item again and decide anew."""

    code = "conflict_stale"
    status = 409


class LastAdmin(SyncError):
    """An engagement admin's grant change would leave the engagement without any admin grant
    (``engagement``); only ``smartsync-admin`` on the server may do that."""

    code = "last_admin"
    status = 409


# -- branch offices (docs/branch-offices.md) ---------------------------------------------------


class CentralUnreachable(Unavailable):
    """A branch could not reach the central server for a write (or a chunk it lacks). The
    client keeps its work and retries like any 503; nothing was lost."""

    code = "central_unreachable"


class ReplicaBehind(Unavailable):
    """A branch forwarded a write that central made, but its standby had not replayed it within
    the wait: the client's retry is idempotent (the commit's batch key)."""

    code = "replica_behind"
