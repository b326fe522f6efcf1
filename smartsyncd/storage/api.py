"""The async storage interface used by ``web/``, ``auth/`` and ``cli/admin``.

Every method is a coroutine; implementations run blocking work (SQL, file I/O, hashing) on a
thread pool, never on the reactor thread. Metadata is the only truth; chunk files are write-once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from smartsyncd.core.ignore import EngagementRules
from smartsyncd.core.jsonvalue import JSONValue
from smartsyncd.core.locks import Lock
from smartsyncd.core.model import (
    Change,
    ChunkRef,
    FileState,
    HistoryCheck,
    Manifest,
    ProposedChange,
    Role,
    VerifiedChunk,
)

PrincipalKind = Literal["user", "group"]
TOOL_ACTOR = "smartsync-admin"  # who grants and revokes in the audit trail, unless told




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
    principal: str  # a user's principal id (core.principals), or a group's stable id (objectSid)
    display_name: str  # what admins see (the group's name when granted)
    role: Role


# Called inside a grant change's transaction with the engagement's grants before and after it;
# refuses by raising a ``SyncError`` (nothing changes). The rules are ``auth/grantees.py``'s.
GrantCheck = Callable[[Sequence[Grant], Sequence[Grant]], None]


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
    principal: str = ""  # backend-qualified id (core.principals); ``user`` is for display

    def __post_init__(self) -> None:
        if not self.principal:  # as ``auth.identity.Identity``: ``<backend>:<user>``
            object.__setattr__(self, "principal", f"{self.backend}:{self.user}")


@dataclass(frozen=True)
class PrincipalBlock:
    """A principal smartsyncd refuses: ``state`` "disabled" (may be enabled again) or
    "removed" (its user grants are gone too)."""

    principal: str
    display_name: str
    state: Literal["disabled", "removed"]
    since: datetime


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: ``codec`` 0 raw / 1 zstd, ``payload`` in that codec."""

    hash: str
    codec: int
    raw_size: int
    payload: bytes


@dataclass(frozen=True)
class PutManifest:
    """The chunk list sent with a put: full, or as a delta against ``base`` (a content id)."""

    content: str
    chunks: Sequence[ChunkRef] | None = None
    delta_base: str | None = None
    delta_ops: tuple[JSONValue, ...] | None = None  # raw ops, checked by manifest.apply_delta


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
    head_hash: str | None = None  # the record token at ``head`` when this commit wrote it


@dataclass(frozen=True)
class FsckProblem:
    engagement: str
    kind: str  # missing_chunk | bad_chunk | missing_manifest | ...
    detail: str


# -- engagement workflow records (docs/workflow.md; SQL in storage/workflow.py and beside it)


@dataclass(frozen=True)
class EngagementStatus:
    """Sign-off freeze and retention of one engagement."""

    name: str
    finalized_at: datetime | None
    finalized_by: str | None
    finalized_reason: str | None
    retention_days: int | None  # None: keep every version forever
    report_date: datetime | None = None  # issue 20: storage/lifecycle.py
    assembly_deadline: datetime | None = None
    min_retention_days: int | None = None  # the engagement's own minimum (storage/retention.py)
    legal_hold: str | None = None  # the reason, while a legal hold is on
    legal_hold_by: str | None = None
    legal_hold_at: datetime | None = None
    disposed_at: datetime | None = None
    disposed_by: str | None = None

    @property
    def finalized(self) -> bool:
        return self.finalized_at is not None


@dataclass(frozen=True)
class VersionRecord:
    """One change record at a path; ``number`` counts the path's puts 1, 2, 3... (None for a
    delete). ``available`` is False once gc collected its content (past retention)."""

    number: int | None
    seq: int
    kind: str
    content: str | None
    size: int
    user: str
    time: datetime
    conflict_of: str | None
    available: bool
    mtime_ns: int | None = None  # the version's file date and read-only attribute, if known
    readonly: bool | None = None


@dataclass(frozen=True)
class ExportFile:
    path: str
    seq: int
    content: str
    size: int
    available: bool
    mtime_ns: int | None = None
    readonly: bool | None = None


@dataclass(frozen=True)
class CopyRecord:
    """A sync copy known to the server and what it last reported."""

    copy_id: str
    user: str
    host: str
    registered_at: datetime
    last_contact: datetime
    unsynced: int
    unsynced_since: datetime | None
    abandoned_at: datetime | None
    abandoned_by: str | None


@dataclass(frozen=True)
class AuditRecord:
    """One event of an audit chain (``detail`` decoded from its canonical JSON)."""

    chain: str
    seq: int
    event: str
    actor: str
    time: datetime
    engagement: str | None
    detail: dict[str, Any]
    record_hash: str


