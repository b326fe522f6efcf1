"""The async metadata store: ``SqlServerStore``, which runs the storage modules on thread pools.

``SqlServerStore`` implements ``storage.api.ServerStore``. Every method is a coroutine that runs
a synchronous function over a ``db.MetadataDB`` on the DB pool (``accounts``, ``chunks``,
``changelog``, ``commit``, ``workflow``, ``locks``, ``copies``, ``audit``, ``gc``, ``history``,
``principals``, ``fsck``) and pack I/O on the file pool (``deferToThreadPool``), so the reactor thread never
blocks. SQLite: one DB thread, one connection. PostgreSQL: N DB threads, each with its own
connection (opened on first use, replaced when broken); commits serialize on the engagement row
(``SELECT ... FOR UPDATE``), so several daemons can share the database.

Chunk upload (``SqlServerStore.store_chunks``): drop chunks already present, write the rest as one
pack (fsynced, see ``packs``), then record the pack and chunk rows in one transaction; only then
does the caller acknowledge. A crash between leaves an orphan pack, never a dangling row.

``Dialect``, ``MetadataDB`` and a few names of the modules split out of this one are re-exported
for existing importers.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from smartsyncd.core.errors import StorageFull, SyncError, Unavailable
from smartsyncd.core.ignore import EngagementRules
from smartsyncd.core.locks import Lock
from smartsyncd.core.model import Change, FileState, HistoryCheck, Manifest, ProposedChange, Role
from smartsyncd.storage import (
    accounts,
    audit,
    changelog,
    commit,
    copies,
    gc,
    history,
    ignorerules,
    locks,
    principals,
    quotas,
    volumes,
    workflow,
)
from smartsyncd.storage import chunks as chunk_index
from smartsyncd.storage.api import (
    TOOL_ACTOR,
    AuditRecord,
    ChainReport,
    ChunkUpload,
    CommitResult,
    CopyRecord,
    EngagementRecord,
    EngagementStatus,
    ExportFile,
    FsckProblem,
    GcReport,
    Grant,
    GrantCheck,
    PrincipalBlock,
    PrincipalKind,
    PutManifest,
    SessionRecord,
    StoredChunk,
    UserRecord,
    VerifiedChunk,
    VersionRecord,
)
from smartsyncd.storage.commit import COMMIT_GC_THRESHOLD, fewer_gc_passes
from smartsyncd.storage.db import Dialect, MetadataDB
from smartsyncd.storage.fsck import check_store
from smartsyncd.storage.headview import KeyedHeadView, LoadedHeadView, SqlHeadView
from smartsyncd.storage.lifecycle_store import LifecycleStore
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.review_store import ReviewStore
from smartsyncd.storage.spanread import SpanReadStore
from smartsyncd.storage.statusview import StatusViewStore
from smartsyncd.storage.upload import PackUpload
from smartsyncd.storage.wipes import WipeStore

__all__ = [
    "COMMIT_GC_THRESHOLD",
    "Dialect",
    "KeyedHeadView",
    "LoadedHeadView",
    "MetadataDB",
    "SqlHeadView",
    "SqlServerStore",
    "fewer_gc_passes",
]

T = TypeVar("T")

log = Logger(namespace="smartsyncd.storage")


class SqlServerStore(LifecycleStore, StatusViewStore, WipeStore, ReviewStore, SpanReadStore):
    """``storage.api.ServerStore`` over ``MetadataDB`` (DB thread) and ``PackStore`` (file pool)."""

    def __init__(
        self,
        *,
        reactor: IReactorThreads,
        db: MetadataDB | None,
        packs: PackStore,
        db_pool: ThreadPool,
        file_pool: ThreadPool,
        clock: Callable[[], datetime] | None = None,
        connect: Callable[[], MetadataDB] | None = None,
        dialect: Dialect | None = None,
        reader: MetadataDB | None = None,
        read_pool: ThreadPool | None = None,
    ) -> None:
        """``db``: the one connection, used by the DB pool's single thread (SQLite).

        Or ``db=None`` and ``connect``: each DB pool thread opens its own connection on first
        use and replaces it when the driver reports it broken (PostgreSQL: N threads, N
        connections, a database restart heals itself).

        ``reader`` and ``read_pool`` (SQLite): a second, read-only connection used only by the
        read pool's single thread, for pure reads (``run_read``): missing-chunk queries, session
        and role look-ups, change feeds. In WAL mode it reads the last committed state while a
        commit holds the writer, so those no longer queue behind commit batches. Without them
        (PostgreSQL: the pool's connections already read concurrently) reads use the DB pool.
        """
        if (reader is None) != (read_pool is None):
            raise ValueError("give reader and read_pool together")
        if (db is None) == (connect is None):
            raise ValueError("give either db or connect")
        self._reactor = reactor
        self._meta = db
        self._connect = connect
        self._dialect: Dialect = db.dialect if db is not None else dialect  # type: ignore[assignment]
        if self._dialect is None:
            raise ValueError("connect needs a dialect")
        self._local = threading.local()
        self._opened: list[MetadataDB] = []
        self._opened_lock = threading.Lock()
        self.packs = packs
        self._db_pool = db_pool
        self._file_pool = file_pool
        self._reader = reader
        self._read_pool = read_pool
        self._closed = False
        self._now = clock or (lambda: datetime.now(UTC))

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    # -- running work off the reactor

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(meta, *args)`` on the DB thread, mapping driver outages to ``Unavailable``."""
        if self._closed:
            raise Unavailable("the metadata store is closed")
        result: T = await deferToThreadPool(self._reactor, self._db_pool, self._guard_db, fn, *args)
        return result

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the pure read ``fn(meta, *args)`` on the read connection when there is one.

        It sees committed data only, as of its own read transaction: a commit finished before
        this call is visible, one still running is not. Callers must not depend on more (a
        chunk answered missing that a concurrent upload just recorded is sent again; one
        answered present is in a committed pack row, written only after the pack was durable).
        """
        if self._reader is None or self._read_pool is None:
            return await self.run_db(fn, *args)
        if self._closed:
            raise Unavailable("the metadata store is closed")
        result: T = await deferToThreadPool(self._reactor, self._read_pool, self._guard_read, fn, *args)
        return result

    def _guard_read(self, fn: Callable[..., T], *args: Any) -> T:
        reader = self._reader
        assert reader is not None
        return self._guard_with(lambda: reader, fn, *args)

    def _thread_db(self) -> MetadataDB:
        if self._meta is not None:
            return self._meta
        meta: MetadataDB | None = getattr(self._local, "meta", None)
        if meta is None:
            assert self._connect is not None
            meta = self._connect()
            self._local.meta = meta
            with self._opened_lock:
                self._opened.append(meta)
        return meta

    def _drop_thread_db(self, meta: MetadataDB) -> None:
        self._local.meta = None
        with self._opened_lock:
            if meta in self._opened:
                self._opened.remove(meta)
        try:
            meta.close()
        except Exception as e:  # noqa: BLE001 - it is broken already; a new one replaces it
            log.debug("closing a broken connection: {error}", error=repr(e))

    def _guard_db(self, fn: Callable[..., T], *args: Any) -> T:
        return self._guard_with(self._thread_db, fn, *args)

    def _guard_with(self, pick: Callable[[], MetadataDB], fn: Callable[..., T], *args: Any) -> T:
        dialect = self._dialect
        attempt = 0
        while True:
            attempt += 1
            meta: MetadataDB | None = None
            try:
                meta = pick()
                return fn(meta, *args)
            except SyncError:
                raise
            except dialect.retry_errors as e:
                # The transaction was rolled back as a whole (deadlock, serialization): rerun.
                if attempt >= 5:
                    log.warn("database conflict, giving up: {error}", error=repr(e))
                    raise Unavailable("the database is busy; retry") from e
                log.info("database conflict, retrying: {error}", error=repr(e))
            except dialect.unavailable_errors as e:
                if not dialect.is_outage(e):
                    raise
                log.warn("database error: {error}", error=repr(e))
                if meta is not None and self._meta is None and dialect.is_broken(meta.conn):
                    self._drop_thread_db(meta)
                raise Unavailable("the database is unavailable") from e
            except Exception as e:
                if self._closed:  # the store closed under a request (shutdown): not a bug
                    raise Unavailable("the metadata store is closed") from e
                raise

    async def run_file(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(packs, *args)`` on the file pool, mapping OS errors to ``Unavailable``."""
        if self._closed:
            raise Unavailable("the chunk store is closed")
        result: T = await deferToThreadPool(self._reactor, self._file_pool, self._guard_file, fn, *args)
        return result

    def _guard_file(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self.packs, *args)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("chunk storage is full: {error}", error=repr(e))
                raise StorageFull(
                    "the server's chunk storage is full; nothing was stored (ask the firm's IT "
                    "to free space, then sync again)"
                ) from e
            log.warn("chunk storage error: {error}", error=repr(e))
            raise Unavailable("chunk storage is unavailable") from e

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._reader is not None and self._read_pool is not None:
                await deferToThreadPool(self._reactor, self._read_pool, self._reader.close)
            if self._meta is not None:
                await deferToThreadPool(self._reactor, self._db_pool, self._meta.close)
            else:
                await deferToThreadPool(self._reactor, self._db_pool, self._close_opened)
        finally:
            self._closed = True
            if self._read_pool is not None:
                self._read_pool.stop()
            self._db_pool.stop()
            self._file_pool.stop()

    def _close_opened(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for meta in opened:
            try:
                meta.close()
            except Exception as e:  # noqa: BLE001 - closing; nothing more to do with it
                log.debug("closing a connection: {error}", error=repr(e))

    # -- users

    async def add_user(self, name: str, password_hash: str | None) -> UserRecord:
        return await self.run_db(accounts.add_user, name, password_hash, self._now())

    async def set_password(self, name: str, password_hash: str) -> None:
        await self.run_db(accounts.set_password, name, password_hash)

    async def upgrade_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        return await self.run_db(accounts.upgrade_password_hash, name, old_hash, new_hash)

    async def get_user(self, name: str) -> UserRecord | None:
        return await self.run_read(accounts.get_user, name)

    async def list_users(self) -> list[UserRecord]:
        return await self.run_read(accounts.list_users)

    async def set_user_disabled(self, name: str, disabled: bool) -> None:
        await self.run_db(accounts.set_user_disabled, name, disabled)

    async def remove_user(self, name: str) -> None:
        await self.run_db(accounts.remove_user, name)

    # -- engagements and grants

    async def create_engagement(self, name: str, title: str, volume: str | None = None) -> EngagementRecord:
        record = await self.run_db(accounts.create_engagement, name, title, self._now(), volume)
        self.packs.place(record.id, volume)
        return record

    async def get_engagement(self, name: str) -> EngagementRecord | None:
        return await self.run_read(accounts.get_engagement, name)

    async def list_engagements(self) -> list[EngagementRecord]:
        return await self.run_read(accounts.list_engagements)

    async def grant(
        self, grant: Grant, actor: str = TOOL_ACTOR, check: GrantCheck | None = None
    ) -> None:
        await self.run_db(accounts.grant, grant, self._now(), actor, check)

    async def revoke(
        self, engagement: str, kind: PrincipalKind, principal: str, actor: str = TOOL_ACTOR,
        check: GrantCheck | None = None,
    ) -> bool:
        return await self.run_db(accounts.revoke, engagement, kind, principal, self._now(), actor, check)

    async def list_grants(self, engagement: str | None = None) -> list[Grant]:
        return await self.run_read(accounts.list_grants, engagement)

    async def role_for(self, engagement: str, principal: str, groups: Sequence[str]) -> Role | None:
        return await self.run_read(accounts.role_for, engagement, principal, tuple(groups))

    async def set_ignore_rules(self, engagement: str, text: str | None, actor: str = TOOL_ACTOR) -> str | None:
        return await self.run_db(ignorerules.set_ignore_rules, engagement, text, actor, self._now())

    async def ignore_rules(self, engagement_id: int) -> EngagementRules | None:
        return await self.run_read(ignorerules.ignore_rules, engagement_id)

    # -- principals of any backend

    async def block_principal(self, block: PrincipalBlock) -> None:
        await self.run_db(principals.block_principal, block)

    async def unblock_principal(self, principal: str) -> bool:
        return await self.run_db(principals.unblock_principal, principal, self._now())

    async def principal_block(self, principal: str) -> PrincipalBlock | None:
        return await self.run_read(principals.principal_block, principal)

    async def list_principal_blocks(self) -> list[PrincipalBlock]:
        return await self.run_read(principals.list_principal_blocks)

    async def claim_name_grants(self, principal: str, name: str) -> int:
        return await self.run_db(principals.claim_name_grants, principal, name, self._now())

    # -- sessions

    async def create_session(self, session: SessionRecord) -> None:
        await self.run_db(accounts.create_session, session)

    async def get_session(self, token_hash: str) -> SessionRecord | None:
        return await self.run_read(accounts.get_session, token_hash)

    async def update_session(self, session: SessionRecord) -> None:
        await self.run_db(accounts.update_session, session)

    async def delete_session(self, token_hash: str) -> None:
        await self.run_db(accounts.delete_session, token_hash)

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        return await self.run_read(accounts.list_sessions, user)

    async def end_sessions(
        self, *, user: str | None = None, session_id: str | None = None, keep: str | None = None
    ) -> int:
        return await self.run_db(accounts.end_sessions, user, session_id, keep)

    async def record_login_failure(self, key: str, at: float, forget_before: float) -> None:
        await self.run_db(accounts.record_login_failure, key, at, forget_before)

    async def login_failures_since(self, key: str, since: float, limit: int) -> list[float]:
        return await self.run_read(accounts.login_failures_since, key, since, limit)

    async def clear_login_failures(self, key: str) -> None:
        await self.run_db(accounts.clear_login_failures, key)

    # -- chunks and manifests

    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]:
        return await self.run_read(chunk_index.missing_chunks, engagement_id, tuple(hashes))

    async def store_chunks(
        self, engagement_id: int, chunks: Sequence[VerifiedChunk], user: str | None = None
    ) -> tuple[int, int]:
        unique = list({c.hash: c for c in chunks}.values())
        missing = set(await self.missing_chunks(engagement_id, [c.hash for c in unique]))
        to_write = [(c.hash, c.codec, c.raw_size, c.payload) for c in unique if c.hash in missing]
        if not to_write:
            return 0, len(chunks)
        incoming = sum(len(w[3]) for w in to_write)
        await self.run_read(quotas.check_stored, engagement_id, user, incoming)  # before any write
        pack = await self.run_file(PackStore.write_pack, engagement_id, to_write)
        stored = await volumes.record_written_pack(
            self, chunk_index.record_pack, engagement_id, pack, self._now(), user
        )
        return stored, len(chunks) - stored

    def open_upload(self, engagement_id: int, user: str | None = None) -> ChunkUpload:
        return PackUpload(self, engagement_id, self._now, user)

    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]:
        where = await self.run_read(chunk_index.chunk_locations, engagement_id, tuple(hashes))

        def read_all(packs: PackStore) -> dict[str, bytes]:
            by_pack: dict[str, list[tuple[str, int, int]]] = {}
            for h, (pack, offset, stored_size, _, _) in where.items():
                by_pack.setdefault(pack, []).append((h, offset, stored_size))
            out: dict[str, bytes] = {}
            for pack, wanted in by_pack.items():
                data = packs.read_ranges(engagement_id, pack, [(o, n) for _, o, n in wanted])
                out.update(zip([h for h, _, _ in wanted], data, strict=True))
            return out

        payloads = await self.run_file(read_all)
        return [
            StoredChunk(hash=h, codec=where[h][3], raw_size=where[h][4], payload=payloads[h]) for h in hashes
        ]

    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None:
        return await self.run_read(chunk_index.get_manifest, engagement_id, content)

    async def get_manifests(self, engagement_id: int, contents: Sequence[str]) -> dict[str, Manifest]:
        return await self.run_read(chunk_index.get_manifests, engagement_id, tuple(contents))

    # -- the change log

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
        return await self.run_db(
            commit.commit, engagement_id, user, session, batch, tuple(changes), dict(manifests), now, copy,
            check,
        )

    async def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]:
        return await self.run_read(changelog.changes_since, engagement_id, since, limit, check)

    async def store_identity(self) -> tuple[str, int]:
        """(store id, generation): ``storage/history.py``."""
        return await self.run_read(history.store_identity)

    async def record_token(self, engagement_id: int, seq: int) -> str | None:
        """The record token at ``seq`` (``storage/history.py``)."""
        return await self.run_read(history.record_token, engagement_id, seq)

    async def bump_generation(self) -> tuple[str, int]:
        """Start a new generation after a restore or rollback; the new (store id, generation)."""
        return await self.run_db(history.bump_generation)

    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]:
        return await self.run_read(changelog.snapshot, engagement_id)

    async def head(self, engagement_id: int) -> int:
        return await self.run_read(changelog.head, engagement_id)

    # -- operations

    async def check_health(self) -> dict[str, str]:
        health = {"database": "ok", "storage": "ok"}
        try:
            await self.run_db(MetadataDB.ping)
        except Exception as e:
            log.warn("health check: database failed: {error}", error=repr(e))
            health["database"] = "error"
        try:
            await self.run_file(PackStore.probe)
        except Exception as e:
            log.warn("health check: storage failed: {error}", error=repr(e))
            health["storage"] = "error"
        return health

    async def fsck(self) -> list[FsckProblem]:
        return await check_store(self)

    # -- engagement workflow (storage/workflow.py, locks.py, copies.py, audit.py)

    async def engagement_status(self, engagement_id: int) -> EngagementStatus:
        return await self.run_db(workflow.engagement_status, engagement_id)

    async def checkout(
        self, engagement_id: int, path: str, user: str, session: str | None, duration: timedelta | None
    ) -> Lock:
        return await self.run_db(locks.checkout, engagement_id, path, user, session, self._now(), duration)

    async def checkin(self, engagement_id: int, path: str, user: str) -> Lock:
        return await self.run_db(locks.checkin, engagement_id, path, user, self._now())

    async def break_lock(self, engagement_id: int, path: str, actor: str, reason: str) -> Lock:
        return await self.run_db(locks.break_lock, engagement_id, path, actor, reason, self._now())

    async def list_locks(self, engagement_id: int) -> list[Lock]:
        return await self.run_db(locks.list_locks, engagement_id, self._now())

    async def history(self, engagement_id: int, path: str) -> list[VersionRecord]:
        return await self.run_db(locks.history, engagement_id, path)

    async def restore(
        self, engagement_id: int, user: str, session: str | None, copy: str | None, path: str,
        version: int, batch: str, now: datetime,
    ) -> CommitResult:
        return await self.run_db(locks.restore, engagement_id, user, session, copy, path, version, batch, now)

    async def export_at(self, engagement_id: int, at: datetime) -> tuple[int, list[ExportFile]]:
        return await self.run_db(locks.export_at, engagement_id, at)

    async def register_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None,
        key_hash: str | None = None,
    ) -> CopyRecord:
        return await self.run_db(
            copies.register_copy, engagement_id, copy_id, user, host, session, self._now(), key_hash
        )

    async def report_copy(
        self, engagement_id: int, copy_id: str, user: str, host: str, session: str | None,
        unsynced: int, since: datetime | None, key_hash: str | None = None,
    ) -> CopyRecord:
        return await self.run_db(
            copies.report_copy, engagement_id, copy_id, user, host, session, unsynced, since, self._now(),
            key_hash,
        )

    async def list_copies(self, engagement_id: int) -> list[CopyRecord]:
        return await self.run_db(copies.list_copies, engagement_id)

    async def abandon_copy(self, engagement_id: int, copy_id: str, actor: str) -> CopyRecord:
        return await self.run_db(copies.abandon_copy, engagement_id, copy_id, actor, self._now())

    async def finalize(
        self, engagement_id: int, actor: str, reason: str, force: bool
    ) -> tuple[EngagementStatus, list[CopyRecord]]:
        return await self.run_db(workflow.finalize, engagement_id, actor, reason, force, self._now())

    async def reopen(self, engagement_id: int, actor: str, reason: str) -> EngagementStatus:
        return await self.run_db(workflow.reopen, engagement_id, actor, reason, self._now())

    async def set_retention(self, engagement_id: int, days: int | None, actor: str) -> None:
        await self.run_db(workflow.set_retention, engagement_id, days, actor, self._now(), self.firm_min_retention_days)

    async def audit_records(self, engagement_id: int) -> list[AuditRecord]:
        return await self.run_db(audit.audit_records, engagement_id)

    async def verify_audit(self, engagement: str | None) -> list[ChainReport]:
        """Verify one engagement's change log and audit chain, or (None) every engagement's
        and the global chain."""
        if engagement is not None:
            eid = await self.run_db(MetadataDB._engagement_id, engagement)
            return await self.run_db(audit.verify_engagement, eid)
        reports: list[ChainReport] = []
        for eid, _name, _head in await self.run_db(changelog.engagement_ids):
            reports += await self.run_db(audit.verify_engagement, eid)
        reports.append(await self.run_db(audit.verify_global))
        return reports

    async def gc(self, engagement_id: int, grace: timedelta) -> GcReport:
        """Collect what no retained version needs (see storage/gc.py); pack files are
        deleted after the metadata transaction, orphans only when older than ``grace``."""
        started = time.time()  # the file system's clock (mtimes), not the injected one
        report, dead, recorded = await self.run_db(
            gc.gc_engagement, engagement_id, self._now(), grace, self.firm_min_retention_days
        )
        if report.skipped:
            return report
        cutoff = self._now().timestamp() - grace.total_seconds()
        keep = await self.run_read(volumes.volumes_in_use, engagement_id)  # own, a move's target
        self.packs.place(engagement_id, keep[0])
        orphans = await self.run_file(gc.drop_packs, engagement_id, dead, recorded, cutoff, started)
        orphans += await self.run_file(volumes.remove_leftovers, engagement_id, keep, cutoff)
        return replace(report, orphan_packs_removed=orphans)
