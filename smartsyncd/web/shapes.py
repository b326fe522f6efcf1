"""Response shapes: records of the store written out as the JSON of docs/protocol.md.

Pure functions from typed values to JSON-ready dicts (``errors.send_json`` encodes them); no
request, no store. Every route module takes its answers' shapes from here, so one record type
has one JSON form.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from smartsyncd.core.locks import Lock
from smartsyncd.core.model import Change, FileState, is_folder
from smartsyncd.storage.api import (
    CommitResultItem,
    CopyRecord,
    EngagementStatus,
    ExportFile,
    VersionRecord,
)

JsonObject = dict[str, object]

CHUNKS_CONTENT_TYPE = b"application/x-smartsync-chunks"


def iso_utc(when: datetime, micro: bool = True) -> str:
    """``2026-11-26T15:30:12.345678Z`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _iso_or_none(when: datetime | None) -> str | None:
    return None if when is None else iso_utc(when)


def change_json(change: Change) -> JsonObject:
    return {
        "seq": change.seq,
        "path": change.path,
        "kind": change.kind,
        "content": change.content,
        "size": change.size,
        "prev_seq": change.prev_seq,
        "user": change.user,
        "session": change.session,
        "time": iso_utc(change.time),
        "conflict_of": change.conflict_of,
        "hash": change.record_hash,
        "mtime": change.mtime_ns,
        "readonly": change.readonly,
    }


def changes_body(
    head: int, changes: Sequence[Change], identity: tuple[str, int] | None = None,
    folders: bool = True,
) -> JsonObject:
    """The answer to ``GET .../changes`` for ``changes_since``'s (head, changes); ``identity``
    is the store's (id, generation). ``folders``: the client asked for folder entries; else a
    folder-entry put is shown as a delete of its path (docs/protocol.md, "Folder entries")."""
    more = bool(changes) and changes[-1].seq < head
    items = [
        change_json(c) if folders or not (c.kind == "put" and is_folder(c.content))
        else {**change_json(c), "kind": "delete", "content": None, "size": 0}
        for c in changes
    ]
    body: JsonObject = {"head": head, "changes": items, "more": more}
    if identity is not None:
        body["store"], body["generation"] = identity
    return body


def result_json(item: CommitResultItem) -> JsonObject:
    # The fields of CommitResultItem written out, in their order, leaving out the optional ones
    # that are None (seq stays: null means "nothing written"). Neither asdict() (deep copy) nor
    # fields() per item: with 2,000-10,000 results per answer, both were a large share of the
    # reactor's time in a small-files sync.
    out: JsonObject = {"path": item.path, "status": item.status, "seq": item.seq}
    if item.conflict_path is not None:
        out["conflict_path"] = item.conflict_path
    if item.current_seq is not None:
        out["current_seq"] = item.current_seq
    return out


def snapshot_json(
    head: int, files: Sequence[FileState], token: str | None, identity: tuple[str, int],
    folders: bool = True,
) -> JsonObject:
    """The answer to ``GET .../snapshot``: the live files at ``head`` and its record token
    (folder entries only for a client that asked for them)."""
    return {
        "head": head,
        "files": [
            {
                "path": f.path, "seq": f.seq, "content": f.content, "size": f.size,
                "mtime": f.mtime_ns, "readonly": f.readonly,
            }
            for f in files
            if f.content is not None and (folders or not is_folder(f.content))
        ],
        "head_hash": token,
        "store": identity[0],
        "generation": identity[1],
    }


def lock_json(lock: Lock) -> JsonObject:
    return {
        "path": lock.path,
        "holder": lock.holder,
        "since": iso_utc(lock.since),
        "expires_at": _iso_or_none(lock.expires_at),
    }


def copy_json(c: CopyRecord) -> JsonObject:
    return {
        "copy": c.copy_id,
        "user": c.user,
        "host": c.host,
        "registered_at": iso_utc(c.registered_at),
        "last_contact": iso_utc(c.last_contact),
        "unsynced": c.unsynced,
        "unsynced_since": _iso_or_none(c.unsynced_since),
        "abandoned_at": _iso_or_none(c.abandoned_at),
        "abandoned_by": c.abandoned_by,
    }


def finalized_json(status: EngagementStatus) -> JsonObject | None:
    if status.finalized_at is None:
        return None
    return {"at": iso_utc(status.finalized_at), "by": status.finalized_by, "reason": status.finalized_reason}


def version_json(v: VersionRecord) -> JsonObject:
    return {
        "version": v.number,
        "seq": v.seq,
        "kind": v.kind,
        "content": v.content,
        "size": v.size,
        "user": v.user,
        "time": iso_utc(v.time),
        "conflict_of": v.conflict_of,
        "available": v.available,
        "mtime": v.mtime_ns,
        "readonly": v.readonly,
    }


def export_file_json(f: ExportFile) -> JsonObject:
    return {
        "path": f.path, "seq": f.seq, "content": f.content, "size": f.size, "available": f.available,
        "mtime": f.mtime_ns, "readonly": f.readonly,
    }
