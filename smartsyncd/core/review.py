"""The conflict review queue's rules: what a resolution commits, and when it is refused.

A conflict item (docs/workflow.md, "Conflict review") is made by a commit whose edit lost
(``core.commit_rules``: the edit was written to a conflict copy beside the file). The
engagement's reviewer resolves it by choosing a version; ``resolution_changes`` turns that
choice into the changes of one ordinary commit, given the head state of the file and of its
conflict copy:

- ``ours``: the conflict copy's content becomes the file's newest version; the copy is deleted;
- ``theirs``: the file stays as it is; the copy is deleted;
- ``merged``: a new content (the reviewer's merge) becomes the file's newest version; the copy
  is deleted.

Deleting the copy only adds a tombstone: its versions stay in the file's history (the loser
is never deleted outright). The reviewer names the versions it decided on (``path_seq``,
``copy_seq``, as listed); when either moved since, nothing is decided (``ConflictStale``).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from smartsyncd.core.errors import BadRequest, ConflictResolved, ConflictStale
from smartsyncd.core.model import FileState, ProposedChange

Choice = Literal["ours", "theirs", "merged"]
CHOICES: tuple[Choice, ...] = get_args(Choice)


@dataclass(frozen=True)
class Version:
    """One side of a conflict as it was when the conflict happened."""

    seq: int | None  # None: the file's winning version is unknown (it was never a live file)
    user: str | None
    content: str | None
    size: int = 0


@dataclass(frozen=True)
class ConflictItem:
    """One conflict in the review queue. ``id`` is the sequence number at which the losing
    edit was written to ``copy_path`` (unique in the engagement's log); ``theirs`` is the
    version of ``path`` that edit lost to, ``ours`` the losing edit.

    ``path_seq``/``copy_seq`` are the head's versions now (``None``: no record), with
    ``copy_live`` false once the copy was deleted; they are what a resolution must name."""

    id: int
    path: str
    copy_path: str
    theirs: Version
    ours: Version
    created_at: datetime
    path_seq: int | None = None
    copy_seq: int | None = None
    copy_live: bool = True
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: Choice | None = None
    resolved_seq: int | None = None  # the head after the resolution's commit

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def involves(self, user: str) -> bool:
        """Whether ``user`` wrote either side (a member sees their own items)."""
        return user in (self.ours.user, self.theirs.user)


def check_choice(choice: object) -> Choice:
    """The choice as sent; anything else is a 400 naming the field."""
    for known in CHOICES:
        if choice == known:
            return known
    raise BadRequest(f"field 'choice' must be one of {', '.join(CHOICES)}", field="choice")


def refuse_if_resolved(item: ConflictItem) -> None:
    if item.resolved_at is not None:
        raise ConflictResolved(
            f"conflict {item.id} on {item.path!r} was already resolved by {item.resolved_by}"
            f" ({item.resolution})",
            id=item.id,
            resolved_by=item.resolved_by,
            resolved_at=item.resolved_at.isoformat(),
            resolution=item.resolution,
        )


def resolution_changes(
    item: ConflictItem,
    choice: Choice,
    file: FileState | None,
    copy: FileState | None,
    path_seq: int | None,
    copy_seq: int | None,
    merged: tuple[str, int] | None = None,
) -> list[ProposedChange]:
    """The changes of the commit that resolves ``item`` by ``choice``.

    ``file``/``copy``: the head's records at ``item.path`` and ``item.copy_path`` now;
    ``path_seq``/``copy_seq``: the versions the reviewer decided on (as listed);
    ``merged``: (content id, size) of the merge, for ``merged`` only. Every change's base is
    the head's seq, so the commit cannot turn into a new conflict.
    """
    refuse_if_resolved(item)
    now_path = None if file is None else file.seq
    now_copy = None if copy is None else copy.seq
    if (path_seq, copy_seq) != (now_path, now_copy):
        raise ConflictStale(
            f"{item.path!r} or its conflict copy changed since you looked (now versions"
            f" {now_path} and {now_copy}, you named {path_seq} and {copy_seq}); list again",
            id=item.id, path_seq=now_path, copy_seq=now_copy,
        )
    if (merged is not None) != (choice == "merged"):
        raise BadRequest("a merged content goes with choice 'merged' only, and it needs one",
                         field="content")
    copy_live = copy is not None and copy.content is not None
    changes: list[ProposedChange] = []
    if choice == "ours":
        if copy is None or copy.content is None:
            raise ConflictStale(
                f"the conflict copy {item.copy_path!r} was deleted: choose theirs or merged",
                id=item.id, path_seq=now_path, copy_seq=now_copy,
            )
        changes.append(ProposedChange(item.path, "put", now_path, copy.content, copy.size))
    elif choice == "merged":
        assert merged is not None
        changes.append(ProposedChange(item.path, "put", now_path, merged[0], merged[1]))
    if copy_live:
        changes.append(ProposedChange(item.copy_path, "delete", now_copy))
    return changes


def resolve_digest(item_id: int, choice: Choice, merged: tuple[str, int] | None) -> str:
    """What a replayed resolution must match: the request, not the changes it made."""
    text = json.dumps(["resolve", item_id, choice, merged], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()
