"""Blocked principals (``user disable|remove`` for any backend) and claiming by-name grants.

Synchronous functions over a ``MetadataDB`` (``SqlServerStore`` runs them on its DB thread).
A block keys on the principal id (``core.principals``), so disabling the directory account
``ad:S-1-5-21-...`` leaves a local account of the same name alone, and it survives a rename in
the directory. Blocking ends the principal's sessions in the same transaction, so its next
request gets 401 on every daemon; ``accounts.create_session`` refuses a blocked principal.
Changes are chained in the global audit trail (actor ``smartsync-admin``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from smartsyncd.core.audit import GLOBAL_CHAIN, engagement_chain
from smartsyncd.core.model import ROLES
from smartsyncd.core.principals import pending_principal
from smartsyncd.storage.api import PrincipalBlock
from smartsyncd.storage.audit import append_audit
from smartsyncd.storage.db import MetadataDB, checked_text, dt, ts

ADMIN = "smartsync-admin"


def _block(row: Any) -> PrincipalBlock:
    return PrincipalBlock(principal=row[0], display_name=row[1], state=row[2], since=dt(row[3]))


def block_principal(db: MetadataDB, block: PrincipalBlock) -> None:
    """Disable or remove ``block.principal``: sessions end; "removed" also drops its user
    grants (and by-name grants of its display name that no sign-in claimed yet)."""
    checked_text(block.principal, "principal")
    checked_text(block.display_name, "display name")
    if block.state not in ("disabled", "removed"):
        raise ValueError(f"unknown block state {block.state!r}")

    def tx() -> None:
        db.execute(
            "INSERT INTO principal_blocks (principal, display_name, state, since)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (principal) DO UPDATE SET"
            " display_name = excluded.display_name, state = excluded.state",
            (block.principal, block.display_name, block.state, ts(block.since)),
        )
        # sessions opened before schema 5 carry ``name:<name>`` until their next refresh
        ended = db.execute(
            "DELETE FROM sessions WHERE principal IN (?, ?)",
            (block.principal, pending_principal(block.display_name)),
        ).rowcount
        dropped = 0
        if block.state == "removed":
            for principal in (block.principal, pending_principal(block.display_name)):
                dropped += db.execute(
                    "DELETE FROM grants WHERE kind = 'user' AND principal = ?", (principal,)
                ).rowcount
        append_audit(
            db, GLOBAL_CHAIN, "user_" + block.state, ADMIN, block.since, None,
            {"principal": block.principal, "display_name": block.display_name,
             "sessions_ended": int(ended), "grants_dropped": int(dropped)},
        )

    db.write(tx)


def unblock_principal(db: MetadataDB, principal: str, now: datetime) -> bool:
    def tx() -> bool:
        cur = db.execute("DELETE FROM principal_blocks WHERE principal = ?", (principal,))
        if cur.rowcount != 1:
            return False
        append_audit(db, GLOBAL_CHAIN, "user_enabled", ADMIN, now, None, {"principal": principal})
        return True

    return db.write(tx)


def principal_block(db: MetadataDB, principal: str) -> PrincipalBlock | None:
    row = db.one(
        "SELECT principal, display_name, state, since FROM principal_blocks WHERE principal = ?",
        (principal,),
    )
    return None if row is None else _block(row)


def list_principal_blocks(db: MetadataDB) -> list[PrincipalBlock]:
    rows = db.all(
        "SELECT principal, display_name, state, since FROM principal_blocks ORDER BY display_name"
    )
    return [_block(r) for r in rows]


def claim_name_grants(db: MetadataDB, principal: str, name: str, now: datetime) -> int:
    """Move the user grants kept by name (``name:<name>``, from before schema 5) to the
    directory account ``principal`` now known to carry that name. Where both exist the
    stronger role stays. A read finds nothing to do on almost every sign-in."""
    pending = pending_principal(name)
    if db.one("SELECT 1 FROM grants WHERE kind = 'user' AND principal = ?", (pending,)) is None:
        return 0

    def tx() -> int:
        rows = db.all(
            "SELECT g.engagement_id, e.name, g.role FROM grants g"
            " JOIN engagements e ON e.id = g.engagement_id"
            " WHERE g.kind = 'user' AND g.principal = ?",
            (pending,),
        )
        for engagement_id, engagement, role in rows:
            have = db.one(
                "SELECT role FROM grants WHERE engagement_id = ? AND kind = 'user'"
                " AND principal = ?",
                (engagement_id, principal),
            )
            if have is None or ROLES.index(role) > ROLES.index(have[0]):
                db.execute(
                    "INSERT INTO grants (engagement_id, kind, principal, display_name, role)"
                    " VALUES (?, 'user', ?, ?, ?) ON CONFLICT (engagement_id, kind, principal)"
                    " DO UPDATE SET role = excluded.role",
                    (engagement_id, principal, name, role),
                )
            db.execute(
                "DELETE FROM grants WHERE engagement_id = ? AND kind = 'user' AND principal = ?",
                (engagement_id, pending),
            )
            append_audit(
                db, engagement_chain(engagement), "grant_claimed", name, now, engagement,
                {"from": pending, "principal": principal, "role": role},
            )
        return len(rows)

    return db.write(tx)
