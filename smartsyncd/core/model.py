"""Shared value types of the sync model: chunks, manifests, file states, changes, commit outcomes.

Everything here is an immutable dataclass with no behaviour that touches I/O. Hashes are
lowercase hex BLAKE3-256 strings on every interface (JSON, storage API); storage may keep them as
32-byte blobs internally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ChangeKind = Literal["put", "delete"]
# weakest first: a stronger role may do all a weaker one may (auth/acl.py)
Role = Literal["reader", "editor", "reviewer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "editor", "reviewer", "admin")

# The content id of a folder entry (an empty folder that travels, docs/protocol.md "Folder
# entries"): BLAKE3-256 of b"smartsync-folder-v1\n", which no manifest hashes to (manifest ids
# hash another domain tag). A folder entry has size 0, no manifest and no chunks.
FOLDER_CONTENT = "5298988b9dd19cf8babfab492913b426a8256ffaea58a888cc34df91dcc61216"


def is_folder(content: str | None) -> bool:
    """Whether a record's content names a folder entry (not a file, not a tombstone)."""
    return content == FOLDER_CONTENT

# Commit outcome statuses (see docs/protocol.md, "commit"):
#   applied   - written at the proposed path with a new sequence number
#   unchanged - the path already holds exactly this (content, or tombstone); nothing written
#   conflict  - base was stale: the proposed content was written to a conflict copy path
#   stale     - a delete whose base was stale: nothing deleted, the newer version stays
Status = Literal["applied", "unchanged", "conflict", "stale"]


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: its BLAKE3 hash (hex) and its uncompressed length (slots: a
    large file's manifest makes hundreds of thousands of them)."""

    hash: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The ordered chunk list of one file content; ``content`` is its content id. A large
    one's ``chunks`` is a ``core.packed.PackedChunks`` (40 bytes per entry)."""

    content: str
    size: int
    chunks: Sequence[ChunkRef]


@dataclass(frozen=True)
class FileState:
    """The server's current record for one path. ``content is None`` means a tombstone."""

    path: str
    seq: int
    content: str | None
    size: int
    mtime_ns: int | None = None
    readonly: bool | None = None


@dataclass(frozen=True)
class ProposedChange:
    """One change a client asks to commit.

    ``base`` is the sequence number of the version the client edited (``None`` for a file the
    client believes is new). For a put, ``content`` and ``size`` name the new content; for a
    delete both are ignored (``content is None``, ``size == 0``). ``mtime_ns`` (nanoseconds
    since 1970-01-01 UTC) and ``readonly`` are the file's date and read-only attribute as the
    client saw them; ``None`` when it did not say (an older client). They travel with the
    version and never decide anything.
    """

    path: str
    kind: ChangeKind
    base: int | None
    content: str | None = None
    size: int = 0
    mtime_ns: int | None = None
    readonly: bool | None = None


@dataclass(frozen=True)
class Outcome:
    """The server's decision for one proposed change (before sequence numbers are assigned).

    ``write_path`` is where something is written (the proposed path, or the conflict copy path),
    ``None`` when nothing is written. ``prev_seq`` is the version at ``write_path`` that the write
    replaces (``None`` when the path is new or was never seen).
    """

    path: str
    status: Status
    write_path: str | None
    kind: ChangeKind
    content: str | None
    size: int
    prev_seq: int | None
    current_seq: int | None = None  # for unchanged/stale: the server's current version
    mtime_ns: int | None = None  # the put's file date and read-only attribute, as proposed
    readonly: bool | None = None


@dataclass(frozen=True)
class Change:
    """One record of an engagement's change log."""

    seq: int
    path: str
    kind: ChangeKind
    content: str | None
    size: int
    prev_seq: int | None
    user: str
    session: str | None
    time: datetime
    conflict_of: str | None = None  # for a conflict copy: the path the edit was meant for
    batch: str | None = None
    # the record's hash in the engagement's change chain (hex): the token a copy keeps for its
    # last seq, so the server can prove its log still holds what the copy synced
    record_hash: str | None = None
    # a put's file date (ns since 1970 UTC) and read-only attribute; None: not known
    mtime_ns: int | None = None
    readonly: bool | None = None


# the file dates a version may carry: 1970-01-01 up to the end of int64 nanoseconds (2262)
MTIME_NS_MIN = 0
MTIME_NS_MAX = 2**63 - 1


@dataclass(frozen=True)
class HistoryCheck:
    """What a copy knows of the log it follows: ``seq`` (its last seq) and the record token
    there (``hash``, None when unknown), and the store identity and generation it synced with
    (None when unknown). The server refuses with ``HistoryDiverged`` when they do not match."""

    seq: int
    hash: str | None = None
    store: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class VerifiedChunk:
    """A chunk whose hash and length the web layer already verified against its raw bytes."""

    hash: str
    codec: int
    raw_size: int
    payload: bytes
