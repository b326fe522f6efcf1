"""gc: drop what no retained version needs (``gc_engagement``), and the pack files after.

A version is retained when the engagement keeps everything (``retention_days`` NULL), when it is
the current version at its path, when it is a conflict copy, or when the record that replaced it
is younger than the retention period. Everything else is collectable. In one write transaction
that holds the engagement lock (so no commit interleaves): manifests of no retained content are
deleted, then chunk rows no retained manifest names (chunks in packs younger than ``grace`` are
kept: an upload whose commit has not arrived yet), then pack rows with no chunk left. Packs are
write-once and are only ever dropped whole: a pack with one live chunk stays (its dead chunks'
rows are gone, so they are simply unreachable bytes until every chunk of the pack is dead). The
files of dropped packs are deleted after the transaction commits (``drop_packs``, file pool); a
crash in between leaves orphan files, which the next gc removes once they are older than
``grace`` (the same sweep removes packs of uploads that crashed before their rows were written).
Finalized engagements and engagements under legal hold are never collected, and replaced
versions younger than the minimum retention period are kept (``storage/retention``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from smartsyncd.core import manifest
from smartsyncd.storage.api import (
    GcReport,
)
from smartsyncd.storage.audit import audit_engagement
from smartsyncd.storage.db import (
    MetadataDB,
    lock_engagement,
    ts,
)
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.retention import effective_retention
from smartsyncd.storage.workflow import engagement_status

# --------------------------------------------------------------------------------------- gc


def retained_contents(
    rows: Iterable[Sequence[Any]], retention_days: int | None, now: datetime
) -> set[bytes]:
    """Contents some retained version needs. ``rows``: (seq, path, kind, content, committed_at,
    conflict_of) ordered by path, then seq. Pure (tested directly)."""
    cutoff = None if retention_days is None else ts(now - timedelta(days=retention_days))
    keep: set[bytes] = set()
    previous: Sequence[Any] | None = None

    def decide(record: Sequence[Any], replaced_at: str | None) -> None:
        if record[2] != "put" or record[3] is None:
            return
        if cutoff is None or replaced_at is None or record[5] is not None or replaced_at >= cutoff:
            keep.add(bytes(record[3]))

    for row in rows:
        if previous is not None:
            decide(previous, row[4] if row[1] == previous[1] else None)
        previous = row
    if previous is not None:
        decide(previous, None)
    return keep


def gc_engagement(
    db: MetadataDB, engagement_id: int, now: datetime, grace: timedelta, firm_min: int | None = None
) -> tuple[GcReport, list[str], set[str]]:
    """Drop what no retained version needs (one transaction). Returns the report, the packs
    whose files may now be deleted, and every pack still recorded (for the orphan sweep)."""

    def tx() -> tuple[GcReport, list[str], set[str]]:
        lock_engagement(db, engagement_id)
        status = engagement_status(db, engagement_id)
        recorded = {str(r[0]) for r in db.all("SELECT id FROM packs WHERE engagement_id = ?", (engagement_id,))}
        if status.finalized:
            return GcReport(status.name, skipped="finalized: nothing is collected"), [], recorded
        if status.legal_hold is not None:  # issue 20: a hold blocks every deletion
            return GcReport(status.name, skipped=f"legal hold ({status.legal_hold}): nothing is collected"), [], recorded
        retention_days = effective_retention(status, firm_min)  # never below the minimum
        rows = db.all(
            "SELECT seq, path, kind, content, committed_at, conflict_of FROM changes"
            " WHERE engagement_id = ? ORDER BY path, seq",
            (engagement_id,),
        )
        keep = retained_contents(rows, retention_days, now)
        binary = db.dialect.binary
        live: set[bytes] = set()
        dead_manifests: list[bytes] = []
        for content, body in db.all("SELECT content, body FROM manifests WHERE engagement_id = ?", (engagement_id,)):
            content = bytes(content)
            if content in keep:
                live.update(bytes.fromhex(c.hash) for c in manifest.decode_binary(bytes(body)))
            else:
                dead_manifests.append(content)
        for content in dead_manifests:
            db.execute("DELETE FROM manifests WHERE engagement_id = ? AND content = ?", (engagement_id, binary(content)))
        young = ts(now - grace)
        candidates = db.all(
            "SELECT c.hash, c.pack_id, c.stored_size FROM chunks c JOIN packs p ON p.engagement_id = c.engagement_id"
            " AND p.id = c.pack_id WHERE c.engagement_id = ? AND p.created_at < ?",
            (engagement_id, young),
        )
        removed = 0
        for chunk_hash, _pack, _stored in candidates:
            if bytes(chunk_hash) not in live:
                db.execute("DELETE FROM chunks WHERE engagement_id = ? AND hash = ?", (engagement_id, binary(bytes(chunk_hash))))
                removed += 1
        empty = [
            (str(r[0]), int(r[1]))
            for r in db.all(
                "SELECT p.id, p.size FROM packs p WHERE p.engagement_id = ? AND p.created_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM chunks c WHERE c.engagement_id = p.engagement_id AND c.pack_id = p.id)",
                (engagement_id, young),
            )
        ]
        for pack_id, _size in empty:
            db.execute("DELETE FROM packs WHERE engagement_id = ? AND id = ?", (engagement_id, pack_id))
        report = GcReport(
            status.name,
            manifests_removed=len(dead_manifests),
            chunks_removed=removed,
            packs_removed=len(empty),
            bytes_freed=sum(size for _, size in empty),
        )
        if removed or dead_manifests:
            audit_engagement(
                db, engagement_id, "gc", "smartsync-admin", now,
                {"retention_days": retention_days, "manifests": len(dead_manifests),
                 "chunks": removed, "packs": len(empty)},
            )
        return report, [p for p, _ in empty], recorded - {p for p, _ in empty}

    return db.write(tx)


def drop_packs(
    packs: PackStore, engagement_id: int, dead: Sequence[str], recorded: set[str], cutoff: float,
    gc_started: float,
) -> int:
    """Delete the files of dropped packs, then pack files no row names that are older than
    ``cutoff`` (a crashed upload or gc); returns how many orphans went. Blocking (file pool).

    A dropped pack's file written at or after ``gc_started`` is kept: packs are named by their
    records, so an upload of the same chunks in the same order, right after gc dropped them,
    writes a new file under the same name and records fresh rows for it. (The rows gc dropped
    belonged to a file written before they were committed, so before gc began.)"""
    for name in dead:
        path = packs.path_for(engagement_id, name)
        try:
            if os.stat(path).st_mtime >= gc_started:
                continue
            os.unlink(path)
        except FileNotFoundError:
            pass
    root = packs.engagement_dir(engagement_id)
    orphans = 0
    for folder, _dirs, files in os.walk(root):
        for file_name in files:
            if not file_name.endswith(".pack"):
                continue
            name = file_name[: -len(".pack")]
            full = os.path.join(folder, file_name)
            if name not in recorded and name not in dead and os.stat(full).st_mtime < cutoff:
                os.unlink(full)
                orphans += 1
    return orphans

