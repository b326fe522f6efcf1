"""A public in-memory test fake of ``ServerStore``: users, engagements, grants and sessions.

Only the account/grant/session part is implemented (enough for auth and web tests); the chunk,
manifest and change-log methods raise ``NotImplementedError``. Set ``unavailable = True`` to make
every call raise ``Unavailable`` as a database outage would. Not for production use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from smartsyncd.auth.acl import max_role
from smartsyncd.core.errors import BadRequest, NotFound, Unavailable
from smartsyncd.core.model import Change, FileState, HistoryCheck, Manifest, ProposedChange, Role
from smartsyncd.storage.api import (
    ChunkUpload,
    CommitResult,
    EngagementRecord,
    FsckProblem,
    Grant,
    PrincipalKind,
    PutManifest,
    SessionRecord,
    StoredChunk,
    UserRecord,
    VerifiedChunk,
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryServerStore:
    """Dictionaries behind the ``ServerStore`` account, grant and session methods."""

    def __init__(self, now: Callable[[], datetime] = _utcnow) -> None:
        self._now = now
        self.users: dict[str, UserRecord] = {}
        self.engagements: dict[str, EngagementRecord] = {}
        self.grants: dict[tuple[str, PrincipalKind, str], Grant] = {}
        self.sessions: dict[str, SessionRecord] = {}  # by token_hash
        self.login_failures: dict[str, list[float]] = {}
        self.unavailable = False

    def _check(self) -> None:
        if self.unavailable:
            raise Unavailable("database unavailable")

    # users
    async def add_user(self, name: str, password_hash: str | None) -> UserRecord:
        self._check()
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

    def _end_local(self, name: str) -> None:
        for h, s in list(self.sessions.items()):
            if s.user == name and s.backend == "local":
                del self.sessions[h]

    # engagements and grants
    async def create_engagement(self, name: str, title: str) -> EngagementRecord:
        self._check()
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

    async def grant(self, grant: Grant) -> None:
        self._check()
        if grant.engagement not in self.engagements:
            raise NotFound(f"no engagement {grant.engagement!r}", engagement=grant.engagement)
        self.grants[(grant.engagement, grant.kind, grant.principal)] = grant

    async def revoke(self, engagement: str, kind: PrincipalKind, principal: str) -> bool:
        self._check()
        return self.grants.pop((engagement, kind, principal), None) is not None

    async def list_grants(self, engagement: str | None = None) -> list[Grant]:
        self._check()
        return [g for g in self.grants.values() if engagement is None or g.engagement == engagement]

    async def role_for(self, engagement: str, user: str, groups: Sequence[str]) -> Role | None:
        self._check()
        members = set(groups)
        return max_role(
            g.role
            for g in self.grants.values()
            if g.engagement == engagement
            and (
                (g.kind == "user" and g.principal == user)
                or (g.kind == "group" and g.principal in members)
            )
        )

    # sessions
    async def create_session(self, session: SessionRecord) -> None:
        self._check()
        if session.token_hash in self.sessions:
            raise BadRequest("session already exists")
        self.sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> SessionRecord | None:
        self._check()
        return self.sessions.get(token_hash)

    async def update_session(self, session: SessionRecord) -> None:
        self._check()
        # Like an SQL UPDATE: a session ended meanwhile stays ended.
        if session.token_hash in self.sessions:
            self.sessions[session.token_hash] = session

    async def delete_session(self, token_hash: str) -> None:
        self._check()
        self.sessions.pop(token_hash, None)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        self._check()
        return [s for s in self.sessions.values() if user is None or s.user == user]

    async def end_sessions(
        self, *, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int:
        self._check()
        gone = [
            h for h, s in self.sessions.items()
            if (session_id is not None and s.id == session_id)
            or (user is not None and s.user == user and s.id != keep)
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

    # not implemented by this fake
    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]:
        raise NotImplementedError

    async def store_chunks(
        self, engagement_id: int, chunks: Sequence[VerifiedChunk]
    ) -> tuple[int, int]:
        raise NotImplementedError

    def open_upload(self, engagement_id: int) -> ChunkUpload:
        raise NotImplementedError

    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]:
        raise NotImplementedError

    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None:
        raise NotImplementedError

    async def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: dict[str, PutManifest],
        now: datetime,
        copy: str | None = None,
        check: HistoryCheck | None = None,
    ) -> CommitResult:
        raise NotImplementedError

    async def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]:
        raise NotImplementedError

    async def store_identity(self) -> tuple[str, int]:
        return ("memory", 1)

    async def bump_generation(self) -> tuple[str, int]:
        raise NotImplementedError

    async def record_token(self, engagement_id: int, seq: int) -> str | None:
        raise NotImplementedError

    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]:
        raise NotImplementedError

    async def head(self, engagement_id: int) -> int:
        raise NotImplementedError

    async def check_health(self) -> dict[str, str]:
        return {"database": "error" if self.unavailable else "ok", "storage": "ok"}

    async def fsck(self) -> list[FsckProblem]:
        return []
