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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from smartsyncd.client.trust import (
        CAPolicy,
        PinnedPolicy,
        fetch_fingerprint,
        normalize_fingerprint,
    )
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

# each name's module, imported on first use (PEP 562): ``import smartsyncd.client.errors``
# (the command's argument parsing) no longer imports the engine, treq, TLS and rich
_WHERE = {
    "AuthError": "smartsyncd.client.errors",
    "Backoff": "smartsyncd.client.backoff",
    "CAPolicy": "smartsyncd.client.trust",
    "ClientError": "smartsyncd.client.errors",
    "ConflictsLeft": "smartsyncd.client.errors",
    "NetworkError": "smartsyncd.client.errors",
    "NullProgress": "smartsyncd.client.progress",
    "PinnedPolicy": "smartsyncd.client.trust",
    "Progress": "smartsyncd.client.progress",
    "ProtocolError": "smartsyncd.client.errors",
    "Reachability": "smartsyncd.client.watch",
    "RetryNotice": "smartsyncd.client.backoff",
    "RichProgress": "smartsyncd.client.progress",
    "ServerAPI": "smartsyncd.client.http",
    "ServerRefused": "smartsyncd.client.errors",
    "SessionExpired": "smartsyncd.client.errors",
    "SyncCopy": "smartsyncd.client.engine",
    "TrustError": "smartsyncd.client.errors",
    "UsageError": "smartsyncd.client.errors",
    "UserConfig": "smartsyncd.client.userconfig",
    "config_dir": "smartsyncd.client.userconfig",
    "fetch_fingerprint": "smartsyncd.client.trust",
    "normalize_fingerprint": "smartsyncd.client.trust",
}


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
