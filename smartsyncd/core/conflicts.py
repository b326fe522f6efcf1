"""Conflict copy names: ``<stem> (conflict <user> <YYYY-MM-DD> <HHMM>)<ext>`` beside the file.

The name is always a valid path (docs/protocol.md, "Path rules"): the user name is sanitized
and the stem shortened when the segment or the whole path would grow past its byte limit.
``conflict_origin`` reads a name back: the file a conflict copy was made beside (the server
makes review items of the copies a client made, docs/workflow.md "Conflict review").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime

from smartsyncd.core.paths import (
    _BIDI_RE,
    _IGNORABLE_RE,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    name_of,
    normalize_path,
    parent_of,
)

MAX_USER_CHARS = 64
_MAX_ATTEMPTS = 100_000
_UNSAFE_USER = re.compile('[\x00-\x1f\x7f/\\\\:*?"<>|]')
_COPY_NAME = re.compile(r"(?P<stem>.+) \(conflict .+ \d{4}-\d{2}-\d{2} \d{4}(?: \d+)?\)(?P<ext>[^/()]*)")
LABEL_MARK = " (conflict "  # in every conflict copy's name: a cheap test before the pattern


def _sanitize_user(user: str) -> str:
    clean = _UNSAFE_USER.sub("_", unicodedata.normalize("NFC", user))
    # the path rules refuse bidirectional controls and invisible characters: drop them here
    clean = _IGNORABLE_RE.sub("", _BIDI_RE.sub("", clean)).strip()
    return clean[:MAX_USER_CHARS] or "_"


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0:  # "noext", ".profile"
        return name, ""
    return name[:dot], name[dot:]


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def conflict_name(path: str, user: str, when: datetime, taken: Callable[[str], bool]) -> str:
    """The first free conflict copy path for ``path`` (``taken`` says which are used).

    ``when`` must be timezone-aware; the name shows it in UTC.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("conflict_name needs an aware datetime")
    folder, name = parent_of(path), name_of(path)
    stem, ext = _split_ext(name)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H%M")
    label = f"conflict {_sanitize_user(user)} {stamp}"
    prefix = f"{folder}/" if folder else ""
    for attempt in range(1, _MAX_ATTEMPTS):
        tail = f" ({label}{'' if attempt == 1 else f' {attempt}'}){ext}"
        tail_bytes = len(tail.encode("utf-8"))
        budget = min(
            MAX_SEGMENT_BYTES - tail_bytes,
            MAX_PATH_BYTES - len(prefix.encode("utf-8")) - tail_bytes,
        )
        if budget < 1 and ext:
            # a pathological extension leaves no room: treat it as part of the stem
            stem, ext = name, ""
            tail = f" ({label}{'' if attempt == 1 else f' {attempt}'})"
            tail_bytes = len(tail.encode("utf-8"))
            budget = min(
                MAX_SEGMENT_BYTES - tail_bytes,
                MAX_PATH_BYTES - len(prefix.encode("utf-8")) - tail_bytes,
            )
        short = _truncate_utf8(stem, budget).rstrip(" ") or "_"
        candidate = normalize_path(prefix + short + tail)
        if not taken(candidate):
            return candidate
    raise ValueError(f"no free conflict name for {path!r}")


def conflict_origin(path: str) -> str | None:
    """The path a conflict copy named ``path`` was made beside, or None for another name.
    (A stem shortened to fit the length limits gives a path that need not exist.)"""
    if LABEL_MARK not in path:
        return None
    folder, name = parent_of(path), name_of(path)
    match = _COPY_NAME.fullmatch(name)
    if match is None:
        return None
    origin = match["stem"] + match["ext"]
    return f"{folder}/{origin}" if folder else origin
