"""The server's decision for one commit batch: which changes apply, conflict, or are stale.

``plan_commit`` is pure: it reads the head state through ``HeadView`` and returns one
``Outcome`` per proposal, in order; storage assigns sequence numbers to the outcomes that write
(``write_path`` set) in that order, inside the same transaction. Any refusal raises before an
outcome is returned, so a refused batch applies nothing. Nothing is ever lost: a stale edit
becomes a conflict copy, an edit of a deleted file is applied (edit beats delete), and a stale
delete deletes nothing.

``ignored`` (the engagement's published ignore rules) refuses a put that adds or changes an
ignored path with ``InvalidPath`` naming it, as any per-path refusal: the client keeps the
file and reports it as skipped. Deletes of ignored paths stay allowed, so a rule added after
a file was stored never makes that file undeletable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from smartsyncd.core.conflicts import conflict_name
from smartsyncd.core.errors import BadRequest, BatchReused, InvalidPath, PathClash
from smartsyncd.core.manifest import is_hash
from smartsyncd.core.model import (
    MTIME_NS_MAX,
    MTIME_NS_MIN,
    FileState,
    Outcome,
    ProposedChange,
    is_folder,
)
from smartsyncd.core.paths import ancestors, fold_key, normalize_path

MAX_CHANGES = 10000


class HeadView(Protocol):
    """The server's head state as the rules need it."""

    def state(self, path: str) -> FileState | None:
        """The record at exactly this NFC path (live or tombstone); ``None`` if never seen."""
        ...

    def live_path_with_key(self, key: str) -> str | None:
        """The live file whose ``fold_key`` is ``key``, if any."""
        ...

    def folder_spelling(self, key: str) -> str | None:
        """The spelling of the folder with fold key ``key`` that holds live files, if any."""
        ...

    def live_paths_under(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` live paths starting with ``prefix`` (a folder's spelling and "/"),
        in path order."""
        ...


@dataclass
class _Batch:
    """The batch's own effects so far, layered over the head (later changes see earlier ones)."""

    head: HeadView
    live: dict[str, str | None] = field(default_factory=dict)  # fold key -> live path or None
    folders: dict[str, str] = field(default_factory=dict)  # fold key -> spelling
    reserved: set[str] = field(default_factory=set)  # fold keys no conflict copy may take
    stale_deletes: set[str] = field(default_factory=set)  # fold keys of refused (stale) deletes
    deleting: set[str] = field(default_factory=set)  # live paths this batch's deletes remove
    written: dict[str, bool] = field(default_factory=dict)  # path -> is a folder entry
    _head_folders: dict[str, str | None] = field(default_factory=dict)
    _chains: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def folder_chain(self, path: str) -> tuple[tuple[str, str], ...]:
        """(folder, fold key) of every folder of ``path``, outermost first; kept per parent
        folder (the files of a batch share folders: split, join and fold each folder once)."""
        parent = path.rpartition("/")[0]
        chain = self._chains.get(parent)
        if chain is None:
            chain = tuple((folder, fold_key(folder)) for folder in ancestors(path))
            self._chains[parent] = chain
        return chain

    def live_path_with_key(self, key: str) -> str | None:
        if key in self.live:
            return self.live[key]
        return self.head.live_path_with_key(key)

    def folder_spelling(self, key: str) -> str | None:
        # A folder keeps its spelling while it may hold files, unless this batch deletes every
        # live file in it (anywhere in the batch: a folder's case-only rename sends all deletes
        # before the puts of the new spelling, but the rule does not depend on the order).
        if key in self.folders:
            return self.folders[key]
        if key not in self._head_folders:  # many files of a batch share folders
            spelling = self.head.folder_spelling(key)
            if spelling and self._emptied(spelling):
                spelling = None
            self._head_folders[key] = spelling
        return self._head_folders[key]

    def _emptied(self, folder: str) -> bool:
        """Whether this batch deletes every live file under ``folder`` (cost bounded by the
        batch: at most one more path than the batch deletes there is read)."""
        prefix = folder + "/"
        gone = sum(1 for path in self.deleting if path.startswith(prefix))
        if not gone:
            return False
        return all(p in self.deleting for p in self.head.live_paths_under(prefix, gone + 1))

    def is_folder_entry(self, path: str) -> bool:
        """Whether the live name ``path`` is a folder entry (docs/protocol.md, "Folder
        entries"), as this batch left it."""
        if path in self.written:
            return self.written[path]
        current = self.head.state(path)
        return current is not None and is_folder(current.content)

    def write_file(self, path: str, key: str | None = None, entry: bool = False) -> None:
        """``key``: ``fold_key(path)`` when the caller has it; ``entry``: a folder entry."""
        self.live[fold_key(path) if key is None else key] = path
        self.written[path] = entry
        for folder, folder_key in self.folder_chain(path):
            self.folders.setdefault(folder_key, folder)

    def delete_file(self, path: str) -> None:
        self.live[fold_key(path)] = None


def validate_batch(proposals: Sequence[ProposedChange], max_changes: int = MAX_CHANGES) -> list[str]:
    """Check shapes and paths; return the NFC paths. Raises before anything is decided.

    ``plan_commit`` runs it; a caller that needs the NFC paths first (storage reads the head
    rows at their keys) runs it itself and hands the result to ``plan_commit(paths=...)``, so
    each path is checked and normalized once per commit.
    """
    if len(proposals) > max_changes:
        raise BadRequest(f"a commit may hold at most {max_changes} changes, got {len(proposals)}")
    paths: list[str] = []
    by_key: dict[str, list[int]] = {}
    for i, p in enumerate(proposals):
        path = normalize_path(p.path)
        if p.kind not in ("put", "delete"):
            raise BadRequest(f"change {i} has unknown kind {p.kind!r}", path=path)
        if p.base is not None and (not isinstance(p.base, int) or isinstance(p.base, bool)):
            raise BadRequest(f"change {i}: base must be an integer or null", path=path)
        if p.base is not None and p.base < 0:
            raise BadRequest(f"change {i}: base must not be negative", path=path)
        if p.kind == "put":
            if not is_hash(p.content):
                raise BadRequest(f"put of {path!r} needs a 64-hex content id", path=path)
            if not isinstance(p.size, int) or isinstance(p.size, bool) or p.size < 0:
                raise BadRequest(f"put of {path!r} needs a size >= 0", path=path)
            _check_attributes(p, path)
            if is_folder(p.content) and p.size != 0:
                raise BadRequest(f"folder entry {path!r} must have size 0", path=path)
        elif p.base is None:
            raise BadRequest(f"delete of {path!r} needs the base version it deletes", path=path)
        paths.append(path)
        by_key.setdefault(fold_key(path), []).append(i)
    for indexes in by_key.values():
        if len(indexes) == 1:
            continue
        first, *rest = indexes
        # The one allowed pair: a case-only rename, delete of one spelling then put of another.
        rename = (
            len(indexes) == 2
            and proposals[first].kind == "delete"
            and proposals[rest[0]].kind == "put"
            and paths[first] != paths[rest[0]]
        )
        if not rename:
            path = paths[rest[0]]
            raise BadRequest(f"path {path!r} appears more than once in the batch", path=path)
    return paths


def _check_attributes(p: ProposedChange, path: str) -> None:
    """A put's file date and read-only attribute, when given, are of the right type and range."""
    if p.mtime_ns is not None and (
        not isinstance(p.mtime_ns, int) or isinstance(p.mtime_ns, bool)
        or not MTIME_NS_MIN <= p.mtime_ns <= MTIME_NS_MAX
    ):
        raise BadRequest(
            f"put of {path!r}: mtime must be integer nanoseconds since 1970-01-01 UTC", path=path
        )
    if p.readonly is not None and not isinstance(p.readonly, bool):
        raise BadRequest(f"put of {path!r}: readonly must be true or false", path=path)


def _check_clashes(path: str, batch: _Batch, path_key: str, folder_entry: bool = False) -> None:
    """Refuse a new file whose name or folders clash with live names of another spelling
    (``path_key``: ``fold_key(path)``, which the caller has). A folder entry may name a folder
    that holds files, and anything may go inside a folder entry, in the same spelling."""
    existing = batch.live_path_with_key(path_key)
    if existing is not None and existing != path:
        raise PathClash(
            f"{path!r} differs only in case or normalization from {existing!r}",
            path=path,
            existing=existing,
        )
    if existing == path:
        return  # an edit of a live file: its folders already exist with this spelling
    folder = batch.folder_spelling(path_key)
    if folder is not None and folder_entry and folder == path:
        return  # an entry for a folder that holds files: its folders exist in this spelling
    if folder is not None:
        raise PathClash(f"{path!r} is the name of an existing folder", path=path, existing=folder)
    for anc, key in batch.folder_chain(path):
        file_there = batch.live_path_with_key(key)
        if file_there == anc and batch.is_folder_entry(anc):
            continue  # inside a folder entry of this spelling: the entry is that folder
        if file_there is not None:
            raise PathClash(
                f"folder {anc!r} of {path!r} is an existing file", path=path, existing=file_there
            )
        spelling = batch.folder_spelling(key)
        if spelling is not None and spelling != anc:
            raise PathClash(
                f"folder {anc!r} of {path!r} exists as {spelling!r}", path=path, existing=spelling
            )


def _conflict_path(path: str, user: str, now: datetime, batch: _Batch) -> str:
    def taken(candidate: str) -> bool:
        key = fold_key(candidate)
        return (
            key in batch.reserved
            or batch.live_path_with_key(key) is not None
            or batch.folder_spelling(key) is not None
            # a tombstone there would make prev_seq wrong: pick a never-used name
            or batch.head.state(candidate) is not None
        )

    return conflict_name(path, user, now, taken)


def plan_commit(
    proposals: Sequence[ProposedChange],
    head: HeadView,
    user: str,
    now: datetime,
    max_changes: int = MAX_CHANGES,
    paths: Sequence[str] | None = None,
    ignored: Callable[[str], bool] | None = None,
) -> list[Outcome]:
    """Decide every proposal of one batch, in order; raise (deciding nothing) on a refusal.

    ``paths``: ``validate_batch(proposals, max_changes)``'s result when the caller already has
    it (then the batch is not checked again); ``None`` checks it here. ``ignored``: the
    engagement's ignore rules, refusing puts that add or change a path they match.
    """
    if paths is None:
        paths = validate_batch(proposals, max_changes)
    elif len(paths) != len(proposals):
        raise ValueError("paths must be validate_batch's result for these proposals")
    batch = _Batch(head=head, reserved={fold_key(p) for p in paths})
    states = [head.state(path) for path in paths]
    if ignored is not None:
        _check_ignored(proposals, paths, states, ignored)
    batch.deleting = {
        path
        for p, path, current in zip(proposals, paths, states, strict=True)
        if p.kind == "delete" and current is not None and current.content is not None
        and p.base == current.seq
    }
    outcomes: list[Outcome] = []
    for p, path, current in zip(proposals, paths, states, strict=True):
        if p.kind == "delete":
            outcomes.append(_plan_delete(p, path, current, batch))
        else:
            outcomes.append(_plan_put(p, path, current, batch, user, now))
    return outcomes


def _check_ignored(
    proposals: Sequence[ProposedChange], paths: Sequence[str],
    states: Sequence[FileState | None], ignored: Callable[[str], bool],
) -> None:
    for p, path, current in zip(proposals, paths, states, strict=True):
        if p.kind != "put" or not ignored(path):
            continue
        if current is not None and current.content == p.content:
            continue  # not a change: nothing to refuse
        raise InvalidPath(
            f"{path!r} is ignored by the engagement's rules; it stays local", path=path,
            reason="ignored",
        )


def _plan_delete(p: ProposedChange, path: str, current: FileState | None, batch: _Batch) -> Outcome:
    if current is None or current.content is None:
        seq = None if current is None else current.seq
        return Outcome(path, "unchanged", None, "delete", None, 0, None, current_seq=seq)
    if p.base != current.seq:
        batch.stale_deletes.add(fold_key(path))
        return Outcome(path, "stale", None, "delete", None, 0, None, current_seq=current.seq)
    batch.delete_file(path)
    return Outcome(path, "applied", path, "delete", None, 0, current.seq)


def _plan_put(
    p: ProposedChange,
    path: str,
    current: FileState | None,
    batch: _Batch,
    user: str,
    now: datetime,
) -> Outcome:
    proposed = path
    live = current is not None and current.content is not None
    if current is not None and live and p.content == current.content:
        return Outcome(
            path, "unchanged", None, "put", p.content, p.size, None, current_seq=current.seq
        )
    key = fold_key(path)
    twin = batch.live_path_with_key(key)
    renamed_over_edit = key in batch.stale_deletes and twin is not None and twin != path
    folder_entry = is_folder(p.content)
    if not renamed_over_edit:
        _check_clashes(path, batch, key, folder_entry)
    # A case-only rename whose delete was stale (the file was edited meanwhile): keep the
    # renamed content as a conflict copy instead of refusing the whole batch.
    if renamed_over_edit or (current is not None and live and p.base != current.seq):
        if renamed_over_edit and twin is not None:
            # beside the edited file, in its folder's live spelling: a conflict copy under the
            # new spelling of a folder renamed in case would give one folder two spellings
            folder = twin.rpartition("/")[0]
            path = f"{folder}/{path.rpartition('/')[2]}" if folder else path.rpartition("/")[2]
        copy = _conflict_path(path, user, now, batch)
        _check_clashes(copy, batch, fold_key(copy), folder_entry)
        batch.write_file(copy, entry=folder_entry)
        batch.reserved.add(fold_key(copy))
        return Outcome(
            proposed, "conflict", copy, "put", p.content, p.size, None,
            mtime_ns=p.mtime_ns, readonly=p.readonly,
        )
    batch.write_file(path, key, folder_entry)
    prev = None if current is None else current.seq  # a tombstone: edit beats delete
    return Outcome(
        path, "applied", path, "put", p.content, p.size, prev, mtime_ns=p.mtime_ns, readonly=p.readonly
    )


class MemoryHead:
    """``HeadView`` over a dict of path -> ``FileState``; applies outcomes like storage does."""

    def __init__(self, files: Mapping[str, FileState] | Iterable[FileState] = ()) -> None:
        states = files.values() if isinstance(files, Mapping) else files
        self.files: dict[str, FileState] = {s.path: s for s in states}
        self.head = max((s.seq for s in self.files.values()), default=0)

    def state(self, path: str) -> FileState | None:
        return self.files.get(path)

    def live_path_with_key(self, key: str) -> str | None:
        matches = sorted(
            s.path for s in self.files.values() if s.content is not None and fold_key(s.path) == key
        )
        return matches[0] if matches else None

    def live_paths_under(self, prefix: str, limit: int) -> list[str]:
        under = sorted(p for p, s in self.files.items() if s.content is not None and p.startswith(prefix))
        return under[:limit]

    def folder_spelling(self, key: str) -> str | None:
        spellings = sorted(
            anc
            for s in self.files.values()
            if s.content is not None
            for anc in ancestors(s.path)
            if fold_key(anc) == key
        )
        return spellings[0] if spellings else None

    def live(self) -> dict[str, FileState]:
        """The live files by path (no tombstones)."""
        return {p: s for p, s in self.files.items() if s.content is not None}

    def apply(self, outcomes: Sequence[Outcome]) -> list[int | None]:
        """Give each writing outcome the next sequence number and record it; return the seqs."""
        seqs: list[int | None] = []
        for o in outcomes:
            if o.write_path is None:
                seqs.append(None)
                continue
            self.head += 1
            content = o.content if o.kind == "put" else None
            size = o.size if o.kind == "put" else 0
            self.files[o.write_path] = FileState(
                o.write_path, self.head, content, size, o.mtime_ns, o.readonly
            )
            seqs.append(self.head)
        return seqs


def batch_key(user: str, batch: str) -> str:
    """The stored idempotency key: a client's batch key is its own, per (engagement, user), so
    another member can neither replay nor take it. The length prefix keeps it unambiguous."""
    return f"{len(user)}:{user}:{batch}"


def batch_digest(changes: Sequence[ProposedChange]) -> str:
    """What a replay must match: the changes as proposed (path, kind, base, content, size, and
    the file date and read-only attribute when given: a batch without them digests as before)."""
    rows: list[list[object]] = []
    for c in changes:
        row: list[object] = [c.path, c.kind, c.base, c.content, c.size]
        if c.mtime_ns is not None or c.readonly is not None:
            row += [c.mtime_ns, c.readonly]
        rows.append(row)
    text = json.dumps(rows, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def restore_digest(path: str, version: int) -> str:
    """What a replayed restore must match: the request (path, version), not the change it made
    (whose base is the head at the time)."""
    text = json.dumps(["restore", path, version], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def check_replay(stored_digest: str | None, digest: str, batch: str) -> None:
    """Raise ``BatchReused`` when a stored batch is asked again with other changes."""
    if stored_digest is not None and stored_digest != digest:
        raise BatchReused(
            f"batch key {batch!r} was already used for other changes; send a new key",
            batch=batch,
        )
