"""The copy's view of the log as it arrives over HTTP (docs/protocol.md, "History check").

``GET .../changes`` takes ``store``, ``generation`` and ``hash`` (the record token at ``since``)
as query arguments; ``POST .../commit`` takes the same in a ``history`` object (with ``seq``).
Each is optional: a copy sends what it knows. The store checks them (``storage/history.py``)
and a mismatch, or ``since`` past the head, answers 409 ``history_diverged``.
"""

from __future__ import annotations

import re

from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.jsonvalue import JSONDict
from smartsyncd.core.model import HistoryCheck
from smartsyncd.web.bodies import expect_object, get_int, query_int, query_str

_HASH = re.compile(r"[0-9a-f]{64}")
_STORE = re.compile(r"[0-9A-Za-z-]{1,64}")


def _hash(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise BadRequest(f"{field!r} must be 64 lowercase hex digits (a record token)", field=field)
    return value


def _store(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _STORE.fullmatch(value):
        raise BadRequest(f"{field!r} must be a store id (letters, digits, '-')", field=field)
    return value


def check_from_query(request: Request, since: int) -> HistoryCheck:
    """The check of a ``GET .../changes`` (always made: ``since`` past the head diverges)."""
    generation = query_int(request, "generation", -1, 1)
    return HistoryCheck(
        seq=since,
        hash=_hash(query_str(request, "hash"), "hash"),
        store=_store(query_str(request, "store"), "store"),
        generation=None if generation < 0 else generation,
    )


def check_from_body(obj: JSONDict) -> HistoryCheck | None:
    """The check of a commit body's optional ``history`` object."""
    raw = obj.get("history")
    if raw is None:
        return None
    h = expect_object(raw, "history")
    seq = get_int(h, "seq", "history.seq", minimum=0)
    assert seq is not None
    return HistoryCheck(
        seq=seq,
        hash=_hash(h.get("hash"), "history.hash"),
        store=_store(h.get("store"), "history.store"),
        generation=get_int(h, "generation", "history.generation", minimum=1, nullable=True, required=False),
    )
