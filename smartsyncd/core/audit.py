"""The tamper-evident hash chains of the change log and the audit trail (pure).

Every record carries ``prev_hash`` (the ``record_hash`` of the record before it in its chain;
32 zero bytes for the first) and ``record_hash`` = BLAKE3-256 of a domain tag, ``prev_hash``
and a canonical encoding of the record's fields. Editing a field, removing a record or swapping
two breaks the chain at that point; ``verify_chain`` names the first record that does not fit.

Chains:
- the change log of an engagement (one record per change, ``seq`` 1..head): fields
  ``change_fields`` in this order (a put's file date and read-only attribute last, when known);
- the audit trail of an engagement (``eng:<name>``: grants, revokes, lock check-outs, check-ins
  and breaks, finalize, reopen, retention changes, copy abandon);
- the global audit trail (``global``): sign-ins and other events of no one engagement.

The canonical encoding is compact JSON of a list (field order fixed here, UTF-8, no escaping of
non-ASCII), so it is stable across Python versions and easy to re-implement for a reviewer.
A chain only shows that records were changed *without* recomputing every later hash: keep the
head hash that ``audit verify`` prints (or an export) outside the server to pin the history.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import blake3

GENESIS = bytes(32)
CHANGE_DOMAIN = b"smartsync-change-v1\n"
AUDIT_DOMAIN = b"smartsync-audit-v1\n"
GLOBAL_CHAIN = "global"


def engagement_chain(name: str) -> str:
    """The audit chain key of an engagement's events."""
    return f"eng:{name}"


# what json.dumps(..., ensure_ascii=False) writes for a string (the C version where available)
_json_string = json.encoder.encode_basestring


def canonical(fields: Sequence[Any]) -> bytes:
    """Compact JSON of the list of fields, UTF-8, non-ASCII unescaped.

    Records are lists of strings, integers and nulls: those are written here directly, byte for
    byte what ``json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))`` writes
    (a 10,000-change commit hashes 10,000 records; building a JSON encoder per record was most
    of the chain's cost). Anything else goes through ``json.dumps`` itself.
    """
    parts: list[str] = []
    for value in fields:
        kind = type(value)
        if kind is str:
            parts.append(_json_string(value))
        elif kind is int:
            parts.append(int.__repr__(value))
        elif value is None:
            parts.append("null")
        else:
            return json.dumps(list(fields), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return ("[" + ",".join(parts) + "]").encode("utf-8")


def record_hash(domain: bytes, prev_hash: bytes, fields: Sequence[Any]) -> bytes:
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    h = blake3.blake3(domain)
    h.update(prev_hash)
    h.update(canonical(fields))
    return h.digest()


def change_fields(
    seq: int,
    path: str,
    kind: str,
    content: str | None,
    size: int,
    prev_seq: int | None,
    user: str,
    session: str | None,
    committed_at: str,
    conflict_of: str | None,
    batch: str | None,
    mtime_ns: int | None = None,
    readonly: bool | None = None,
) -> list[Any]:
    """The hashed fields of one change record (``committed_at`` exactly as stored). A put's
    file date and read-only attribute follow when either is known (issue 16); a record
    without them hashes exactly as records written before they existed."""
    fields = [seq, path, kind, content, size, prev_seq, user, session, committed_at, conflict_of, batch]
    if mtime_ns is not None or readonly is not None:
        fields += [mtime_ns, readonly]
    return fields


def audit_fields(
    chain: str, seq: int, event: str, actor: str, at: str, engagement: str | None, detail: str
) -> list[Any]:
    """The hashed fields of one audit record (``detail`` is the stored canonical JSON text)."""
    return [chain, seq, event, actor, at, engagement, detail]


def detail_text(detail: dict[str, Any]) -> str:
    """Canonical JSON of an event's details (sorted keys), stored and hashed as text."""
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def link(domain: bytes, prev_hash: bytes, records: Iterable[Sequence[Any]]) -> list[tuple[bytes, bytes]]:
    """(prev_hash, record_hash) for each record in order, continuing from ``prev_hash``."""
    out = []
    for fields in records:
        h = record_hash(domain, prev_hash, fields)
        out.append((prev_hash, h))
        prev_hash = h
    return out


@dataclass(frozen=True)
class ChainRecord:
    """One stored record as read back for verification."""

    seq: int
    fields: Sequence[Any]
    prev_hash: bytes | None
    record_hash: bytes | None


@dataclass(frozen=True)
class ChainProblem:
    """The first record that does not fit (``seq``) and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.reason}"


@dataclass(frozen=True)
class ChainResult:
    records: int
    head_hash: bytes
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(domain: bytes, records: Iterable[ChainRecord], expected_head: int) -> ChainResult:
    """Check records read in ``seq`` order: numbered 1..expected_head without gaps, each
    ``prev_hash`` equal to the previous ``record_hash``, each ``record_hash`` recomputed.

    The first mismatch is reported: an edited record fails its own hash; a removed one leaves a
    gap (or, if renumbered, a broken link); reordered ones break the links.
    """
    prev = GENESIS
    expected = 1
    count = 0
    for r in records:
        count += 1
        if r.seq != expected:
            if r.seq > expected:
                return ChainResult(count - 1, prev, ChainProblem(expected, f"missing (next stored record is {r.seq})"))
            return ChainResult(count - 1, prev, ChainProblem(r.seq, f"out of order or repeated (expected {expected})"))
        if r.prev_hash is None or r.record_hash is None:
            return ChainResult(count - 1, prev, ChainProblem(r.seq, "has no hash (written outside smartsyncd?)"))
        if bytes(r.prev_hash) != prev:
            return ChainResult(
                count - 1, prev, ChainProblem(r.seq, "prev_hash does not match the record before it (removed or reordered)")
            )
        if record_hash(domain, prev, r.fields) != bytes(r.record_hash):
            return ChainResult(count - 1, prev, ChainProblem(r.seq, "contents do not match its hash (edited)"))
        prev = bytes(r.record_hash)
        expected += 1
    if expected - 1 != expected_head:
        if expected - 1 < expected_head:
            return ChainResult(count, prev, ChainProblem(expected, f"missing (the chain head says {expected_head} records)"))
        return ChainResult(count, prev, ChainProblem(expected_head + 1, f"beyond the chain head {expected_head} (appended outside smartsyncd?)"))
    return ChainResult(count, prev, None)
