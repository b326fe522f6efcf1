"""Per-endpoint and per-client limits of the web API (docs/protocol.md "Limits",
docs/reliability.md "Denial of service before sign-in"); plain values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-endpoint limits (docs/protocol.md "Limits"); /v1/info publishes some of them."""

    json_body: int = 64 * MiB  # a commit, and only after its session token checked out
    small_json: int = 1 * MiB
    login_json: int = 64 * 1024  # user <= 256 and password <= 4096 characters, escaped
    chunk_body: int = 32 * MiB
    chunks_per_request: int = 4096
    delta_prefix_bytes: int = 64 * MiB  # base bytes the delta records of one upload may name
    missing_per_request: int = 10000
    changes_per_commit: int = 10000
    max_wait: float = 60.0
    changes_page: int = 5000
    manifests_per_request: int = 1000  # POST .../manifests: content ids asked at once
    manifests_body: int = 8 * MiB  # its answer: the rest is "deferred" (asked again)


@dataclass(frozen=True)
class ClientLimits:
    """What one client address may hold before it signed in (web/admission.py)."""

    connections_per_address: int = 1024
    unauthenticated_bytes_per_address: int = 8 * MiB
    request_deadline: float = 60.0  # seconds to send one unauthenticated request, all of it
