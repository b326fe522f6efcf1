"""The engagement's server-published ignore rules as the client sees them: kept in the copy's
state folder and fetched (with the kept set's ETag: an unchanged set costs a bodiless 304) at a
clone, when none were kept, or when the copy report's answer names another ETag
(``SyncCopy._rules_moved``); a failed fetch falls back to the last rules known rather than
reading as "no rules", and an older server without the route means none."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.web.http import NOT_MODIFIED

from smartsyncd.client.errors import NetworkError, NotFound, ProtocolError, ServerRefused
from smartsyncd.client.localfs import atomic_write_bytes
from smartsyncd.client.osfs import read_small_file
from smartsyncd.client.transport import Reply, decode_json
from smartsyncd.core.ignore import MAX_RULES_BYTES, EngagementRules, rules_etag

CACHE_NAME = "engagement-ignore.json"
CACHE_LIMIT = 6 * MAX_RULES_BYTES + 4096  # the rules as JSON: \u00XX escapes at worst


@dataclass(frozen=True)
class RulesAnswer:
    """The server's answer to "the engagement's rules, unless still ``etag``": ``changed``
    False for a 304 (the set named is current), else ``text`` (None: the engagement has none)."""

    changed: bool
    text: str | None = None


UNCHANGED = RulesAnswer(changed=False)
FetchRules = Callable[[str | None], Awaitable[RulesAnswer]]


def parse_rules_answer(reply: Reply) -> RulesAnswer:
    """A GET .../ignore reply as a :class:`RulesAnswer` (a 304, or the JSON body checked)."""
    if reply.status == NOT_MODIFIED:
        return UNCHANGED
    data = decode_json(reply)
    text = data.get("rules") if isinstance(data, dict) else 0
    if text is not None and not isinstance(text, str):
        raise ProtocolError("ignore rules: 'rules' must be text or null")
    return RulesAnswer(changed=True, text=text)


def read_cache(state_dir: Path) -> tuple[bool, EngagementRules | None]:
    """(whether a set was kept, the set: None when the engagement had none) (blocking)."""
    try:
        data = json.loads(read_small_file(state_dir / CACHE_NAME, CACHE_LIMIT))
    except (OSError, ValueError):
        return False, None
    text = data.get("rules") if isinstance(data, dict) else 0
    if text is None:
        return True, None
    return (True, EngagementRules.parse(text)) if isinstance(text, str) else (False, None)


def read_cached(state_dir: Path) -> EngagementRules | None:
    """The rules last fetched for this copy (blocking), or None when none were kept."""
    return read_cache(state_dir)[1]


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
    """The engagement's rules for this sync: fetched (conditionally, on the kept set's ETag)
    and kept; on a network or server failure the kept ones; None on an older server that has no
    such route (404). ``run`` calls a blocking function off the reactor."""
    kept = await run(read_cache, state_dir)
    assert isinstance(kept, tuple)
    found, cached = kept
    try:
        answer = await fetch(rules_etag(cached.digest if cached else None) if found else None)
    except NotFound:
        return None
    except (NetworkError, ProtocolError, ServerRefused):
        return cached
    if not answer.changed:
        return cached
    rules = None if answer.text is None else EngagementRules.parse(answer.text)
    if not found or (cached.digest if cached else None) != (rules.digest if rules else None):
        await run(write_cached, state_dir, rules)
    return rules


async def first_rules(
    fetch: FetchRules,
) -> tuple[EngagementRules | None, bool]:
    """A new copy's rules, asked without an ETag (beside its snapshot: a clone's writes
    depend on them): ``(rules, True)`` from an answer, to be kept (``write_cached``) once
    the copy's state exists; ``(None, False)`` where ``current_rules`` with nothing kept
    would keep nothing (an older server without the route, or no answer)."""
    try:
        answer = await fetch(None)
    except (NotFound, NetworkError, ProtocolError, ServerRefused):
        return None, False
    if not answer.changed:
        return None, False
    return (None if answer.text is None else EngagementRules.parse(answer.text)), True

