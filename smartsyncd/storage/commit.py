"""The commit transaction: a batch of changes applied whole or not at all.

``commit`` is one write transaction: idempotency lookup by (engagement, user, batch) -> the
stored answer, replayed if the changes match its digest (else 409); else
``core.commit_rules.plan_commit`` over a ``HeadView`` (``storage/headview``); then every written
put's manifest is resolved (known content, a full chunk list, or a delta against a known
manifest), checked (content id, size, every chunk present) and stored; sequence numbers
head+1.. are assigned in outcome order; changes are inserted (hash-chained, ``storage/audit``),
files upserted (tombstones stay as rows with NULL content), each conflict copy recorded as a
review item (``storage/conflicts``), the head advanced and the answer stored. Any error rolls
everything back. Synchronous functions over a ``MetadataDB``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from smartsyncd.core import commit_rules, manifest
from smartsyncd.core.audit import change_fields
from smartsyncd.core.errors import (
    BadRequest,
    MissingChunks,
    UnknownContent,
)
from smartsyncd.core.model import (
    Change,
    ChunkRef,
    HistoryCheck,
    Outcome,
    ProposedChange,
    is_folder,
)
from smartsyncd.core.paths import fold_key
from smartsyncd.runtime.gcthreshold import raised_gen0_threshold
from smartsyncd.storage import conflicts, headview, history, ignorerules, lifecycle, quotas
from smartsyncd.storage.api import (
    CommitResult,
    CommitResultItem,
    PutManifest,
)
from smartsyncd.storage.audit import chain_changes
from smartsyncd.storage.changelog import CHANGE_COLUMNS
from smartsyncd.storage.chunks import manifest_row, stored_sizes
from smartsyncd.storage.db import (
    MAX_BATCH_KEY,
    MetadataDB,
    checked_text,
    chunks_of,
    hash_bytes,
    ts,
)
from smartsyncd.storage.workflow import check_commit


def _result_to_json(result: CommitResult, digest: str) -> str:
    return json.dumps(
        {
            "digest": digest,
            "head": result.head,
            "head_hash": result.head_hash,
            "results": [
                {
                    "path": r.path,
                    "status": r.status,
                    "seq": r.seq,
                    "conflict_path": r.conflict_path,
                    "current_seq": r.current_seq,
                }
                for r in result.results
            ],
        }
    )


def _result_from_json(text: str) -> CommitResult:
    data = json.loads(text)
    return CommitResult(
        head=data["head"],
        head_hash=data.get("head_hash"),
        results=tuple(CommitResultItem(**item) for item in data["results"]),
        changes=(),
        replayed=True,
    )


# --------------------------------------------------------------------------- cyclic GC

# A commit of 2,000 new files allocates a few hundred thousand short-lived containers (rows,
# outcomes, records): at the default gen-0 threshold (700) that is hundreds of collections,
# and the full ones walk the daemon's whole heap. In a 10,000 x 4 KiB sync they took ~0.2 of
# the daemon's ~2.1 CPU-s. While a commit runs, gen 0 is collected every 10,000 allocations
# instead (process-wide: the GC is; smartsyncd/runtime/gcthreshold.py keeps overlapping holders, a
# client sync in the same process among them, from undoing each other).
COMMIT_GC_THRESHOLD = 10_000


def fewer_gc_passes() -> AbstractContextManager[None]:
    """Raise the gen-0 GC threshold to ``COMMIT_GC_THRESHOLD`` while a commit runs."""
    return raised_gen0_threshold(COMMIT_GC_THRESHOLD)


# ------------------------------------------------------------------------------- the commit


def commit(
    db: MetadataDB,
    engagement_id: int,
    user: str,
    session: str | None,
    batch: str,
    changes: Sequence[ProposedChange],
    manifests: Mapping[str, PutManifest],
    now: datetime,
    copy: str | None = None,
    check: HistoryCheck | None = None,
) -> CommitResult:
    checked_text(batch, "batch", MAX_BATCH_KEY)
    checked_text(user, "user")
    when = ts(now)
    with fewer_gc_passes():
        return db.write(
            lambda: commit_tx(
                db, engagement_id, user, session, batch, changes, manifests, now, when, copy, check=check
            )
        )


def commit_tx(
    db: MetadataDB,
    engagement_id: int,
    user: str,
    session: str | None,
    batch: str,
    changes: Sequence[ProposedChange],
    manifests: Mapping[str, PutManifest],
    now: datetime,
    when: str,
    copy: str | None = None,
    digest: str | None = None,
    check: HistoryCheck | None = None,
) -> CommitResult:
    """The commit inside the caller's write transaction.

    ``digest``: what a replay of ``batch`` must match (by default the changes')."""
    head = _locked_head(db, engagement_id)
    key = commit_rules.batch_key(user, batch)
    if digest is None:
        digest = commit_rules.batch_digest(changes)
    previous = db.one(
        "SELECT result FROM batches WHERE engagement_id = ? AND batch = ?", (engagement_id, key)
    )
    if previous is not None:
        commit_rules.check_replay(json.loads(previous[0]).get("digest"), digest, batch)
        return _result_from_json(previous[0])
    if check is not None:  # bases are seqs of the copy's log: refuse them against another
        history.check_history(db, engagement_id, head, check)
    # abandoned copy, finalized engagement, another user's lock: refuse the whole batch
    check_commit(db, engagement_id, user, copy, changes, now)
    post_report = lifecycle.check_deadline(db, engagement_id, now)  # refuses past the deadline

    paths = commit_rules.validate_batch(changes)  # checked and normalized once per commit
    head_view = headview.head_view(db, engagement_id, len(changes), paths, normalized=True)
    rules = ignorerules.ignore_rules(db, engagement_id)  # refuses puts of ignored paths
    outcomes = commit_rules.plan_commit(
        changes, head_view, user, now, paths=paths, ignored=None if rules is None else rules.ignores
    )
    new_manifests = _resolve_manifests(db, engagement_id, changes, outcomes, manifests)
    results, written = _number_outcomes(outcomes, head, user, session, now, batch)
    quotas.check_logical(db, engagement_id, user, written)  # 507 before any row is written

    _insert_manifests(db, engagement_id, new_manifests)
    _insert_changes(db, engagement_id, head, written, when)
    if any(conflicts.makes_item(c) for c in written):  # the review queue's items
        conflicts.record_conflicts(db, engagement_id, written, when)  # before the files rows move
    _upsert_files(db, engagement_id, written)
    if post_report:
        lifecycle.audit_post_report(db, engagement_id, user, written, now)
    seq = head + len(written)
    db.execute("UPDATE engagements SET head = ? WHERE id = ?", (seq, engagement_id))
    if db.dialect.notify_commit and seq > head:
        db.execute(db.dialect.notify_commit, (f"{engagement_id}:{seq}",))
    result = CommitResult(
        head=seq, results=tuple(results), changes=tuple(written),
        head_hash=written[-1].record_hash if written else None,
    )
    db.execute(
        "INSERT INTO batches (engagement_id, batch, result, created_at) VALUES (?, ?, ?, ?)",
        (engagement_id, key, _result_to_json(result, digest), when),
    )
    return result


def _locked_head(db: MetadataDB, engagement_id: int) -> int:
    """The head, read again after taking the engagement row lock where the dialect has one."""
    head = db.engagement_head(engagement_id)
    if db.dialect.lock_engagement:
        db.execute(db.dialect.lock_engagement, (engagement_id,))
        head = db.engagement_head(engagement_id)
    return head


def _number_outcomes(
    outcomes: Sequence[Outcome], head: int, user: str, session: str | None, now: datetime, batch: str
) -> tuple[list[CommitResultItem], list[Change]]:
    """The answer per proposal and the change records to write, numbered head+1.. in order."""
    results: list[CommitResultItem] = []
    written: list[Change] = []
    seq = head
    for o in outcomes:
        if o.write_path is None:
            results.append(CommitResultItem(path=o.path, status=o.status, seq=None, current_seq=o.current_seq))
            continue
        seq += 1
        is_put = o.kind == "put"
        written.append(
            Change(
                seq=seq,
                path=o.write_path,
                kind=o.kind,
                content=o.content if is_put else None,
                size=o.size if is_put else 0,
                prev_seq=o.prev_seq,
                user=user,
                session=session,
                time=now,
                conflict_of=o.path if o.status == "conflict" else None,
                batch=batch,
                mtime_ns=o.mtime_ns if is_put else None,
                readonly=o.readonly if is_put else None,
            )
        )
        results.append(
            CommitResultItem(
                path=o.path,
                status=o.status,
                seq=seq,
                conflict_path=o.write_path if o.status == "conflict" else None,
                current_seq=o.current_seq,
            )
        )
    return results, written


def _insert_manifests(
    db: MetadataDB, engagement_id: int, new_manifests: Mapping[str, tuple[int, Sequence[ChunkRef], bytes]]
) -> None:
    binary = db.dialect.binary
    db.executemany(
        "INSERT INTO manifests (engagement_id, content, size, chunk_count, body)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (engagement_id, content) DO NOTHING",
        [
            (engagement_id, binary(bytes.fromhex(c)), size, len(refs), binary(body))
            for c, (size, refs, body) in new_manifests.items()
        ],
    )


def _insert_changes(db: MetadataDB, engagement_id: int, head: int, written: Sequence[Change], when: str) -> None:
    """Insert the change records, hash-chained after ``head``; sets each one's record_hash."""
    binary = db.dialect.binary
    # the hash chain: each record carries the hash of the one before it (core/audit.py)
    chain = chain_changes(
        db,
        engagement_id,
        head,
        [
            change_fields(
                c.seq, c.path, c.kind, c.content, c.size, c.prev_seq, c.user, c.session, when,
                c.conflict_of, c.batch, c.mtime_ns, c.readonly,
            )
            for c in written
        ],
    )
    db.executemany(
        f"INSERT INTO changes (engagement_id, {CHANGE_COLUMNS}, prev_hash, record_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                engagement_id,
                c.seq,
                c.path,
                c.kind,
                None if c.content is None else binary(bytes.fromhex(c.content)),
                c.size,
                c.prev_seq,
                c.user,
                c.session,
                when,
                c.conflict_of,
                c.batch,
                c.mtime_ns,
                None if c.readonly is None else int(c.readonly),
                binary(prev_hash),
                binary(record_hash),
            )
            for c, (prev_hash, record_hash) in zip(written, chain, strict=True)
        ],
    )
    for c, (_, h) in zip(written, chain, strict=True):
        # our own records, not yet shared: set in place (replace() costs ~3 us per record,
        # 30 ms on a 10,000-file commit)
        object.__setattr__(c, "record_hash", h.hex())


