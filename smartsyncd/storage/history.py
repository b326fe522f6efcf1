"""The store's identity and generation, and the check that a copy's history is this log's.

A copy remembers the store identity and generation it synced with, its last seq, and the record
token at that seq (the record's hash in the engagement's change chain, ``core/audit.py``).
After a restore or rollback of the store the log may be shorter, or hold other records under
the same numbers (colleagues committed after the restore): a copy asking only for changes after
its own last seq would then skip them and never send its own newer files. ``check_history``
proves the copy's view against the log (inside the caller's transaction) and raises
``HistoryDiverged`` when it does not hold; the copy then reconciles (docs/reliability.md).

A folder copy-back restores ``store_meta`` too (same identity and generation): the record token
is what catches it. ``smartsync-admin restore`` also bumps the generation, so every copy
reconciles once even if the restored log happens to match its token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from smartsyncd.core.errors import HistoryDiverged
from smartsyncd.core.model import HistoryCheck

if TYPE_CHECKING:
    from smartsyncd.storage.db import MetadataDB


def store_identity(db: MetadataDB) -> tuple[str, int]:
    """(store id, generation) of this store."""
    row = db.one("SELECT store_id, generation FROM store_meta")
    if row is None:  # migration 3 always makes the row; a hand-edited database may lack it
        raise RuntimeError("store_meta is empty: run smartsync-admin fsck / db upgrade")
    return str(row[0]), int(row[1])


def bump_generation(db: MetadataDB) -> tuple[str, int]:
    """Start a new generation (after a restore or rollback); returns the new identity."""

    def tx() -> tuple[str, int]:
        db.execute("UPDATE store_meta SET generation = generation + 1")
        return store_identity(db)

    return db.write(tx)


def record_token(db: MetadataDB, engagement_id: int, seq: int) -> str | None:
    """The record token (chain hash, hex) of the change at ``seq``; None for seq 0 or none."""
    if seq <= 0:
        return None
    row = db.one("SELECT record_hash FROM changes WHERE engagement_id = ? AND seq = ?", (engagement_id, seq))
    return None if row is None or row[0] is None else bytes(row[0]).hex()


def check_history(
    db: MetadataDB, engagement_id: int, head: int, check: HistoryCheck, identity: tuple[str, int] | None = None
) -> None:
    """Raise ``HistoryDiverged`` unless ``check`` describes a prefix of this engagement's log.

    ``head`` is the engagement's head read in the same transaction; ``identity`` the store's
    (read here when None)."""
    check_view(
        check, identity if identity is not None else store_identity(db), head,
        lambda seq: record_token(db, engagement_id, seq),
    )


def check_view(
    check: HistoryCheck, identity: tuple[str, int], head: int, token_at: Callable[[int], str | None]
) -> None:
    """``check_history`` given the store's identity, the head, and the record token lookup
    (no database: ``smartsyncd.testing.memory_store`` uses it too)."""
    store, generation = identity
    details = {"store": store, "generation": generation, "head": head}
    if check.store is not None and check.store != store:
        raise HistoryDiverged("this is another store than the copy synced with", reason="store", **details)
    if check.generation is not None and check.generation != generation:
        raise HistoryDiverged(
            f"the store was restored or rolled back (generation {generation}, the copy synced with "
            f"{check.generation})", reason="generation", **details,
        )
    if check.seq > head:
        raise HistoryDiverged(
            f"the copy has synced to seq {check.seq} but the log ends at {head} (restored?)",
            reason="head", **details,
        )
    if check.hash is None or check.seq == 0:
        return
    if token_at(check.seq) != check.hash:
        raise HistoryDiverged(
            f"the log holds another record at seq {check.seq} than the copy synced (restored?)",
            reason="record", **details,
        )
