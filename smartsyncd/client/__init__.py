"""The embeddable smartsyncd client: a treq-based connection (``ServerAPI``), TLS trust
policies, per-user settings, and the sync engine (``SyncCopy``) that the ``smartsync`` CLI
and a desktop app drive.

Quick use::

    api = ServerAPI("https://files.example:8443", reactor=reactor,
                    policy=PinnedPolicy("AB:CD:..."))
    await api.login("alice", password)
    copy = await SyncCopy.clone(api, "acme-2026", "/home/alice/acme")
    report = await copy.sync(api)
"""

from __future__ import annotations

from smartsyncd.client.backoff import Backoff, RetryNotice
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import (
    AuthError,
    ClientError,
    ConflictsLeft,
    NetworkError,
    ProtocolError,
    ServerRefused,
    SessionExpired,
    TrustError,
    UsageError,
)
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.progress import NullProgress, Progress, RichProgress
from smartsyncd.client.trust import CAPolicy, PinnedPolicy, fetch_fingerprint, normalize_fingerprint
from smartsyncd.client.userconfig import UserConfig, config_dir
from smartsyncd.client.watch import Reachability

__all__ = [
    "AuthError",
    "Backoff",
    "CAPolicy",
    "ClientError",
    "ConflictsLeft",
    "NetworkError",
    "NullProgress",
    "PinnedPolicy",
    "Progress",
    "ProtocolError",
    "Reachability",
    "RetryNotice",
    "RichProgress",
    "ServerAPI",
    "ServerRefused",
    "SessionExpired",
    "SyncCopy",
    "TrustError",
    "UsageError",
    "UserConfig",
    "config_dir",
    "fetch_fingerprint",
    "normalize_fingerprint",
]