def _upsert_files(db: MetadataDB, engagement_id: int, written: Sequence[Change]) -> None:
    """The ``files`` rows at the written paths (a delete leaves a row with NULL content)."""
    binary = db.dialect.binary
    db.executemany(
        "INSERT INTO files (engagement_id, path, fold_key, seq, content, size, mtime_ns, readonly)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (engagement_id, path) DO UPDATE SET fold_key = excluded.fold_key,"
        " seq = excluded.seq, content = excluded.content, size = excluded.size,"
        " mtime_ns = excluded.mtime_ns, readonly = excluded.readonly",
        [
            (
                engagement_id,
                c.path,
                fold_key(c.path),
                c.seq,
                None if c.content is None else binary(bytes.fromhex(c.content)),
                c.size,
                c.mtime_ns,
                None if c.readonly is None else int(c.readonly),
            )
            for c in written
        ],
    )


# ------------------------------------------------------------------- manifests of a batch


def _manifest_sizes(db: MetadataDB, engagement_id: int, contents: Iterable[str]) -> dict[str, int]:
    """content -> size of the manifests the engagement already has, among ``contents``."""
    sizes: dict[str, int] = {}
    for part in chunks_of(list(dict.fromkeys(contents))):
        marks = ", ".join("?" for _ in part)
        rows = db.all(
            f"SELECT content, size FROM manifests WHERE engagement_id = ? AND content IN ({marks})",
            (engagement_id, *(db.dialect.binary(bytes.fromhex(c)) for c in part)),
        )
        sizes.update((bytes(r[0]).hex(), int(r[1])) for r in rows)
    return sizes


