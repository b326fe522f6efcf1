"""The chunk and change-log roles of the in-memory test store (``memory_store``).

``MemoryChangeLog`` keeps chunks, manifests, change records and files in dictionaries and
decides commits with the same pure rules as the SQL store (``core.commit_rules`` over a
``storage.headview.LoadedHeadView``; record hashes from ``core.audit``; history checks from
``storage.history.check_view``), so tests of code above the store see the same answers. It
implements ``storage.api.ChunkStore`` and ``ChangeLogStore`` in full except the workflow rules
a commit also obeys in SQL (locks, a finalized engagement, an abandoned copy): this fake has no
workflow role. Not for production use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from smartsyncd.core import commit_rules, manifest
from smartsyncd.core.audit import CHANGE_DOMAIN, GENESIS, change_fields, link
from smartsyncd.core.errors import BadRequest, MissingChunks, NotFound, UnknownContent
from smartsyncd.core.ignore import EngagementRules
from smartsyncd.core.model import (
    Change,
    ChunkRef,
    FileState,
    HistoryCheck,
    Manifest,
    Outcome,
    ProposedChange,
    VerifiedChunk,
)
from smartsyncd.core.paths import fold_key
from smartsyncd.storage.api import (
    ChunkUpload,
    CommitResult,
    CommitResultItem,
    EngagementRecord,
    PutManifest,
    StoredChunk,
)
from smartsyncd.storage.db import MAX_BATCH_KEY, checked_text, hash_bytes, ts
from smartsyncd.storage.headview import LoadedHeadView
from smartsyncd.storage.history import check_view


class MemoryChangeLog:
    """Chunks, manifests and the change log of every engagement, in dictionaries."""

    engagements: dict[str, EngagementRecord]

    def __init__(self) -> None:
        self.chunks: dict[tuple[int, str], StoredChunk] = {}
        self.manifests: dict[tuple[int, str], Sequence[ChunkRef]] = {}
        self.changes: dict[int, list[Change]] = {}
        self.files: dict[int, dict[str, FileState]] = {}
        self.batches: dict[tuple[int, str], tuple[str, CommitResult]] = {}
        self.identity = ("memory", 1)
        self.ignore: dict[int, EngagementRules] = {}  # engagement id -> published rules

    def _check(self) -> None:  # MemoryServerStore: raise Unavailable when told to
        raise NotImplementedError

    def _engagement(self, engagement_id: int) -> EngagementRecord:
        self._check()
        if not isinstance(engagement_id, int) or isinstance(engagement_id, bool):
            raise BadRequest("engagement id must be an integer")
        for e in self.engagements.values():
            if e.id == engagement_id:
                return e
        raise NotFound(f"no engagement with id {engagement_id}")

    # -- chunks and manifests

    async def missing_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(hashes))
        for h in wanted:
            hash_bytes(h, "chunk hash")
        self._engagement(engagement_id)
        return [h for h in wanted if (engagement_id, h) not in self.chunks]

    async def store_chunks(
        self, engagement_id: int, chunks: Sequence[VerifiedChunk], user: str | None = None
    ) -> tuple[int, int]:
        self._engagement(engagement_id)
        stored = 0
        for c in {c.hash: c for c in chunks}.values():
            if (engagement_id, c.hash) not in self.chunks:
                self.chunks[engagement_id, c.hash] = StoredChunk(c.hash, c.codec, c.raw_size, c.payload)
                stored += 1
        return stored, len(chunks) - stored

    def open_upload(self, engagement_id: int, user: str | None = None) -> ChunkUpload:
        return _MemoryUpload(self.store_chunks, engagement_id)

    async def read_chunks(self, engagement_id: int, hashes: Sequence[str]) -> list[StoredChunk]:
        for h in hashes:
            hash_bytes(h, "chunk hash")
        self._engagement(engagement_id)
        unknown = [h for h in dict.fromkeys(hashes) if (engagement_id, h) not in self.chunks]
        if unknown:
            raise NotFound(f"{len(unknown)} chunk(s) unknown", chunks=unknown)
        return [self.chunks[engagement_id, h] for h in hashes]

    async def get_manifest(self, engagement_id: int, content: str) -> Manifest | None:
        hash_bytes(content, "content id")
        self._engagement(engagement_id)
        refs = self.manifests.get((engagement_id, content))
        if refs is None:
            return None
        return Manifest(content=content, size=sum(c.size for c in refs), chunks=refs)

    async def get_manifests(self, engagement_id: int, contents: Sequence[str]) -> dict[str, Manifest]:
        found: dict[str, Manifest] = {}
        for content in dict.fromkeys(contents):
            m = await self.get_manifest(engagement_id, content)
            if m is not None:
                found[content] = m
        return found

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
        checked_text(batch, "batch", MAX_BATCH_KEY)
        checked_text(user, "user")
        when = ts(now)
        record = self._engagement(engagement_id)
        head = record.head
        key = commit_rules.batch_key(user, batch)
        digest = commit_rules.batch_digest(changes)
        previous = self.batches.get((engagement_id, key))
        if previous is not None:
            commit_rules.check_replay(previous[0], digest, batch)
            return dataclasses.replace(previous[1], changes=(), replayed=True)
        if check is not None:
            check_view(check, self.identity, head, lambda seq: self._token(engagement_id, seq))
        files = self.files.setdefault(engagement_id, {})
        paths = commit_rules.validate_batch(changes)
        view = LoadedHeadView(
            (f.path, fold_key(f.path), f.seq, None if f.content is None else bytes.fromhex(f.content), f.size)
            for f in files.values()
        )
        rules = self.ignore.get(engagement_id)
        outcomes = commit_rules.plan_commit(
            changes, view, user, now, paths=paths, ignored=None if rules is None else rules.ignores
        )
        new = self._resolve(engagement_id, changes, outcomes, manifests)
        results, written = _number(outcomes, head, user, session, now, batch)
        log = self.changes.setdefault(engagement_id, [])
        prev = bytes.fromhex(log[-1].record_hash) if log and log[-1].record_hash else GENESIS
        chain = link(CHANGE_DOMAIN, prev, [
            change_fields(c.seq, c.path, c.kind, c.content, c.size, c.prev_seq, c.user, c.session, when,
                          c.conflict_of, c.batch, c.mtime_ns, c.readonly)
            for c in written
        ])
        written = [dataclasses.replace(c, record_hash=h.hex()) for c, (_, h) in zip(written, chain, strict=True)]
        for content, refs in new.items():
            self.manifests.setdefault((engagement_id, content), refs)
        log.extend(written)
        for c in written:
            files[c.path] = FileState(
                path=c.path, seq=c.seq, content=c.content, size=c.size, mtime_ns=c.mtime_ns,
                readonly=c.readonly,
            )
        seq = head + len(written)
        self.engagements[record.name] = dataclasses.replace(record, head=seq)
        result = CommitResult(
            head=seq, results=tuple(results), changes=tuple(written),
            head_hash=written[-1].record_hash if written else None,
        )
        self.batches[engagement_id, key] = (digest, result)
        return result

    def _resolve(
        self,
        engagement_id: int,
        proposals: Sequence[ProposedChange],
        outcomes: Sequence[Outcome],
        manifests: dict[str, PutManifest],
    ) -> dict[str, Sequence[ChunkRef]]:
        """The manifests the batch adds, checked as the SQL store checks them."""
        new: dict[str, Sequence[ChunkRef]] = {}
        for proposal, o in zip(proposals, outcomes, strict=True):
            if o.write_path is None or o.kind != "put" or o.content is None:
                continue
            known = new.get(o.content) or self.manifests.get((engagement_id, o.content))
            if known is not None:
                if sum(c.size for c in known) != o.size:
                    raise BadRequest(f"size {o.size} does not match content {o.content}", path=o.path)
                continue
            sent = manifests.get(o.path) or manifests.get(proposal.path)
            if sent is None:
                raise UnknownContent(f"the server has no manifest for the content of {o.path!r}; send it", path=o.path)
            if sent.content != o.content:
                raise BadRequest("the manifest sent is for a different content", path=o.path)
            refs = self._sent_refs(engagement_id, o.path, sent, new)
            if manifest.content_id(refs) != o.content:
                raise BadRequest("the manifest does not hash to the content id", path=o.path)
            if sum(c.size for c in refs) != o.size:
                raise BadRequest("the manifest's chunk sizes do not add up to the size", path=o.path)
            new[o.content] = refs
        wanted = {c.hash: c.size for refs in new.values() for c in refs}
        missing = [h for h in wanted if (engagement_id, h) not in self.chunks]
        if missing:
            raise MissingChunks(f"{len(missing)} chunk(s) must be uploaded first", chunks=missing)
        for h, size in wanted.items():
            if self.chunks[engagement_id, h].raw_size != size:
                raise BadRequest(f"the manifest gives chunk {h} {size} bytes")
        return new

    def _sent_refs(
        self, engagement_id: int, path: str, sent: PutManifest, new: dict[str, Sequence[ChunkRef]]
    ) -> Sequence[ChunkRef]:
        if sent.chunks is not None:
            for c in sent.chunks:
                if not manifest.is_hash(c.hash) or not isinstance(c.size, int) or c.size <= 0:
                    raise BadRequest("a manifest entry is malformed", path=path)
            return tuple(sent.chunks)
        if sent.delta_base is None or sent.delta_ops is None:
            raise BadRequest("a put manifest needs a chunk list or a delta", path=path)
        hash_bytes(sent.delta_base, "delta base")
        base = new.get(sent.delta_base) or self.manifests.get((engagement_id, sent.delta_base))
        if base is None:
            raise UnknownContent(
                f"the delta base {sent.delta_base} of {path!r} is unknown; send the full manifest", path=path
            )
        return manifest.apply_delta(base, sent.delta_ops)

    async def changes_since(
        self, engagement_id: int, since: int, limit: int, check: HistoryCheck | None = None
    ) -> tuple[int, list[Change]]:
        if not isinstance(since, int) or since < 0:
            raise BadRequest("since must be a non-negative integer")
        if not isinstance(limit, int) or limit < 1:
            raise BadRequest("limit must be a positive integer")
        head = self._engagement(engagement_id).head
        if check is not None:
            check_view(check, self.identity, head, lambda seq: self._token(engagement_id, seq))
        return head, [c for c in self.changes.get(engagement_id, []) if c.seq > since][:limit]

    async def store_identity(self) -> tuple[str, int]:
        self._check()
        return self.identity

    async def bump_generation(self) -> tuple[str, int]:
        self._check()
        self.identity = (self.identity[0], self.identity[1] + 1)
        return self.identity

    async def record_token(self, engagement_id: int, seq: int) -> str | None:
        self._check()
        return self._token(engagement_id, seq)

    def _token(self, engagement_id: int, seq: int) -> str | None:
        log = self.changes.get(engagement_id, [])
        return log[seq - 1].record_hash if 0 < seq <= len(log) else None

    async def snapshot(self, engagement_id: int) -> tuple[int, list[FileState]]:
        head = self._engagement(engagement_id).head
        files = self.files.get(engagement_id, {})
        return head, sorted((f for f in files.values() if f.content is not None), key=lambda f: f.path)

    async def head(self, engagement_id: int) -> int:
        return self._engagement(engagement_id).head


def _number(
    outcomes: Sequence[Outcome], head: int, user: str, session: str | None, now: datetime, batch: str
) -> tuple[list[CommitResultItem], list[Change]]:
    results: list[CommitResultItem] = []
    written: list[Change] = []
    for o in outcomes:
        if o.write_path is None:
            results.append(CommitResultItem(path=o.path, status=o.status, seq=None, current_seq=o.current_seq))
            continue
        seq = head + len(written) + 1
        is_put = o.kind == "put"
        conflict = o.status == "conflict"
        written.append(Change(
            seq=seq, path=o.write_path, kind=o.kind, content=o.content if is_put else None,
            size=o.size if is_put else 0, prev_seq=o.prev_seq, user=user, session=session, time=now,
            conflict_of=o.path if conflict else None, batch=batch,
            mtime_ns=o.mtime_ns if is_put else None, readonly=o.readonly if is_put else None,
        ))
        results.append(CommitResultItem(
            path=o.path, status=o.status, seq=seq, conflict_path=o.write_path if conflict else None,
            current_seq=o.current_seq,
        ))
    return results, written


class _MemoryUpload:
    """``ChunkUpload`` over ``store_chunks``: chunks are kept until ``finish`` stores them."""

    def __init__(
        self, store: Callable[[int, Sequence[VerifiedChunk]], Awaitable[tuple[int, int]]], engagement_id: int
    ) -> None:
        self._store = store
        self._engagement_id = engagement_id
        self._chunks: dict[str, VerifiedChunk] = {}
        self._done = False

    async def append(self, chunks: Sequence[VerifiedChunk]) -> None:
        if self._done:
            raise ValueError("upload already finished")
        for c in chunks:
            self._chunks.setdefault(c.hash, c)

    async def finish(self, total: int) -> tuple[int, int]:
        if self._done:
            raise ValueError("upload already finished")
        self._done = True
        stored, _ = await self._store(self._engagement_id, list(self._chunks.values()))
        return stored, total - stored

    async def abort(self) -> None:
        self._done = True
        self._chunks.clear()
