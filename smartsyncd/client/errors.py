"""Errors the client library raises; each carries the ``smartsync`` exit code it maps to.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; an embedding app
can catch :class:`ClientError` and branch on the subclass.
"""

from __future__ import annotations

from typing import Any


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
    """The server answered with a JSON error (``{"error": code, "message": ...}``)."""

    exit_code = 5

    def __init__(
        self, code: str, message: str, status: int, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"server refused ({code}): {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details: dict[str, Any] = dict(details or {})


class HistoryDiverged(ServerRefused):
    """The server's log is not the one this copy synced (it was restored or rolled back):
    ``details`` carry the server's ``store``, ``generation`` and ``head``. ``SyncCopy.sync``
    reconciles (``client/reconcile.py``): nothing local is lost, nothing is deleted."""