@dataclass(frozen=True)
class ChainReport:
    """The verification of one chain: ``problem`` names the first bad record, or is None."""

    chain: str  # "changes:<eng>", "eng:<eng>" or "global"
    records: int
    head_hash: str
    problem: str | None


@dataclass(frozen=True)
class GcReport:
    engagement: str
    skipped: str | None = None  # why nothing was collected (finalized)
    manifests_removed: int = 0
    chunks_removed: int = 0
    packs_removed: int = 0
    bytes_freed: int = 0
    orphan_packs_removed: int = 0


class ChunkUpload(Protocol):
    """Verified chunks of one streamed upload going into one pack (``ServerStore.open_upload``).

    ``append`` calls run one at a time, in order; ``finish`` makes the pack durable and indexes
    its chunks in one transaction, returning (stored, present) like ``store_chunks`` for
    ``total`` records sent; ``abort`` removes what was written (nothing is indexed).
    """

    async def append(self, chunks: Sequence[VerifiedChunk]) -> None: ...
    async def finish(self, total: int) -> tuple[int, int]: ...
    async def abort(self) -> None: ...


# -- the store's roles. ``ServerStore`` is all of them; a caller that needs one role (a web
# handler, the authenticator, an admin command) can ask for just that one, and a test fake
# (``smartsyncd.testing.memory_store``) can implement the roles it needs in full.


class UserStore(Protocol):
    """Local accounts."""

    async def add_user(self, name: str, password_hash: str | None) -> UserRecord: ...
    async def set_password(self, name: str, password_hash: str) -> None: ...
    async def upgrade_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool: ...
    async def get_user(self, name: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def set_user_disabled(self, name: str, disabled: bool) -> None: ...
    async def remove_user(self, name: str) -> None: ...


class GrantStore(Protocol):
    """Engagements and who may do what in them."""

    async def create_engagement(self, name: str, title: str) -> EngagementRecord: ...
    async def get_engagement(self, name: str) -> EngagementRecord | None: ...
    async def list_engagements(self) -> list[EngagementRecord]: ...
    # ``actor`` names who changed it in the audit trail; ``check`` may refuse (GrantCheck)
    async def grant(
        self, grant: Grant, actor: str = TOOL_ACTOR, check: GrantCheck | None = None
    ) -> None: ...
    async def revoke(
        self, engagement: str, kind: PrincipalKind, principal: str, actor: str = TOOL_ACTOR,
        check: GrantCheck | None = None,
    ) -> bool: ...
    async def list_grants(self, engagement: str | None = None) -> list[Grant]: ...
    async def role_for(self, engagement: str, principal: str, groups: Sequence[str]) -> Role | None: ...
    # the engagement's published ignore rules: set (checked, audited) or cleared with None
    async def set_ignore_rules(
        self, engagement: str, text: str | None, actor: str = TOOL_ACTOR
    ) -> str | None: ...
    async def ignore_rules(self, engagement_id: int) -> EngagementRules | None: ...


class SessionStore(Protocol):
    """Sessions (tokens are stored only as hashes) and failed sign-ins per throttle key."""

    async def create_session(self, session: SessionRecord) -> None: ...
    async def get_session(self, token_hash: str) -> SessionRecord | None: ...
    async def update_session(self, session: SessionRecord) -> None: ...
    async def delete_session(self, token_hash: str) -> None: ...
    # ``user``: a display name or a principal id
    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]: ...
    async def end_sessions(
        self, *, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int: ...

    # failed sign-ins per throttle key, shared by all daemons (Unix seconds)
    async def record_login_failure(self, key: str, at: float, forget_before: float) -> None: ...
    async def login_failures_since(self, key: str, since: float, limit: int) -> list[float]: ...
    async def clear_login_failures(self, key: str) -> None: ...


class PrincipalStore(Protocol):
    """Blocks on principals of any backend, and claiming by-name grants for a directory id."""

    # upsert the block and end the principal's sessions (state "removed": drop its user grants)
    async def block_principal(self, block: PrincipalBlock) -> None: ...
    async def unblock_principal(self, principal: str) -> bool: ...
    async def principal_block(self, principal: str) -> PrincipalBlock | None: ...
    async def list_principal_blocks(self) -> list[PrincipalBlock]: ...
    # move user grants to ``name:<name>`` (before schema 5) over to ``principal``; returns count
    async def claim_name_grants(self, principal: str, name: str) -> int: ...


class AccountStore(UserStore, GrantStore, SessionStore, PrincipalStore, Protocol):
    """Users, engagements and grants, sessions: what sign-in and authorization need."""


class ChunkStore(Protocol):
    """Chunks and manifests."""

    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]: ...
    async def store_chunks(
        self, engagement_id: int, chunks: Sequence[VerifiedChunk], user: str | None = None
    ) -> tuple[int, int]: ...
    def open_upload(self, engagement_id: int, user: str | None = None) -> ChunkUpload: ...
    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]: ...
    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None: ...
    async def get_manifests(
        self, engagement_id: int, contents: Sequence[str]
    ) -> dict[str, Manifest]: ...  # those found, by content id


