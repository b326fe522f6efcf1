"""The client's sync planner: a pure function of (local scan, synced base, remote changes).

Three trees, as in Dropbox's rewritten engine: what is on disk now (``local``), what was last
synced (``base``), and what the server changed since (``remote``). The plan says what to push,
what to pull, and which local edits must first be moved to a conflict copy. No I/O: the engine
re-checks every file on disk before it touches it.

Safety rules encoded here:
- a path in ``base`` but not in ``local`` is a local delete only when the scan was complete;
- a locally modified (or new) file is never overwritten or deleted: a remote change to it makes
  it a conflict (moved aside, then the remote version written); a remote delete of it keeps it
  and pushes it again as a new file (edit beats delete);
- a rename is a delete plus a put of known content: no chunks move;
- an ignored path (``core.ignore``) is outside the plan in all three trees: never pushed, never
  deleted on either side, never written (a folder entry is ignored by folder rules too);
- on a case-insensitive copy a case-only rename (delete ``Memo.txt``, put ``memo.txt``: one
  file there) is a ``CaseRename`` applied in place, never a write then a delete of one file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from smartsyncd.core.model import Change, is_folder
from smartsyncd.core.paths import fold_key


@dataclass(frozen=True)
class LocalEntry:
    """A file found on disk by the scanner: its content id and size."""

    content: str
    size: int


@dataclass(frozen=True)
class BaseEntry:
    """The last synced version of a path: server sequence number, content id, size."""

    seq: int
    content: str
    size: int


@dataclass(frozen=True)
class PushPut:
    """Send the local content of ``path``; ``base`` is the version it was edited from."""

    path: str
    base: int | None
    content: str
    size: int


@dataclass(frozen=True)
class PushDelete:
    path: str
    base: int


@dataclass(frozen=True)
class PullWrite:
    """Write the remote version ``seq`` of ``path`` (``base_content``: the local old version)
    with its date and read-only attribute (None: not known; they never decide anything)."""

    path: str
    seq: int
    content: str
    size: int
    base_content: str | None
    mtime_ns: int | None = None
    readonly: bool | None = None


@dataclass(frozen=True)
class PullDelete:
    """Delete the local (unmodified) file at ``path``: the server deleted it at ``seq``."""

    path: str
    seq: int


@dataclass(frozen=True)
class Adopt:
    """The local file already equals the remote version: record it as synced at ``seq``."""

    path: str
    seq: int
    content: str
    size: int


@dataclass(frozen=True)
class Conflict:
    """The local edit of ``path`` was hit by a remote change: move the local file to a conflict
    copy, then apply ``remote`` (a write; for a remote delete nothing is planned as a conflict)."""

    path: str
    remote: PullWrite


@dataclass(frozen=True)
class CaseRename:
    """Give the local file at ``old`` the spelling ``new`` in place (a case-insensitive copy:
    one file under both names) and record it synced at ``new`` as ``seq`` with its synced
    ``content`` (unchanged by the rename; a local edit stays an edit, pushed later)."""

    old: str
    new: str
    seq: int
    content: str
    size: int


@dataclass
class Plan:
    push_puts: list[PushPut] = field(default_factory=list)
    push_deletes: list[PushDelete] = field(default_factory=list)
    pull_writes: list[PullWrite] = field(default_factory=list)
    pull_deletes: list[PullDelete] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    adopt: list[Adopt] = field(default_factory=list)
    # base rows to drop without touching the disk (the path is gone on both sides, or a remote
    # delete hit a local edit that is kept and will be pushed again as a new file)
    forget: list[str] = field(default_factory=list)
    renames: list[CaseRename] = field(default_factory=list)  # applied before everything else
    ignored: list[str] = field(default_factory=list)  # local files left out by ignore rules

    @property
    def push_empty(self) -> bool:
        return not (self.push_puts or self.push_deletes)

    @property
    def pull_empty(self) -> bool:
        return not (
            self.pull_writes or self.pull_deletes or self.conflicts or self.adopt or self.forget
            or self.renames
        )


class LocalState(Enum):
    ABSENT = "absent"  # not on disk and never synced
    UNCHANGED = "unchanged"
    MODIFIED = "modified"
    NEW = "new"
    DELETED = "deleted"
    UNKNOWN = "unknown"  # synced before, not seen by an incomplete scan: never a delete


def local_state(
    local: LocalEntry | None, base: BaseEntry | None, *, complete: bool = True
) -> LocalState:
    """Classify one path by comparing the disk with the synced base."""
    if base is None:
        return LocalState.ABSENT if local is None else LocalState.NEW
    if local is None:
        return LocalState.DELETED if complete else LocalState.UNKNOWN
    if local.content == base.content:
        return LocalState.UNCHANGED
    return LocalState.MODIFIED


def last_remote(remote: Sequence[Change]) -> dict[str, Change]:
    """The newest change per path (changes arrive in sequence order; be robust anyway)."""
    newest: dict[str, Change] = {}
    for change in remote:
        seen = newest.get(change.path)
        if seen is None or change.seq > seen.seq:
            newest[change.path] = change
    return newest


def plan(
    local: Mapping[str, LocalEntry],
    base: Mapping[str, BaseEntry],
    remote: Sequence[Change],
    *,
    complete: bool = True,
    case_insensitive: bool = False,
    ignored: Callable[[str], bool] | None = None,
) -> Plan:
    """Compute what to push and pull. ``complete`` says the scan saw every folder.

    ``case_insensitive``: the copy's file system has one file for names that differ only in
    case; ``local`` must then name each file by its stored spelling only. ``ignored``: a path
    for which it answers True takes no part (``IgnoreRules.ignores``)."""
    result = Plan()
    newest = last_remote(remote)
    if ignored is not None:
        def skip(path: str, content: str | None) -> bool:
            # a folder entry is ignored as a folder ("drafts/" rules), like the walk skips it
            return ignored(path) or (is_folder(content) and ignored(path + "/"))

        result.ignored = sorted(p for p, e in local.items() if skip(p, e.content))
        local = {p: e for p, e in local.items() if not skip(p, e.content)}
        base = {p: b for p, b in base.items() if not skip(p, b.content)}
        newest = {p: c for p, c in newest.items() if not skip(p, c.content)}
    if case_insensitive and newest:
        local, base, newest = _case_renames(result, local, base, newest)
    for path in sorted(set(local) | set(base) | set(newest)):
        entry = local.get(path)
        synced = base.get(path)
        state = local_state(entry, synced, complete=complete)
        change = newest.get(path)
        if change is not None and synced is not None and change.seq <= synced.seq:
            change = None  # already have it (e.g. our own commit)
        if change is None:
            _plan_push(result, path, state, entry, synced)
        else:
            _plan_pull(result, path, state, entry, synced, change)
    return result


def _plan_push(
    result: Plan,
    path: str,
    state: LocalState,
    entry: LocalEntry | None,
    synced: BaseEntry | None,
) -> None:
    if state is LocalState.MODIFIED:
        assert entry is not None and synced is not None
        result.push_puts.append(PushPut(path, synced.seq, entry.content, entry.size))
    elif state is LocalState.NEW:
        assert entry is not None
        result.push_puts.append(PushPut(path, None, entry.content, entry.size))
    elif state is LocalState.DELETED:
        assert synced is not None
        result.push_deletes.append(PushDelete(path, synced.seq))


def _plan_pull(
    result: Plan,
    path: str,
    state: LocalState,
    entry: LocalEntry | None,
    synced: BaseEntry | None,
    change: Change,
) -> None:
    edited = state in (LocalState.MODIFIED, LocalState.NEW)
    if change.kind == "put":
        if change.content is None:
            return  # malformed remote record: change nothing
        if edited:
            assert entry is not None
            if entry.content == change.content:
                result.adopt.append(Adopt(path, change.seq, change.content, change.size))
            else:
                write = PullWrite(
                    path, change.seq, change.content, change.size,
                    synced.content if synced else None, change.mtime_ns, change.readonly,
                )
                result.conflicts.append(Conflict(path, write))
            return
        # unchanged, deleted here (remote edit beats local delete), absent, or unknown (the
        # engine re-checks the disk before writing and moves any unexpected file aside)
        result.pull_writes.append(
            PullWrite(
                path, change.seq, change.content, change.size,
                synced.content if synced else None, change.mtime_ns, change.readonly,
            )
        )
        return
    # remote delete
    if state is LocalState.UNCHANGED:
        result.pull_deletes.append(PullDelete(path, change.seq))
    elif state is LocalState.MODIFIED:
        # edit beats delete: keep the file; without a base it is pushed as a new file
        result.forget.append(path)
    elif state in (LocalState.DELETED, LocalState.UNKNOWN):
        result.forget.append(path)
    # NEW or ABSENT: nothing synced here; a new local file is pushed as new


def _case_renames(
    result: Plan,
    local: Mapping[str, LocalEntry],
    base: Mapping[str, BaseEntry],
    newest: dict[str, Change],
) -> tuple[dict[str, LocalEntry], dict[str, BaseEntry], dict[str, Change]]:
    """Find remote case-only renames (delete ``P``, put ``Q``, same fold key) of a file that is
    here as ``P``; plan each as a ``CaseRename`` and return the trees as they are after it:
    the local file and its base moved to ``Q``, the delete consumed, and the put consumed too
    when it brings the synced content (a pure rename); else it is planned on ``Q`` as usual
    (a remote edit: written, or a conflict with a local edit)."""
    puts: dict[str, list[str]] = {}
    for path, change in newest.items():
        if change.kind == "put" and change.content is not None and path not in base:
            puts.setdefault(fold_key(path), []).append(path)
    if not puts:
        return dict(local), dict(base), newest
    local2, base2, newest2 = dict(local), dict(base), dict(newest)
    for old, change in sorted(newest.items()):
        synced = base.get(old)
        if (
            change.kind != "delete" or synced is None or change.seq <= synced.seq
            or old not in local
        ):
            continue
        twins = [q for q in puts.get(fold_key(old), ()) if q != old and q not in local]
        if len(twins) != 1:
            continue
        new = twins[0]
        put = newest[new]
        pure = put.content == synced.content
        seq = put.seq if pure else synced.seq
        result.renames.append(CaseRename(old, new, seq, synced.content, synced.size))
        local2[new] = local2.pop(old)
        del base2[old]
        base2[new] = BaseEntry(seq, synced.content, synced.size)
        del newest2[old]
        if pure:
            del newest2[new]
    return local2, base2, newest2