def _resolve_manifests(
    db: MetadataDB,
    engagement_id: int,
    proposals: Sequence[ProposedChange],
    outcomes: Sequence[Outcome],
    manifests: Mapping[str, PutManifest],
) -> dict[str, tuple[int, Sequence[ChunkRef], bytes]]:
    """The manifests this batch must add (content -> (size, chunks, stored body)), all checked."""
    new: dict[str, tuple[int, Sequence[ChunkRef], bytes]] = {}
    known = _manifest_sizes(
        db,
        engagement_id,
        (o.content for o in outcomes if o.write_path is not None and o.kind == "put" and o.content is not None),
    )
    for proposal, o in zip(proposals, outcomes, strict=True):
        if o.write_path is None or o.kind != "put" or o.content is None:
            continue
        content: str = o.content
        if is_folder(content):  # a folder entry has no manifest (docs/protocol.md)
            if manifests.get(o.path) or manifests.get(proposal.path):
                raise BadRequest("a folder entry takes no manifest or delta", path=o.path)
            continue
        if content in new:
            known_size: int | None = new[content][0]
        else:
            known_size = known.get(content)
        if known_size is not None:
            if known_size != o.size:
                raise BadRequest(
                    f"size {o.size} does not match content {content} ({known_size} bytes)", path=o.path
                )
            continue
        # keyed by the path as sent; o.path is its NFC form
        sent = manifests.get(o.path) or manifests.get(proposal.path)
        if sent is None:
            raise UnknownContent(
                f"the server has no manifest for the content of {o.path!r}; send it", path=o.path
            )
        if sent.content != content:
            raise BadRequest("the manifest sent is for a different content", path=o.path)
        chunks = _sent_chunks(db, engagement_id, o.path, sent, new)
        # the stored body is what the content id hashes (manifest.content_id): encode once
        body = manifest.encode_binary(chunks)
        if manifest.content_id_of_binary(body) != content:
            raise BadRequest("the manifest does not hash to the content id", path=o.path)
        if sum(c.size for c in chunks) != o.size:
            raise BadRequest("the manifest's chunk sizes do not add up to the size", path=o.path)
        new[content] = (o.size, chunks, body)

    _check_chunks(db, engagement_id, new, outcomes)
    return new


