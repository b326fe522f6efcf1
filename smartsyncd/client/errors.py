"""Errors the client library raises; each carries the ``smartsync`` exit code it maps to.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; an embedding app
can catch :class:`ClientError` and branch on the subclass.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client reports to a user."""

    exit_code = 1


class ConflictsLeft(ClientError):
    """The sync finished but conflict copies are waiting for a person to resolve them."""

    exit_code = 1


class UsageError(ClientError):
    """The command line or a local setting is wrong (nothing was sent)."""

    exit_code = 2


class CopyInUse(UsageError):
    """Another process (a ``watch``, a second terminal) is syncing this copy: one at a time
    per copy (exit 2, nothing was changed)."""


class CopyWiped(ClientError):
    """This copy was wiped on its server's order (its files and settings are gone): the
    command did nothing else (exit 7)."""

    exit_code = 7


class WipeInterrupted(UsageError):
    """A wipe of this copy was interrupted: it is finished before anything else runs here."""


class AuthError(ClientError):
    """Sign-in failed, or the session ended and could not be renewed."""

    exit_code = 3


class SessionExpired(AuthError):
    """The bearer token is missing, unknown, expired or ended: sign in again."""


class NetworkError(ClientError):
    """The server could not be reached or kept failing (after retries).

    ``retryable`` marks transient failures (connection refused/lost, timeouts, 502/503/504)
    that the retry loop may try again.
    """

    exit_code = 4

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class TrustError(NetworkError):
    """The server's certificate is unknown or changed: never retried, never silently accepted."""

    def __init__(self, message: str, *, presented: str | None = None) -> None:
        super().__init__(message, retryable=False)
        self.presented = presented


class ProtocolError(NetworkError):
    """The server's answer does not follow docs/protocol.md (malformed JSON, bad manifest)."""


class Unverifiable(ProtocolError):
    """One pulled file cannot be verified (its stored manifest gives a chunk the wrong size):
    the pull skips and reports that file and goes on with the rest."""


class ServerRefused(ClientError):
    """The server answered with a JSON error (``{"error": code, "message": ...}``).

    Each code of docs/protocol.md has its subclass below (``refusal`` picks it), so callers
    catch the refusal they handle by type; an unknown code stays a plain ``ServerRefused``.
    ``kind`` is the name ``smartsync --json`` reports (the same for every refusal but
    ``HistoryDiverged``, as before the subclasses existed)."""

    exit_code = 5
    kind = "ServerRefused"

    def __init__(
        self, code: str, message: str, status: int, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(f"server refused ({code}): {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details: dict[str, object] = dict(details or {})

    @property
    def path(self) -> str | None:
        """The path the refusal names (``details['path']``), if any."""
        return _text(self.details.get("path"))


class BadRequest(ServerRefused):
    """``bad_request``: the request broke a rule of the protocol."""


class PathRefused(ServerRefused):
    """``invalid_path``: ``path`` breaks a path rule (the file stays local)."""


class PathClash(ServerRefused):
    """``path_clash``: ``path`` case-folds equal to the live name ``existing``."""

    @property
    def existing(self) -> str | None:
        return _text(self.details.get("existing"))


class MissingChunks(ServerRefused):
    """``missing_chunks``: a manifest names chunks the server does not hold."""


class UnknownContent(ServerRefused):
    """``unknown_content``: a put names content the server has no manifest for."""


class BadChunk(ServerRefused):
    """``bad_chunk``: an uploaded chunk (or delta record) does not rebuild to its hash."""


class NotFound(ServerRefused):
    """``not_found``: no such engagement, file, version or resource."""


class Forbidden(ServerRefused):
    """``forbidden``: this user may not do that in this engagement."""

    @property
    def required(self) -> str | None:
        """The role the refused request needs (``details['required']``), when the server says."""
        return _text(self.details.get("required"))


class LastAdmin(ServerRefused):
    """``last_admin``: the change would leave the engagement without an admin grant."""


class RateLimited(ServerRefused):
    """``rate_limited``: too many requests or sign-in attempts; try later."""


class TooLarge(ServerRefused):
    """``too_large``: a request body or list over the server's limit."""


class StorageFull(ServerRefused):
    """``storage_full``: the server has no room; an operator must act."""


class QuotaExceeded(ServerRefused):
    """``quota_exceeded``: a storage quota of the engagement or the user would be exceeded;
    nothing was stored (the message names the quota, its limit and what is used)."""


class Retained(ServerRefused):
    """``retained``: a minimum retention period or a legal hold forbids removing this."""


class Locked(ServerRefused):
    """``locked``: ``path`` is checked out by another user; the local edit waits."""


class BatchReused(ServerRefused):
    """``batch_reused``: a batch key sent again with different changes."""


class Finalized(ServerRefused):
    """``finalized``: the engagement is signed off and read-only; local changes are kept."""


class CopyAbandoned(ServerRefused):
    """``copy_abandoned``: an admin abandoned this copy; it may never commit again."""


class WipeOrdered(ServerRefused):
    """``wipe_ordered``: an admin ordered this copy wiped (a lost laptop). Its ``details``
    name the ``engagement``, ``copy``, ``ordered_by`` and ``ordered_at``; the copy obeys only
    an order that names itself and came from its own server (client/wipe.py)."""

    @property
    def engagement(self) -> str | None:
        return _text(self.details.get("engagement"))

    @property
    def copy(self) -> str | None:
        return _text(self.details.get("copy"))

    @property
    def ordered_by(self) -> str | None:
        return _text(self.details.get("ordered_by"))

    @property
    def ordered_at(self) -> str | None:
        return _text(self.details.get("ordered_at"))


class UnsyncedCopies(ServerRefused):
    """``unsynced_copies``: finalize refused while copies hold unsynced work."""


class HistoryDiverged(ServerRefused):
    """The server's log is not the one this copy synced (it was restored or rolled back):
    ``details`` carry the server's ``store``, ``generation`` and ``head``. ``SyncCopy.sync``
    reconciles (``client/reconcile.py``): nothing local is lost, nothing is deleted."""

    kind = "HistoryDiverged"

    @property
    def store(self) -> str | None:
        return _text(self.details.get("store"))

    @property
    def generation(self) -> int | None:
        value = self.details.get("generation")
        return value if type(value) is int else None


REFUSALS: dict[str, type[ServerRefused]] = {
    "bad_request": BadRequest,
    "invalid_path": PathRefused,
    "path_clash": PathClash,
    "missing_chunks": MissingChunks,
    "unknown_content": UnknownContent,
    "bad_chunk": BadChunk,
    "not_found": NotFound,
    "forbidden": Forbidden,
    "last_admin": LastAdmin,
    "rate_limited": RateLimited,
    "too_large": TooLarge,
    "storage_full": StorageFull,
    "quota_exceeded": QuotaExceeded,
    "retained": Retained,
    "history_diverged": HistoryDiverged,
    "locked": Locked,
    "batch_reused": BatchReused,
    "finalized": Finalized,
    "copy_abandoned": CopyAbandoned,
    "wipe_ordered": WipeOrdered,
    "unsynced_copies": UnsyncedCopies,
}


def refusal(
    code: str, message: str, status: int, details: dict[str, object] | None = None
) -> ServerRefused:
    """The typed refusal for the server's error ``code`` (a plain ``ServerRefused`` for a
    code this client does not know)."""
    return REFUSALS.get(code, ServerRefused)(code, message, status, details)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
