"""The engagement's server-published ignore rules as the client sees them: fetched at each sync,
kept in the copy's state folder so a failed fetch falls back to the last rules known rather
than reading as "no rules", and absent (not an error) on an older server without the route."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from smartsyncd.client.errors import NetworkError, NotFound, ProtocolError, ServerRefused
from smartsyncd.client.localfs import atomic_write_bytes
from smartsyncd.client.osfs import read_small_file
from smartsyncd.core.ignore import MAX_RULES_BYTES, EngagementRules

CACHE_NAME = "engagement-ignore.json"
CACHE_LIMIT = 6 * MAX_RULES_BYTES + 4096  # the rules as JSON: \u00XX escapes at worst

FetchRules = Callable[[], Awaitable[tuple[str | None, str | None]]]


def read_cached(state_dir: Path) -> EngagementRules | None:
    """The rules last fetched for this copy (blocking), or None when none were kept."""
    try:
        data = json.loads(read_small_file(state_dir / CACHE_NAME, CACHE_LIMIT))
    except (OSError, ValueError):
        return None
    text = data.get("rules") if isinstance(data, dict) else None
    return EngagementRules.parse(text) if isinstance(text, str) else None


def write_cached(state_dir: Path, rules: EngagementRules | None) -> None:
    """Keep ``rules`` (None: the engagement has none) as the copy's last known set (blocking)."""
    text = None if rules is None else rules.text
    digest = None if rules is None else rules.digest
    body = json.dumps({"rules": text, "digest": digest}).encode("utf-8")
    atomic_write_bytes(state_dir / CACHE_NAME, body)


async def current_rules(
    fetch: FetchRules,
    state_dir: Path,
    run: Callable[..., Awaitable[object]],
) -> EngagementRules | None:
    """The engagement's rules for this sync: fetched and kept; on a network or server failure
    the cached ones; None on an older server that has no such route (404). ``run`` calls a
    blocking function off the reactor."""
    try:
        text, _digest = await fetch()
    except NotFound:
        return None
    except (NetworkError, ProtocolError, ServerRefused):
        cached = await run(read_cached, state_dir)
        return cached if isinstance(cached, EngagementRules) else None
    rules = None if text is None else EngagementRules.parse(text)
    cached = await run(read_cached, state_dir)
    known = cached.digest if isinstance(cached, EngagementRules) else None
    if known != (None if rules is None else rules.digest):
        await run(write_cached, state_dir, rules)
    return rules