# manifest entries checked per query round: a 20 GB file's 600,000 are never all in one dict
CHECK_WINDOW_ENTRIES = 20_000


def _check_chunks(
    db: MetadataDB, engagement_id: int, new: Mapping[str, tuple[int, Sequence[ChunkRef], bytes]],
    outcomes: Sequence[Outcome],
) -> None:
    """Every chunk present, at the size the manifest gives it: a manifest that lies about a
    chunk's size would stop every other copy's pull at this change. Checked a window of
    entries at a time (a chunk given two sizes within one window is named as such; across
    windows the stored size tells the lie)."""
    missing: list[str] = []
    lie: BadRequest | None = None  # missing chunks are named first, as they always were
    for window in _entry_windows(new, CHECK_WINDOW_ENTRIES):
        claimed: dict[bytes, tuple[int, str]] = {}
        for digest, size, content in window:
            first = claimed.setdefault(digest, (size, content))
            if first[0] != size:
                raise BadRequest(f"chunk {digest.hex()} is given two sizes ({first[0]} and {size})")
        stored = stored_sizes(db, engagement_id, list(claimed))
        for digest, (size, content) in claimed.items():
            if digest not in stored:
                missing.append(digest.hex())
            elif lie is None and stored[digest] != size:
                lie = BadRequest(
                    f"the manifest gives chunk {digest.hex()} {size} bytes; it has {stored[digest]}",
                    path=_path_of(outcomes, content),
                )
    if missing:
        raise MissingChunks(f"{len(missing)} chunk(s) must be uploaded first", chunks=missing)
    if lie is not None:
        raise lie


def _entry_windows(
    new: Mapping[str, tuple[int, Sequence[ChunkRef], bytes]], size: int
) -> Iterator[list[tuple[bytes, int, str]]]:
    """(digest, size, content) of every entry of ``new``, ``size`` entries at a time."""
    window: list[tuple[bytes, int, str]] = []
    for content, (_, _, body) in new.items():
        for at in range(0, len(body), manifest.ENTRY_BYTES):
            window.append((body[at : at + 32], int.from_bytes(body[at + 32 : at + 40], "big"), content))
            if len(window) >= size:
                yield window
                window = []
    if window:
        yield window


def _path_of(outcomes: Sequence[Outcome], content: str) -> str | None:
    return next((o.path for o in outcomes if o.content == content), None)


def _sent_chunks(
    db: MetadataDB,
    engagement_id: int,
    path: str,
    sent: PutManifest,
    new: Mapping[str, tuple[int, Sequence[ChunkRef], bytes]],
) -> Sequence[ChunkRef]:
    if sent.chunks is not None:
        for c in sent.chunks:
            if not manifest.is_hash(c.hash) or not isinstance(c.size, int) or c.size <= 0:
                raise BadRequest("a manifest entry is malformed", path=path)
        return manifest.compact(sent.chunks)
    if sent.delta_base is None or sent.delta_ops is None:
        raise BadRequest("a put manifest needs a chunk list or a delta", path=path)
    hash_bytes(sent.delta_base, "delta base")
    if sent.delta_base in new:
        base: Sequence[ChunkRef] = new[sent.delta_base][1]
    else:
        row = manifest_row(db, engagement_id, sent.delta_base)
        if row is None:
            raise UnknownContent(
                f"the delta base {sent.delta_base} of {path!r} is unknown; send the full manifest",
                path=path,
            )
        base = manifest.decode_binary(bytes(row[1]))
    return manifest.apply_delta(base, sent.delta_ops)
