"""The async storage interface used by ``web/``, ``auth/`` and ``cli/admin``.

Every method is a coroutine; implementations run blocking work (SQL, file I/O, hashing) on a
thread pool, never on the reactor thread. Metadata is the only truth; chunk files are write-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from smartsyncd.core.model import Change, ChunkRef, FileState, Manifest, ProposedChange, Role

PrincipalKind = Literal["user", "group"]


@dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str | None  # None: may not sign in locally
    created_at: datetime
    disabled: bool = False


@dataclass(frozen=True)
class EngagementRecord:
    id: int
    name: str
    title: str
    created_at: datetime
    head: int  # highest sequence number in the change log (0 when empty)


@dataclass(frozen=True)
class Grant:
    engagement: str
    kind: PrincipalKind
    principal: str  # user name, or a group's stable id (AD objectSid / local group name)
    display_name: str  # what admins see (the group's name when granted)
    role: Role


@dataclass(frozen=True)
class SessionRecord:
    id: str  # public session id (appears in the change log); not the token
    token_hash: str
    user: str
    groups: tuple[str, ...]  # group ids as stored in grants
    backend: str  # "local" or "ldap"
    created_at: datetime
    expires_at: datetime
    refreshed_at: datetime  # when groups were last read from the directory


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: ``codec`` 0 raw / 1 zstd, ``payload`` in that codec."""

    hash: str
    codec: int
    raw_size: int
    payload: bytes


@dataclass(frozen=True)
class VerifiedChunk:
    """A chunk whose hash and length the web layer already verified against its raw bytes."""

    hash: str
    codec: int
    raw_size: int
    payload: bytes


@dataclass(frozen=True)
class PutManifest:
    """The chunk list sent with a put: full, or as a delta against ``base`` (a content id)."""

    content: str
    chunks: tuple[ChunkRef, ...] | None = None
    delta_base: str | None = None
    delta_ops: tuple[tuple, ...] | None = None


@dataclass(frozen=True)
class CommitResultItem:
    path: str
    status: str  # applied | unchanged | conflict | stale
    seq: int | None
    conflict_path: str | None = None
    current_seq: int | None = None


@dataclass(frozen=True)
class CommitResult:
    head: int
    results: tuple[CommitResultItem, ...]
    changes: tuple[Change, ...]  # the log records written (empty on an idempotent replay)
    replayed: bool = False


@dataclass(frozen=True)
class FsckProblem:
    engagement: str
    kind: str  # missing_chunk | bad_chunk | missing_manifest | ...
    detail: str


class ServerStore(Protocol):
    # users (local accounts)
    async def add_user(self, name: str, password_hash: str | None) -> UserRecord: ...
    async def set_password(self, name: str, password_hash: str) -> None: ...
    async def get_user(self, name: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...

    # engagements and grants
    async def create_engagement(self, name: str, title: str) -> EngagementRecord: ...
    async def get_engagement(self, name: str) -> EngagementRecord | None: ...
    async def list_engagements(self) -> list[EngagementRecord]: ...
    async def grant(self, grant: Grant) -> None: ...
    async def revoke(self, engagement: str, kind: PrincipalKind, principal: str) -> bool: ...
    async def list_grants(self, engagement: str | None = None) -> list[Grant]: ...
    async def role_for(self, engagement: str, user: str, groups: Sequence[str]) -> Role | None: ...

    # sessions (tokens are stored only as hashes)
    async def create_session(self, session: SessionRecord) -> None: ...
    async def get_session(self, token_hash: str) -> SessionRecord | None: ...
    async def update_session(self, session: SessionRecord) -> None: ...
    async def delete_session(self, token_hash: str) -> None: ...

    # chunks and manifests
    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]: ...
    async def store_chunks(self, engagement_id: int, chunks: Sequence[VerifiedChunk]) -> tuple[int, int]: ...
    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]: ...
    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None: ...

    # the change log
    async def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: dict[str, PutManifest],
        now: datetime,
    ) -> CommitResult: ...
    async def changes_since(self, engagement_id: int, since: int, limit: int) -> tuple[int, list[Change]]: ...
    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]: ...
    async def head(self, engagement_id: int) -> int: ...

    # operations
    async def check_health(self) -> dict[str, str]: ...
    async def fsck(self) -> list[FsckProblem]: ...
