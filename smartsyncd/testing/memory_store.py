"""A public in-memory test fake of the store (``storage.api``), role by role.

Roles implemented fully: ``AccountStore`` (``UserStore``, ``GrantStore``, ``SessionStore``,
``PrincipalStore``: users, engagements and grants, sessions, sign-in failures, blocked
principals and by-name grants claimed) here, and ``ChunkStore`` and
``ChangeLogStore`` (chunks, manifests, commit, change feed, snapshot, history checks) in
``memory_log``: the same answers as ``SqlServerStore`` for what those roles promise
(tests/unit/test_store_roles.py runs the same assertions against both). Not implemented:
``WorkflowStore`` and ``AuditStore`` (no locks, copies, sign-off or audit trail: grants and
sign-ins are not audited, a commit obeys no workflow rule); of ``MaintenanceStore`` only a
``check_health`` and an empty ``fsck`` (no ``gc``). Set ``unavailable = True`` to make every
call raise ``Unavailable`` as a database outage would. Not for production use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from smartsyncd.auth.acl import max_role
from smartsyncd.core.errors import AuthFailed, BadRequest, NotFound, Unavailable
from smartsyncd.core.ignore import EngagementRules, check_engagement_rules
from smartsyncd.core.model import ROLES, Role
from smartsyncd.core.principals import local_principal, pending_principal
from smartsyncd.storage.api import (
    TOOL_ACTOR,
    EngagementRecord,
    FsckProblem,
    Grant,
    GrantCheck,
    PrincipalBlock,
    PrincipalKind,
    SessionRecord,
    UserRecord,
)
from smartsyncd.storage.db import CONTROL, ENGAGEMENT_NAME, checked_text
from smartsyncd.testing.memory_log import MemoryChangeLog


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryServerStore(MemoryChangeLog):
    """Dictionaries behind the ``ServerStore`` account, chunk and change-log roles."""

    def __init__(self, now: Callable[[], datetime] = _utcnow) -> None:
        super().__init__()
        self._now = now
        self.users: dict[str, UserRecord] = {}
        self.engagements: dict[str, EngagementRecord] = {}
        self.grants: dict[tuple[str, PrincipalKind, str], Grant] = {}
        self.sessions: dict[str, SessionRecord] = {}  # by token_hash
        self.login_failures: dict[str, list[float]] = {}
        self.blocks: dict[str, PrincipalBlock] = {}
        self.unavailable = False

    def _check(self) -> None:
        if self.unavailable:
            raise Unavailable("database unavailable")

    # users
    async def add_user(self, name: str, password_hash: str | None) -> UserRecord:
        self._check()
        checked_text(name, "user name")
        if password_hash is not None:
            checked_text(password_hash, "password hash", 1024)
        if name in self.users:
            raise BadRequest(f"user {name!r} already exists", user=name)
        record = UserRecord(name=name, password_hash=password_hash, created_at=self._now())
        self.users[name] = record
        return record

    async def set_password(self, name: str, password_hash: str) -> None:
        self._check()
        record = self.users.get(name)
        if record is None:
            raise NotFound(f"no user {name!r}", user=name)
        self.users[name] = UserRecord(
            name=record.name,
            password_hash=password_hash,
            created_at=record.created_at,
            disabled=record.disabled,
        )
        self._end_local(name)

    async def upgrade_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        self._check()
        record = self.users.get(name)
        if record is None or record.password_hash != old_hash:
            return False
        self.users[name] = dataclasses.replace(record, password_hash=new_hash)
        return True

    async def get_user(self, name: str) -> UserRecord | None:
        self._check()
        return self.users.get(name)

    async def list_users(self) -> list[UserRecord]:
        self._check()
        return sorted(self.users.values(), key=lambda u: u.name)

    async def set_user_disabled(self, name: str, disabled: bool) -> None:
        self._check()
        record = self.users.get(name)
        if record is None:
            raise NotFound(f"no user {name!r}", user=name)
        self.users[name] = dataclasses.replace(record, disabled=disabled)
        if disabled:
            self._end_local(name)

    async def remove_user(self, name: str) -> None:
        self._check()
        if self.users.pop(name, None) is None:
            raise NotFound(f"no user {name!r}", user=name)
        self._end_local(name)
        for key in [k for k in self.grants if k[1:] == ("user", local_principal(name))]:
            del self.grants[key]

    def _end_local(self, name: str) -> None:
        for h, s in list(self.sessions.items()):
            if s.principal == local_principal(name):
                del self.sessions[h]

    # engagements and grants
    async def create_engagement(self, name: str, title: str) -> EngagementRecord:
        self._check()
        if not isinstance(name, str) or not ENGAGEMENT_NAME.match(name):
            raise BadRequest("engagement names are 1-100 characters of letters, digits, '.', '_' and '-',"
                             " starting with a letter or digit", engagement=str(name)[:100])
        if not isinstance(title, str) or len(title) > 500 or CONTROL.search(title):
            raise BadRequest("engagement title must be a string of at most 500 characters")
        if name in self.engagements:
            raise BadRequest(f"engagement {name!r} already exists", engagement=name)
        record = EngagementRecord(
            id=len(self.engagements) + 1, name=name, title=title, created_at=self._now(), head=0
        )
        self.engagements[name] = record
        return record

    async def get_engagement(self, name: str) -> EngagementRecord | None:
        self._check()
        return self.engagements.get(name)

    async def list_engagements(self) -> list[EngagementRecord]:
        self._check()
        return sorted(self.engagements.values(), key=lambda e: e.name)

    def _known(self, engagement: str) -> None:
        if engagement not in self.engagements:
            raise NotFound(f"no engagement named {engagement!r}", engagement=engagement)

    async def grant(
        self, grant: Grant, actor: str = TOOL_ACTOR, check: GrantCheck | None = None
    ) -> None:
        self._check()
        if grant.kind not in ("user", "group"):
            raise BadRequest("grant kind must be 'user' or 'group'")
        if grant.role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}")
        checked_text(grant.principal, "principal")
        display = grant.display_name or grant.principal
        checked_text(display, "display name")
        self._known(grant.engagement)
        key = (grant.engagement, grant.kind, grant.principal)
        if check is not None:
            before = await self.list_grants(grant.engagement)
            check(before, [g for g in before if (g.engagement, g.kind, g.principal) != key] + [grant])
        self.grants[key] = dataclasses.replace(
            grant, display_name=display
        )

    async def set_ignore_rules(
        self, engagement: str, text: str | None, actor: str = TOOL_ACTOR
    ) -> str | None:
        self._check()
        self._known(engagement)
        engagement_id = self.engagements[engagement].id
        if text is None:
            self.ignore.pop(engagement_id, None)
            return None
        rules = EngagementRules.parse(check_engagement_rules(text))
        self.ignore[engagement_id] = rules
        return rules.digest

    async def ignore_rules(self, engagement_id: int) -> EngagementRules | None:
        self._engagement(engagement_id)
        return self.ignore.get(engagement_id)

    async def revoke(
        self, engagement: str, kind: PrincipalKind, principal: str, actor: str = TOOL_ACTOR,
        check: GrantCheck | None = None,
    ) -> bool:
        self._check()
        self._known(engagement)
        if check is not None:
            before = await self.list_grants(engagement)
            check(before, [g for g in before if (g.kind, g.principal) != (kind, principal)])
        return self.grants.pop((engagement, kind, principal), None) is not None

    async def list_grants(self, engagement: str | None = None) -> list[Grant]:
        self._check()
        if engagement is not None:
            self._known(engagement)
        found = [g for g in self.grants.values() if engagement is None or g.engagement == engagement]
        return sorted(found, key=lambda g: (g.engagement, g.kind, g.principal))

    async def role_for(self, engagement: str, principal: str, groups: Sequence[str]) -> Role | None:
        self._check()
        members = set(groups)
        return max_role(
            g.role
            for g in self.grants.values()
            if g.engagement == engagement
            and (
                (g.kind == "user" and g.principal == principal)
                or (g.kind == "group" and g.principal in members)
            )
        )

    # sessions
    async def create_session(self, session: SessionRecord) -> None:
        self._check()
        checked_text(session.token_hash, "token hash")
        checked_text(session.id, "session id")
        checked_text(session.user, "user")
        if session.token_hash in self.sessions:
            raise BadRequest("session already exists")
        if session.principal in self.blocks:
            raise AuthFailed("sign-in failed")
        self.sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> SessionRecord | None:
        self._check()
        return self.sessions.get(token_hash)

    async def update_session(self, session: SessionRecord) -> None:
        self._check()
        # as in SQL: a session ended meanwhile stays ended (NotFound)
        old = self.sessions.get(session.token_hash)
        if old is None:
            raise NotFound("no such session")
        self.sessions[session.token_hash] = dataclasses.replace(
            old, user=session.user, groups=session.groups, backend=session.backend,
            expires_at=session.expires_at, refreshed_at=session.refreshed_at,
            principal=session.principal,
        )

    async def delete_session(self, token_hash: str) -> None:
        self._check()
        self.sessions.pop(token_hash, None)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        self._check()
        found = [
            s for s in self.sessions.values() if user is None or user in (s.user, s.principal)
        ]
        return sorted(found, key=lambda s: s.created_at)

    async def end_sessions(
        self, *, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int:
        if (user is None) == (session_id is None):
            raise ValueError("end_sessions needs exactly one of user and session_id")
        self._check()
        gone = [
            h for h, s in self.sessions.items()
            if (session_id is not None and s.id == session_id)
            or (user is not None and user in (s.user, s.principal) and s.id != keep)
        ]
        for h in gone:
            del self.sessions[h]
        return len(gone)

    async def record_login_failure(self, key: str, at: float, forget_before: float) -> None:
        self._check()
        for k in list(self.login_failures):
            self.login_failures[k] = [t for t in self.login_failures[k] if t >= forget_before]
        self.login_failures.setdefault(key, []).append(at)

    async def login_failures_since(self, key: str, since: float, limit: int) -> list[float]:
        self._check()
        return sorted(t for t in self.login_failures.get(key, []) if t > since)[-limit:]

    async def clear_login_failures(self, key: str) -> None:
        self._check()
        self.login_failures.pop(key, None)

    # operations
    async def check_health(self) -> dict[str, str]:
        return {"database": "error" if self.unavailable else "ok", "storage": "ok"}

    async def fsck(self) -> list[FsckProblem]:
        return []

    # principals of any backend
    async def block_principal(self, block: PrincipalBlock) -> None:
        self._check()
        self.blocks[block.principal] = block
        for h, s in list(self.sessions.items()):
            if s.principal in (block.principal, pending_principal(block.display_name)):
                del self.sessions[h]
        if block.state == "removed":
            gone = (block.principal, pending_principal(block.display_name))
            for key in [k for k in self.grants if k[1] == "user" and k[2] in gone]:
                del self.grants[key]

    async def unblock_principal(self, principal: str) -> bool:
        self._check()
        return self.blocks.pop(principal, None) is not None

    async def principal_block(self, principal: str) -> PrincipalBlock | None:
        self._check()
        return self.blocks.get(principal)

    async def list_principal_blocks(self) -> list[PrincipalBlock]:
        self._check()
        return sorted(self.blocks.values(), key=lambda b: b.display_name)

    async def claim_name_grants(self, principal: str, name: str) -> int:
        self._check()
        pending = [g for g in self.grants.values()
                   if g.kind == "user" and g.principal == pending_principal(name)]
        for g in pending:
            del self.grants[(g.engagement, "user", g.principal)]
            have = self.grants.get((g.engagement, "user", principal))
            if have is None or ROLES.index(g.role) > ROLES.index(have.role):
                self.grants[(g.engagement, "user", principal)] = dataclasses.replace(
                    g, principal=principal, display_name=name
                )
        return len(pending)
