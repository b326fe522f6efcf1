"""Branch offices' credentials and carry lists in the metadata database (issue 18).

``branches`` (migration 73) holds one row per branch office: its name and the SHA-256 of its
secret (``auth/branchcred.py``; the secret itself is printed once and never stored).
``branch_carry`` names the engagements a branch carries: its daemon prefetches their chunks
(``service/prefetch.py``). Both live in the central database, so they replicate to every
branch's standby by themselves: a branch reads its own carry list there, by the hash of the
secret in its credential file, and needs no name of its own in its config.

Each change (add, rotate, remove, carry, drop) is an event in the ``global`` audit chain; a
carry or drop is also one in the engagement's chain. The functions block: call them through the
store's ``run_db`` (writes) or ``run_read`` (reads, which also work on a standby).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from smartsyncd.core.audit import GLOBAL_CHAIN, engagement_chain
from smartsyncd.core.errors import BadRequest, NotFound
from smartsyncd.core.model import ChunkRef
from smartsyncd.storage.audit import append_audit
from smartsyncd.storage.chunks import get_manifests
from smartsyncd.storage.db import MetadataDB, dt, dt_or_none, hex_or_none, ts

BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class BranchRecord:
    name: str
    created_by: str
    created_at: datetime
    rotated_at: datetime | None
    carries: tuple[str, ...]  # engagement names, sorted


@dataclass(frozen=True)
class CarriedEngagement:
    id: int
    name: str
    head: int


def check_branch_name(name: str) -> str:
    if not BRANCH_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid branch name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - starting"
            " with a letter or digit"
        )
    return name


def principal(name: str) -> str:
    """How a branch appears in the audit trail and the logs: ``branch:NAME``."""
    return f"branch:{name}"


def add_branch(db: MetadataDB, name: str, secret_hash: str, actor: str, now: datetime) -> None:
    check_branch_name(name)

    def tx() -> None:
        if db.one("SELECT 1 FROM branches WHERE name = ?", (name,)) is not None:
            raise BadRequest(f"branch {name!r} exists already (a new secret: branch rotate {name})")
        db.execute(
            "INSERT INTO branches (name, secret_hash, created_by, created_at) VALUES (?, ?, ?, ?)",
            (name, secret_hash, actor, ts(now)),
        )
        append_audit(db, GLOBAL_CHAIN, "branch_add", actor, now, None, {"branch": name})

    db.write(tx)


def rotate_branch(db: MetadataDB, name: str, secret_hash: str, actor: str, now: datetime) -> None:
    """A new secret for ``name``: the old one stops working when this commits."""

    def tx() -> None:
        _require(db, name)
        db.execute(
            "UPDATE branches SET secret_hash = ?, rotated_at = ? WHERE name = ?",
            (secret_hash, ts(now), name),
        )
        append_audit(db, GLOBAL_CHAIN, "branch_rotate", actor, now, None, {"branch": name})

    db.write(tx)


def remove_branch(db: MetadataDB, name: str, actor: str, now: datetime) -> int:
    """Revoke the branch's credential and forget its carry list; returns how many it carried."""

    def tx() -> int:
        _require(db, name)
        carried = int(db.one("SELECT COUNT(*) FROM branch_carry WHERE branch = ?", (name,))[0])
        db.execute("DELETE FROM branch_carry WHERE branch = ?", (name,))
        db.execute("DELETE FROM branches WHERE name = ?", (name,))
        append_audit(db, GLOBAL_CHAIN, "branch_remove", actor, now, None, {"branch": name, "carried": carried})
        return carried

    return db.write(tx)


