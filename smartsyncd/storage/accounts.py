"""Accounts: users, engagements, grants, sessions and sign-in failures, over a ``MetadataDB``.

Synchronous functions (the store's DB thread runs them; ``sqlstore.SqlServerStore`` wraps each
in a coroutine). Grants and revokes append to the engagement's audit chain (``storage/audit``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from smartsyncd.core.audit import GLOBAL_CHAIN, engagement_chain
from smartsyncd.core.errors import AuthFailed, BadRequest, NotFound
from smartsyncd.core.model import ROLES, Role
from smartsyncd.core.principals import local_principal
from smartsyncd.storage.api import (
    TOOL_ACTOR,
    EngagementRecord,
    Grant,
    GrantCheck,
    PrincipalKind,
    SessionRecord,
    UserRecord,
)
from smartsyncd.storage.audit import append_audit
from smartsyncd.storage.db import (
    CONTROL,
    ENGAGEMENT_NAME,
    MetadataDB,
    checked_text,
    chunks_of,
    dt,
    lock_engagement,
    ts,
)


def _user(row: Any) -> UserRecord:
    return UserRecord(name=row[0], password_hash=row[1], created_at=dt(row[2]), disabled=bool(row[3]))


def _engagement(row: Any) -> EngagementRecord:
    return EngagementRecord(id=int(row[0]), name=row[1], title=row[2], created_at=dt(row[3]), head=int(row[4]))


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        token_hash=row[0],
        id=row[1],
        user=row[2],
        groups=tuple(json.loads(row[3])),
        backend=row[4],
        created_at=dt(row[5]),
        expires_at=dt(row[6]),
        refreshed_at=dt(row[7]),
        principal=row[8] or "",
    )


# -- users


def add_user(db: MetadataDB, name: str, password_hash: str | None, now: datetime) -> UserRecord:
    checked_text(name, "user name")
    if password_hash is not None:
        checked_text(password_hash, "password hash", 1024)

    def tx() -> UserRecord:
        cur = db.execute(
            "INSERT INTO users (name, password_hash, created_at, disabled) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (name, password_hash, ts(now)),
        )
        if cur.rowcount != 1:
            raise BadRequest(f"user {name!r} already exists", user=name)
        return _user(db.one("SELECT name, password_hash, created_at, disabled FROM users WHERE name = ?", (name,)))

    return db.write(tx)


def set_password(db: MetadataDB, name: str, password_hash: str) -> None:
    checked_text(password_hash, "password hash", 1024)

    def tx() -> None:
        cur = db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
        if cur.rowcount != 1:
            raise NotFound(f"no user named {name!r}", user=name)
        # a new password ends the sessions opened with the old one
        db.execute("DELETE FROM sessions WHERE principal = ?", (local_principal(name),))

    db.write(tx)


def upgrade_password_hash(db: MetadataDB, name: str, old_hash: str, new_hash: str) -> bool:
    """Replace ``old_hash`` by the same password's stronger hash; sessions stay (unlike
    ``set_password``). False when the hash changed meanwhile."""
    checked_text(new_hash, "password hash", 1024)

    def tx() -> bool:
        cur = db.execute(
            "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
            (new_hash, name, old_hash),
        )
        return bool(cur.rowcount == 1)

    return db.write(tx)


def get_user(db: MetadataDB, name: str) -> UserRecord | None:
    row = db.one("SELECT name, password_hash, created_at, disabled FROM users WHERE name = ?", (name,))
    return None if row is None else _user(row)


def list_users(db: MetadataDB) -> list[UserRecord]:
    return [_user(r) for r in db.all("SELECT name, password_hash, created_at, disabled FROM users ORDER BY name")]


def set_user_disabled(db: MetadataDB, name: str, disabled: bool) -> None:
    def tx() -> None:
        cur = db.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
        if cur.rowcount != 1:
            raise NotFound(f"no user named {name!r}", user=name)
        if disabled:
            db.execute("DELETE FROM sessions WHERE principal = ?", (local_principal(name),))

    db.write(tx)


def remove_user(db: MetadataDB, name: str) -> None:
    def tx() -> None:
        cur = db.execute("DELETE FROM users WHERE name = ?", (name,))
        if cur.rowcount != 1:
            raise NotFound(f"no user named {name!r}", user=name)
        db.execute("DELETE FROM sessions WHERE principal = ?", (local_principal(name),))
        # a later local account of that name is someone new
        db.execute(
            "DELETE FROM grants WHERE kind = 'user' AND principal = ?", (local_principal(name),)
        )

    db.write(tx)


# -- engagements and grants


def create_engagement(
    db: MetadataDB, name: str, title: str, now: datetime, volume: str | None = None
) -> EngagementRecord:
    """A new engagement, its packs on ``volume`` (None: the default volume)."""
    if not isinstance(name, str) or not ENGAGEMENT_NAME.match(name):
        raise BadRequest(
            "engagement names are 1-100 characters of letters, digits, '.', '_' and '-',"
            " starting with a letter or digit",
            engagement=str(name)[:100],
        )
    if not isinstance(title, str) or len(title) > 500 or CONTROL.search(title):
        raise BadRequest("engagement title must be a string of at most 500 characters")

    def tx() -> EngagementRecord:
        cur = db.execute(
            "INSERT INTO engagements (name, title, created_at, head, volume) VALUES (?, ?, ?, 0, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (name, title, ts(now), None if volume in (None, "default") else volume),
        )
        if cur.rowcount != 1:
            raise BadRequest(f"engagement {name!r} already exists", engagement=name)
        found = get_engagement(db, name)
        assert found is not None
        return found

    return db.write(tx)


def get_engagement(db: MetadataDB, name: str) -> EngagementRecord | None:
    row = db.one("SELECT id, name, title, created_at, head FROM engagements WHERE name = ?", (name,))
    return None if row is None else _engagement(row)


def list_engagements(db: MetadataDB) -> list[EngagementRecord]:
    rows = db.all("SELECT id, name, title, created_at, head FROM engagements ORDER BY name")
    return [_engagement(r) for r in rows]


def grant(
    db: MetadataDB, grant: Grant, now: datetime | None = None, actor: str = TOOL_ACTOR,
    check: GrantCheck | None = None,
) -> None:
    """Give ``grant`` (replacing the principal's role there), audited as done by ``actor``.
    ``check`` sees the engagement's grants before and after, inside the transaction, and
    refuses by raising (nothing changes)."""
    if grant.kind not in ("user", "group"):
        raise BadRequest("grant kind must be 'user' or 'group'")
    if grant.role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    checked_text(grant.principal, "principal")
    display = grant.display_name or grant.principal
    checked_text(display, "display name")

    def tx() -> None:
        engagement_id = db._engagement_id(grant.engagement)
        if check is not None:
            before = _checked_grants(db, engagement_id, grant.engagement)
            key = (grant.kind, grant.principal)
            after = [g for g in before if (g.kind, g.principal) != key] + [grant]
            check(before, after)
        db.execute(
            "INSERT INTO grants (engagement_id, kind, principal, display_name, role)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (engagement_id, kind, principal)"
            " DO UPDATE SET display_name = excluded.display_name, role = excluded.role",
            (engagement_id, grant.kind, grant.principal, display, grant.role),
        )
        append_audit(
            db, engagement_chain(grant.engagement), "grant", actor, now or datetime.now(UTC),
            grant.engagement,
            {"kind": grant.kind, "principal": grant.principal, "display_name": display, "role": grant.role},
        )

    db.write(tx)


def revoke(
    db: MetadataDB, engagement: str, kind: PrincipalKind, principal: str, now: datetime | None = None,
    actor: str = TOOL_ACTOR, check: GrantCheck | None = None,
) -> bool:
    """Take ``principal``'s grant away (False: it had none), audited as done by ``actor``;
    ``check`` as for ``grant``."""
    def tx() -> bool:
        engagement_id = db._engagement_id(engagement)
        if check is not None:
            before = _checked_grants(db, engagement_id, engagement)
            check(before, [g for g in before if (g.kind, g.principal) != (kind, principal)])
        cur = db.execute(
            "DELETE FROM grants WHERE engagement_id = ? AND kind = ? AND principal = ?",
            (engagement_id, kind, principal),
        )
        if cur.rowcount == 1:
            append_audit(
                db, engagement_chain(engagement), "revoke", actor, now or datetime.now(UTC),
                engagement, {"kind": kind, "principal": principal},
            )
        return bool(cur.rowcount == 1)

    return db.write(tx)


def _checked_grants(db: MetadataDB, engagement_id: int, engagement: str) -> list[Grant]:
    """The engagement's grants, read under its row lock so two checked changes (two admins
    demoting each other) cannot both see the other still there."""
    lock_engagement(db, engagement_id)
    rows = db.all(
        "SELECT kind, principal, display_name, role FROM grants WHERE engagement_id = ?"
        " ORDER BY kind, principal",
        (engagement_id,),
    )
    return [Grant(engagement, r[0], r[1], r[2], r[3]) for r in rows]


def list_grants(db: MetadataDB, engagement: str | None) -> list[Grant]:
    query = (
        "SELECT e.name, g.kind, g.principal, g.display_name, g.role FROM grants g"
        " JOIN engagements e ON e.id = g.engagement_id"
    )
    params: tuple[Any, ...] = ()
    if engagement is not None:
        params = (db._engagement_id(engagement),)
        query += " WHERE g.engagement_id = ?"
    rows = db.all(query + " ORDER BY e.name, g.kind, g.principal", params)
    return [Grant(engagement=r[0], kind=r[1], principal=r[2], display_name=r[3], role=r[4]) for r in rows]


def role_for(db: MetadataDB, engagement: str, principal: str, groups: Sequence[str]) -> Role | None:
    """The strongest role of ``principal`` (a ``core.principals`` id) or of its groups."""
    row = db.one("SELECT id FROM engagements WHERE name = ?", (engagement,))
    if row is None:
        return None
    engagement_id = int(row[0])
    roles = [
        r[0]
        for r in db.all(
            "SELECT role FROM grants WHERE engagement_id = ? AND kind = 'user' AND principal = ?",
            (engagement_id, principal),
        )
    ]
    group_list = list(dict.fromkeys(groups))
    for part in chunks_of(group_list):
        marks = ", ".join("?" for _ in part)
        roles += [
            r[0]
            for r in db.all(
                "SELECT role FROM grants WHERE engagement_id = ? AND kind = 'group'"
                f" AND principal IN ({marks})",
                (engagement_id, *part),
            )
        ]
    ranked = [r for r in ROLES if r in roles]
    return ranked[-1] if ranked else None


# -- sessions


def create_session(db: MetadataDB, s: SessionRecord) -> None:
    """Store a new session, unless its principal is blocked (checked in the same transaction,
    so a ``user disable`` racing a sign-in leaves no session behind: AuthFailed)."""

    def tx() -> None:
        if db.one("SELECT 1 FROM principal_blocks WHERE principal = ?", (s.principal,)):
            raise AuthFailed("sign-in failed")
        cur = db.execute(
            "INSERT INTO sessions (token_hash, id, user_name, group_ids, backend, created_at,"
            " expires_at, refreshed_at, principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                checked_text(s.token_hash, "token hash"),
                checked_text(s.id, "session id"),
                checked_text(s.user, "user"),
                json.dumps(list(s.groups)),
                s.backend,
                ts(s.created_at),
                ts(s.expires_at),
                ts(s.refreshed_at),
                checked_text(s.principal, "principal"),
            ),
        )
        if cur.rowcount != 1:
            raise BadRequest("session already exists")
        # sign-ins belong to no one engagement: they are chained in the global audit trail
        append_audit(
            db, GLOBAL_CHAIN, "sign_in", s.user, s.created_at, None,
            {"session": s.id, "backend": s.backend, "principal": s.principal},
        )

    db.write(tx)


_SESSION_COLUMNS = (
    "SELECT token_hash, id, user_name, group_ids, backend, created_at, expires_at,"
    " refreshed_at, principal FROM sessions"
)


def get_session(db: MetadataDB, token_hash: str) -> SessionRecord | None:
    row = db.one(
        _SESSION_COLUMNS + " WHERE token_hash = ?",
        (token_hash,),
    )
    return None if row is None else _session(row)


def update_session(db: MetadataDB, s: SessionRecord) -> None:
    def tx() -> None:
        cur = db.execute(
            "UPDATE sessions SET user_name = ?, group_ids = ?, backend = ?, expires_at = ?,"
            " refreshed_at = ?, principal = ? WHERE token_hash = ?",
            (
                s.user, json.dumps(list(s.groups)), s.backend, ts(s.expires_at),
                ts(s.refreshed_at), s.principal, s.token_hash,
            ),
        )
        if cur.rowcount != 1:
            raise NotFound("no such session")

    db.write(tx)


def delete_session(db: MetadataDB, token_hash: str) -> None:
    db.write(lambda: db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)))


def list_sessions(db: MetadataDB, user: str | None = None) -> list[SessionRecord]:
    """All sessions, or those of ``user`` (a display name or a principal id)."""
    query = _SESSION_COLUMNS
    if user is None:
        return [_session(r) for r in db.all(query + " ORDER BY created_at")]
    rows = db.all(query + " WHERE user_name = ? OR principal = ? ORDER BY created_at", (user, user))
    return [_session(r) for r in rows]


def end_sessions(
    db: MetadataDB, user: str | None = None, session_id: str | None = None, keep: str | None = None
) -> int:
    """Delete the sessions of ``user`` (a display name or a principal id; but ``keep``), or the
    one with ``session_id``."""
    if (user is None) == (session_id is None):
        raise ValueError("end_sessions needs exactly one of user and session_id")

    def tx() -> int:
        if session_id is not None:
            cur = db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        else:
            cur = db.execute(
                "DELETE FROM sessions WHERE (user_name = ? OR principal = ?) AND id <> ?",
                (user, user, keep or ""),
            )
        return int(cur.rowcount)

    return db.write(tx)


# -- failed sign-ins


def record_login_failure(db: MetadataDB, key: str, at: float, forget_before: float) -> None:
    def tx() -> None:
        db.execute("DELETE FROM login_failures WHERE at < ?", (forget_before,))
        db.execute("INSERT INTO login_failures (throttle_key, at) VALUES (?, ?)", (key, at))

    db.write(tx)


def login_failures_since(db: MetadataDB, key: str, since: float, limit: int) -> list[float]:
    rows = db.all(
        "SELECT at FROM login_failures WHERE throttle_key = ? AND at > ? ORDER BY at DESC"
        " LIMIT ?",
        (key, since, limit),
    )
    return sorted(float(r[0]) for r in rows)


def clear_login_failures(db: MetadataDB, key: str) -> None:
    db.write(
        lambda: db.execute("DELETE FROM login_failures WHERE throttle_key = ?", (key,))
    )