@runtime_checkable
class RecordSpanReader(Protocol):
    """A chunk store that can answer runs of chunks stored back to back with one read each
    (storage/spanread.py); None when they are not, and the caller uses ``read_chunks``."""

    async def read_record_spans(
        self, engagement_id: int, hashes: Sequence[str], max_bytes: int, max_spans: int,
        piece_bytes: int,
    ) -> list[bytes] | None: ...


class ChangeLogStore(Protocol):
    """The change log: commit, the feed, the snapshot, and the store's identity (history checks)."""

    async def commit(
        self,
        engagement_id: int,
        user: str,
        session: str | None,
        batch: str,
        changes: Sequence[ProposedChange],
        manifests: dict[str, PutManifest],
        now: datetime,
        copy: str | None = None,  # the Smartsync-Copy header: an abandoned copy is refused
        check: HistoryCheck | None = None,  # the copy's view of the log (storage/history.py)
    ) -> CommitResult: ...
    async def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]: ...
    async def store_identity(self) -> tuple[str, int]: ...  # (store id, generation)
    async def bump_generation(self) -> tuple[str, int]: ...
    async def record_token(self, engagement_id: int, seq: int) -> str | None: ...
    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]: ...
    async def head(self, engagement_id: int) -> int: ...


class WorkflowStore(Protocol):
    """The engagement workflow (docs/workflow.md): locks, history and restore, sync copies,
    sign-off and retention. ``actor`` names who acted, for the audit trail."""

    async def engagement_status(self, engagement_id: int) -> EngagementStatus: ...
    async def checkout(
        self, engagement_id: int, path: str, user: str, session: str | None, duration: timedelta | None
    ) -> Lock: ...
    async def checkin(self, engagement_id: int, path: str, user: str) -> Lock: ...
    async def break_lock(self, engagement_id: int, path: str, actor: str, reason: str) -> Lock: ...
    async def list_locks(self, engagement_id: int) -> list[Lock]: ...
    async def history(self, engagement_id: int, path: str) -> list[VersionRecord]: ...
    async def restore(
        self, engagement_id: int, user: str, session: str | None, copy: str | None, path: str,
        version: int, batch: str, now: datetime,
    ) -> CommitResult: ...
    async def export_at(self, engagement_id: int, at: datetime) -> tuple[int, list[ExportFile]]: ...
    async def register_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None,
        key_hash: str | None = None,  # SHA-256 of the copy's secret (storage/wipes.py)
    ) -> CopyRecord: ...
    async def report_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None,
        unsynced: int, since: datetime | None, key_hash: str | None = None,
    ) -> CopyRecord: ...
    async def list_copies(self, engagement_id: int) -> list[CopyRecord]: ...
    async def abandon_copy(self, engagement_id: int, copy_id: str, actor: str) -> CopyRecord: ...
    async def finalize(
        self, engagement_id: int, actor: str, reason: str, force: bool
    ) -> tuple[EngagementStatus, list[CopyRecord]]: ...
    async def reopen(self, engagement_id: int, actor: str, reason: str) -> EngagementStatus: ...
    async def set_retention(self, engagement_id: int, days: int | None, actor: str) -> None: ...


class AuditStore(Protocol):
    """The audit trail: export and verification of the hash chains."""

    async def audit_records(self, engagement_id: int) -> list[AuditRecord]: ...
    async def verify_audit(self, engagement: str | None) -> list[ChainReport]: ...


class MaintenanceStore(Protocol):
    """Operations: health, consistency check, garbage collection."""

    async def check_health(self) -> dict[str, str]: ...
    async def fsck(self) -> list[FsckProblem]: ...
    async def gc(self, engagement_id: int, grace: timedelta) -> GcReport: ...


class ServerStore(
    AccountStore, ChunkStore, ChangeLogStore, WorkflowStore, AuditStore, MaintenanceStore, Protocol
):
    """The whole store: every role. ``SqlServerStore`` implements it."""