def set_carry(db: MetadataDB, name: str, engagement: str, carry: bool, actor: str, now: datetime) -> bool:
    """Carry (or drop) ``engagement`` at branch ``name``; False when nothing changed."""

    def tx() -> bool:
        _require(db, name)
        engagement_id = db._engagement_id(engagement)
        present = db.one(
            "SELECT 1 FROM branch_carry WHERE branch = ? AND engagement_id = ?", (name, engagement_id)
        ) is not None
        if present == carry:
            return False
        if carry:
            db.execute(
                "INSERT INTO branch_carry (branch, engagement_id, added_by, added_at) VALUES (?, ?, ?, ?)",
                (name, engagement_id, actor, ts(now)),
            )
        else:
            db.execute("DELETE FROM branch_carry WHERE branch = ? AND engagement_id = ?", (name, engagement_id))
        event = "branch_carry" if carry else "branch_drop"
        detail = {"branch": name, "engagement": engagement}
        append_audit(db, GLOBAL_CHAIN, event, actor, now, engagement, detail)
        append_audit(db, engagement_chain(engagement), event, actor, now, engagement, detail)
        return True

    return db.write(tx)


def list_branches(db: MetadataDB) -> list[BranchRecord]:
    def tx() -> list[BranchRecord]:
        carried: dict[str, list[str]] = {}
        for branch, engagement in db.all(
            "SELECT c.branch, e.name FROM branch_carry c JOIN engagements e ON e.id = c.engagement_id"
        ):
            carried.setdefault(str(branch), []).append(str(engagement))
        return [
            BranchRecord(
                name=str(r[0]), created_by=str(r[1]), created_at=dt(r[2]), rotated_at=dt_or_none(r[3]),
                carries=tuple(sorted(carried.get(str(r[0]), []))),
            )
            for r in db.all("SELECT name, created_by, created_at, rotated_at FROM branches ORDER BY name")
        ]

    return db.read(tx)


def branch_of_secret(db: MetadataDB, secret_hash: str) -> str | None:
    """The branch whose secret hashes to ``secret_hash`` (None: no such credential)."""
    row = db.one("SELECT name FROM branches WHERE secret_hash = ?", (secret_hash,))
    return None if row is None else str(row[0])


def carrying_branch(db: MetadataDB, secret_hash: str, engagement: str) -> tuple[str | None, bool]:
    """(the credential's branch or None, whether it carries ``engagement``): one read."""
    row = db.one(
        "SELECT b.name, (SELECT 1 FROM branch_carry c JOIN engagements e ON e.id = c.engagement_id"
        " WHERE c.branch = b.name AND e.name = ?) FROM branches b WHERE b.secret_hash = ?",
        (engagement, secret_hash),
    )
    if row is None:
        return None, False
    return str(row[0]), row[1] is not None


def carried_engagements(db: MetadataDB, secret_hash: str) -> list[CarriedEngagement]:
    """The engagements carried by the branch of ``secret_hash`` (empty for an unknown one)."""
    rows = db.all(
        "SELECT e.id, e.name, e.head FROM branches b JOIN branch_carry c ON c.branch = b.name"
        " JOIN engagements e ON e.id = c.engagement_id WHERE b.secret_hash = ? ORDER BY e.name",
        (secret_hash,),
    )
    return [CarriedEngagement(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def head_chunks(db: MetadataDB, engagement_id: int) -> tuple[int, list[ChunkRef]]:
    """(head, every chunk of the files at head, each once): the head and the file list in one
    read, the manifests in a second (a manifest is never removed while a file names it)."""

    def files() -> tuple[int, list[str]]:
        head = db.engagement_head(engagement_id)
        rows = db.all(
            "SELECT DISTINCT content FROM files WHERE engagement_id = ? AND content IS NOT NULL",
            (engagement_id,),
        )
        return head, [str(hex_or_none(r[0])) for r in rows]

    head, contents = db.read(files)
    found = get_manifests(db, engagement_id, contents) if contents else {}
    refs: dict[str, ChunkRef] = {}
    for content in sorted(contents):
        manifest = found.get(content)
        for ref in manifest.chunks if manifest is not None else ():
            refs.setdefault(ref.hash, ref)
    return head, list(refs.values())


def _require(db: MetadataDB, name: str) -> None:
    if db.one("SELECT 1 FROM branches WHERE name = ?", (name,)) is None:
        raise NotFound(f"no branch named {name!r} (add it with: branch add {name})", branch=name)
