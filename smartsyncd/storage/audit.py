"""Hash-chained records: the audit trail (append, read, verify) and the change log chain.

Every engagement has ``eng:<name>`` (grants, revokes, check-out, check-in, lock breaks,
finalize, reopen, retention, copy registration and abandon); events of no single engagement
(sign-ins) go to one ``global`` chain (``core.audit``); reads (downloads, exports, history
views) to ``read:<name>`` (``storage/readaudit``). ``audit_heads`` holds each chain's last
number and hash; appending updates that row first, which serializes appenders (a row lock on
PostgreSQL, the write lock on SQLite) so a chain never forks. ``chain_changes`` links the change
records a commit writes; ``verify_*`` recompute both chains. Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from smartsyncd.core.audit import (
    AUDIT_DOMAIN,
    CHANGE_DOMAIN,
    GENESIS,
    GLOBAL_CHAIN,
    ChainRecord,
    audit_fields,
    change_fields,
    detail_text,
    engagement_chain,
    link,
    record_hash,
    verify_chain,
)
from smartsyncd.storage.api import (
    AuditRecord,
    ChainReport,
)
from smartsyncd.storage.db import (
    Dialect,
    MetadataDB,
    engagement_name,
    ts,
)

# ------------------------------------------------------------------------------ audit chain


def append_audit(
    db: MetadataDB,
    chain: str,
    event: str,
    actor: str,
    now: datetime,
    engagement: str | None,
    detail: dict[str, Any],
) -> int:
    """Append one event to ``chain`` (inside the caller's write transaction); returns its seq."""
    binary = db.dialect.binary
    db.execute(
        "INSERT INTO audit_heads (chain, seq, record_hash) VALUES (?, 0, ?) ON CONFLICT (chain) DO NOTHING",
        (chain, binary(GENESIS)),
    )
    db.execute("UPDATE audit_heads SET seq = seq + 1 WHERE chain = ?", (chain,))
    row = db.one("SELECT seq, record_hash FROM audit_heads WHERE chain = ?", (chain,))
    seq, prev = int(row[0]), bytes(row[1])
    at = ts(now)
    text = detail_text(detail)
    digest = record_hash(AUDIT_DOMAIN, prev, audit_fields(chain, seq, event, actor, at, engagement, text))
    db.execute(
        "INSERT INTO audit (chain, seq, event, actor, at, engagement, detail, prev_hash, record_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (chain, seq, event, actor, at, engagement, text, binary(prev), binary(digest)),
    )
    db.execute("UPDATE audit_heads SET record_hash = ? WHERE chain = ?", (binary(digest), chain))
    return seq


def audit_engagement(
    db: MetadataDB, engagement_id: int, event: str, actor: str, now: datetime, detail: dict[str, Any]
) -> None:
    name = engagement_name(db, engagement_id)
    append_audit(db, engagement_chain(name), event, actor, now, name, detail)


# ----------------------------------------------------------------------- change-log chain


def _change_row_fields(row: Sequence[Any]) -> list[Any]:
    """Fields of a changes row selected as ``_CHANGE_SELECT`` (content as stored blob; the
    file date and read-only attribute at 13 and 14 when selected, as ``_DATED_SELECT`` does)."""
    content = None if row[3] is None else bytes(row[3]).hex()
    mtime_ns = None if len(row) < 15 or row[13] is None else int(row[13])
    readonly = None if len(row) < 15 or row[14] is None else bool(row[14])
    return change_fields(
        int(row[0]), row[1], row[2], content, int(row[4]),
        None if row[5] is None else int(row[5]), row[6], row[7], row[8], row[9], row[10],
        mtime_ns, readonly,
    )


_CHANGE_COLUMNS = (
    "seq, path, kind, content, size, prev_seq, user_name, session_id, committed_at,"
    " conflict_of, batch, prev_hash, record_hash"
)
# as the table was at migration 2 (its backfill runs before the dates exist)
_CHANGE_SELECT = f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE engagement_id = ?"
_DATED_SELECT = f"SELECT {_CHANGE_COLUMNS}, mtime_ns, readonly FROM changes WHERE engagement_id = ?"


def chain_changes(
    db: MetadataDB, engagement_id: int, head: int, records: Sequence[Sequence[Any]]
) -> list[tuple[bytes, bytes]]:
    """(prev_hash, record_hash) for new change records (``change_fields`` lists) after ``head``."""
    prev = GENESIS
    if head > 0:
        row = db.one("SELECT record_hash FROM changes WHERE engagement_id = ? AND seq = ?", (engagement_id, head))
        if row is not None and row[0] is not None:
            prev = bytes(row[0])
    return link(CHANGE_DOMAIN, prev, records)


def backfill_change_hashes(conn: Any, dialect: Dialect) -> None:
    """Compute the chain of change records written before migration 2 (raw connection)."""
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM engagements ORDER BY id").fetchall()]
    for engagement_id in ids:
        rows = conn.execute(dialect.sql(_CHANGE_SELECT + " ORDER BY seq"), (engagement_id,)).fetchall()
        hashes = link(CHANGE_DOMAIN, GENESIS, [_change_row_fields(r) for r in rows])
        for r, (prev, digest) in zip(rows, hashes, strict=True):
            conn.execute(
                dialect.sql("UPDATE changes SET prev_hash = ?, record_hash = ? WHERE engagement_id = ? AND seq = ?"),
                (dialect.binary(prev), dialect.binary(digest), engagement_id, int(r[0])),
            )


# ------------------------------------------------------------------------ audit read, verify


def audit_records(db: MetadataDB, engagement_id: int) -> list[AuditRecord]:
    """The engagement's change records and audit events, merged by time (for export)."""

    def tx() -> list[AuditRecord]:
        name = engagement_name(db, engagement_id)
        out: list[AuditRecord] = []
        for r in db.all(_DATED_SELECT + " ORDER BY seq", (engagement_id,)):
            detail = {"path": r[1], "content": None if r[3] is None else bytes(r[3]).hex(), "size": int(r[4]),
                      "prev_seq": r[5], "session": r[7], "conflict_of": r[9], "batch": r[10]}
            if r[13] is not None or r[14] is not None:
                detail.update(mtime=r[13], readonly=None if r[14] is None else bool(r[14]))
            out.append(AuditRecord(
                chain=f"changes:{name}", seq=int(r[0]), event=r[2], actor=r[6],
                time=datetime.fromisoformat(r[8]), engagement=name, detail=detail,
                record_hash="" if r[12] is None else bytes(r[12]).hex(),
            ))
        for r in db.all(
            "SELECT chain, seq, event, actor, at, engagement, detail, record_hash FROM audit"
            " WHERE chain IN (?, ?) ORDER BY chain, seq",
            (engagement_chain(name), f"read:{name}"),  # events, and reads (storage/readaudit)
        ):
            out.append(AuditRecord(
                chain=r[0], seq=int(r[1]), event=r[2], actor=r[3], time=datetime.fromisoformat(r[4]),
                engagement=r[5], detail=json.loads(r[6]), record_hash=bytes(r[7]).hex(),
            ))
        out.sort(key=lambda a: (a.time, a.chain, a.seq))
        return out

    return db.read(tx)


def _audit_chain_records(db: MetadataDB, chain: str) -> Iterable[ChainRecord]:
    for r in db.all(
        "SELECT seq, event, actor, at, engagement, detail, prev_hash, record_hash FROM audit WHERE chain = ? ORDER BY seq",
        (chain,),
    ):
        yield ChainRecord(
            seq=int(r[0]),
            fields=audit_fields(chain, int(r[0]), r[1], r[2], r[3], r[4], r[5]),
            prev_hash=None if r[6] is None else bytes(r[6]),
            record_hash=None if r[7] is None else bytes(r[7]),
        )


def _verify_audit_chain(db: MetadataDB, chain: str) -> ChainReport:
    row = db.one("SELECT seq FROM audit_heads WHERE chain = ?", (chain,))
    head = 0 if row is None else int(row[0])
    result = verify_chain(AUDIT_DOMAIN, _audit_chain_records(db, chain), head)
    return ChainReport(chain, result.records, result.head_hash.hex(),
                       None if result.problem is None else f"audit {chain} {result.problem}")


def verify_engagement(db: MetadataDB, engagement_id: int) -> list[ChainReport]:
    def tx() -> list[ChainReport]:
        name = engagement_name(db, engagement_id)
        head = db.engagement_head(engagement_id)
        records = (
            ChainRecord(
                seq=int(r[0]), fields=_change_row_fields(r),
                prev_hash=None if r[11] is None else bytes(r[11]),
                record_hash=None if r[12] is None else bytes(r[12]),
            )
            for r in db.all(_DATED_SELECT + " ORDER BY seq", (engagement_id,))
        )
        result = verify_chain(CHANGE_DOMAIN, records, head)
        changes = ChainReport(
            f"changes:{name}", result.records, result.head_hash.hex(),
            None if result.problem is None else f"change log of {name}: {result.problem}",
        )
        reports = [changes, _verify_audit_chain(db, engagement_chain(name))]
        if db.one("SELECT 1 FROM audit_heads WHERE chain = ?", (f"read:{name}",)) is not None:
            reports.append(_verify_audit_chain(db, f"read:{name}"))
        return reports

    return db.read(tx)


def verify_global(db: MetadataDB) -> ChainReport:
    return db.read(lambda: _verify_audit_chain(db, GLOBAL_CHAIN))
