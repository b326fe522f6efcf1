"""The typed values that cross the client boundary (docs/protocol.md): what the engine hands
to :class:`smartsyncd.client.http.ServerAPI` and what it gets back.

``ServerAPI`` parses every answer strictly into these (or ``core.model``'s ``Change``,
``FileState`` and ``Manifest``) and writes requests from them; nothing above it reads or
builds a wire dict.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol, TypeVar, overload

from smartsyncd.client.errors import ProtocolError
from smartsyncd.core import bodycodec
from smartsyncd.core.manifest import DEFAULT_MAX_ENTRIES, PACK_MIN_ENTRIES, chunks_to_json
from smartsyncd.core.manifestlift import lift_manifests
from smartsyncd.core.model import (
    MTIME_NS_MAX,
    MTIME_NS_MIN,
    Change,
    ChunkRef,
    FileState,
    HistoryCheck,
)
from smartsyncd.core.packed import JSON_PIECE_ENTRIES, manifest_json

# a JSON object as it arrives: its values are checked where they are read
JSONObject = dict[str, object]
# commits under 1 KiB are compressed too when that saves more than the header it costs
SMALL_COMMIT = 256
ENCODING_HEADER = len(b"Content-Encoding: zstd\r\n")
_V = TypeVar("_V")


@dataclass(frozen=True)
class DeltaHint:
    """Bytes of content ``base`` at ``offset`` that the server has and that resemble a chunk:
    the chunk may travel as a zstd delta against them (docs/protocol.md, codec 2)."""

    base: str
    offset: int
    prefix: bytes


# a chunk to fetch: its hash, with its size (packs requests) and a delta base when known
ChunkWanted = str | ChunkRef | tuple[str, int] | tuple[str, int, DeltaHint]
# a chunk to upload: hash and raw bytes, with a delta base when one lines up
UploadItem = tuple[str, bytes] | tuple[str, bytes, DeltaHint]


class Snapshot(NamedTuple):
    """``GET .../snapshot``: the live files at ``head``."""

    head: int
    files: list[FileState]


class ChangePage(NamedTuple):
    """``GET .../changes``: changes after ``since`` up to ``head``; ``more`` when cut short."""

    head: int
    changes: list[Change]
    more: bool


@dataclass(frozen=True)
class HistoryMark:
    """Where a copy stands in the server's log (client/reconcile.py): the record token at
    ``seq``, and the store identity and generation (None from a server without them)."""

    seq: int | None
    token: str | None
    store: str | None
    generation: int | None


@dataclass(frozen=True)
class SessionInfo:
    """``GET /v1/session``: who the bearer token signs in as."""

    user: str
    groups: tuple[str, ...] = ()
    expires_at: str | None = None


@dataclass(frozen=True)
class ManifestDelta:
    """A put's chunk list as ops against the synced version ``base`` (core/manifest.py)."""

    base: str
    ops: list[list[object]]


@dataclass(frozen=True)
class CommitChange:
    """One change of a commit batch. A put names its content by ``content``/``size`` (the
    server has it), by a ``delta`` against its base, or by its whole ``manifest``."""

    path: str
    kind: Literal["put", "delete"]
    base: int | None
    content: str | None = None
    size: int | None = None
    delta: ManifestDelta | None = None
    manifest: Sequence[ChunkRef] | None = None
    # the local file's date (ns since 1970 UTC) and read-only attribute (protocol.md, Push 3)
    mtime_ns: int | None = None
    readonly: bool | None = None

    @classmethod
    def delete(cls, path: str, base: int | None) -> CommitChange:
        return cls(path, "delete", base)

    def to_json(self, with_manifest: bool = True) -> JSONObject:
        """The wire form; without the ``manifest`` list when ``with_manifest`` is false
        (``commit_pieces`` writes it from the packed form)."""
        item: JSONObject = {"path": self.path, "kind": self.kind, "base": self.base}
        if self.kind == "delete":
            return item
        if self.mtime_ns is not None:
            item["mtime"] = self.mtime_ns
        if self.readonly is not None:
            item["readonly"] = self.readonly
        if self.manifest is not None:
            # the compact form: the server derives content id and size (protocol.md, Push 3)
            if with_manifest:
                item["manifest"] = chunks_to_json(self.manifest)
            return item
        item["content"] = self.content
        item["size"] = self.size
        if self.delta is not None:
            item["delta"] = {"base": self.delta.base, "ops": self.delta.ops}
        return item


def commit_pieces(
    batch: str, changes: Sequence[CommitChange], history: Mapping[str, object] | None,
    extra: Mapping[str, object] | None = None,
) -> Iterator[bytes]:
    """The commit body (``json.dumps`` of ``{"batch", "changes", "history"}`` with compact
    separators, byte for byte) in pieces: each manifest is written from its packed form a few
    thousand entries at a time (core/packed.py), never as a list of lists or one string."""
    yield b'{"batch":' + _dumps(batch) + b',"changes":['
    for n, change in enumerate(changes):
        item = _dumps(change.to_json(with_manifest=False))
        if n:
            yield b","
        if change.kind == "put" and change.manifest is not None:
            yield item[:-1] + b',"manifest":'
            yield from manifest_json(change.manifest)
            yield b"}"
        else:
            yield item
    yield b"]"
    if history is not None:
        yield b',"history":' + _dumps(history)
    for key, value in (extra or {}).items():  # the copy's report (issue 15)
        yield b"," + _dumps(key) + b":" + _dumps(value)
    yield b"}"


def encode_commit(
    batch: str, changes: Sequence[CommitChange], history: Mapping[str, object] | None,
    compress: bool, extra: Mapping[str, object] | None = None,
) -> tuple[bytes, bytes | None]:
    """The commit body and its ``Content-Encoding`` (zstd when ``compress`` and worth it),
    compressed as it is written (blocking for a large commit: run it in a thread).
    ``extra``: more top-level fields (a folded report)."""
    if compress and sum(len(c.manifest or ()) for c in changes) > JSON_PIECE_ENTRIES:
        # written twice, once to count it: a frame that states its size is decompressed by
        # the daemon into one buffer, not pieces joined into a second copy
        size = sum(len(piece) for piece in commit_pieces(batch, changes, history, extra))
        pieces = commit_pieces(batch, changes, history, extra)
        return bodycodec.compress_pieces(pieces, size), b"zstd"
    data = b"".join(commit_pieces(batch, changes, history, extra))
    if compress and bodycodec.worth_compressing(data):
        return bodycodec.compress(data), b"zstd"
    if compress and len(data) >= SMALL_COMMIT:
        # a small edit's commit is mostly hex ids: zstd takes about a quarter off (issue 15)
        packed = bodycodec.compress(data)
        if len(packed) + ENCODING_HEADER < len(data):
            return packed, b"zstd"
    return data, None


class HistoryKeeper(Protocol):
    """A copy's memory of the log it follows (``client/reconcile.py``)."""

    async def check(self, since: int | None) -> HistoryCheck: ...

    async def seen(self, mark: HistoryMark) -> None: ...


def history_json(check: HistoryCheck) -> dict[str, object]:
    """A commit's ``history``: the copy's view of the log (client/reconcile.py)."""
    return {
        k: v for k, v in (
            ("seq", check.seq), ("hash", check.hash), ("store", check.store),
            ("generation", check.generation),
        ) if v is not None
    }


def manifests_json(body: bytes) -> object:
    """A ``POST .../manifests`` answer parsed with each large ``chunks`` list packed straight
    from the bytes (core/manifestlift.py), not made into a list per entry first."""
    marker = secrets.token_hex(16) + ":"
    rest, lifted = lift_manifests(body, marker, PACK_MIN_ENTRIES, DEFAULT_MAX_ENTRIES, b"chunks")
    try:
        data = json.loads(rest)
    except ValueError as exc:
        raise ProtocolError("server answered manifests without valid JSON") from exc
    items = data.get("manifests") if isinstance(data, dict) and lifted else None
    for item in items if isinstance(items, list) else ():
        value = item.get("chunks") if isinstance(item, dict) else None
        if isinstance(value, str) and value.startswith(marker):
            item["chunks"] = lifted[int(value[len(marker) :])]
    return data


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


CommitStatus = Literal["applied", "unchanged", "conflict", "stale"]


@dataclass(frozen=True)
class CommitResult:
    """The outcome of one change: ``seq`` it was written as (applied, conflict),
    ``current_seq`` of the version the server already had (unchanged), ``conflict_path``
    where our version was kept (conflict)."""

    status: str
    seq: int | None = None
    current_seq: int | None = None
    conflict_path: str | None = None


@dataclass(frozen=True)
class CommitAnswer:
    """``POST .../commit``: the head after the batch and one result per change, in order."""

    head: int
    results: tuple[CommitResult, ...]
    history: HistoryMark | None = None
    reported: bool = False  # the report folded into the commit was recorded (issue 15)

    @property
    def all_applied(self) -> bool:
        return all(r.status == "applied" for r in self.results)


@dataclass(frozen=True)
class LockInfo:
    """An active check-out: ``holder`` has ``path`` (a file or a folder) since ``since``."""

    path: str
    holder: str | None
    since: str | None
    expires_at: str | None = None


@dataclass(frozen=True)
class FinalizedInfo:
    """An engagement's sign-off: read-only until an admin reopens it."""

    at: str | None
    by: str | None
    reason: str | None
    known: bool = True  # False: the server said "finalized" without the details

    def to_json(self) -> dict[str, str | None]:
        return {"at": self.at, "by": self.by, "reason": self.reason}

    def describe(self) -> str:
        if not self.known:
            return "the engagement is finalized (read-only); local changes are kept"
        return (
            f"the engagement was finalized by {self.by} at {self.at}: {self.reason}."
            " It is read-only until an admin reopens it; local changes are kept"
        )


@dataclass(frozen=True)
class DeadlineInfo:
    """The engagement's assembly deadline (docs/workflow.md), and a warning near it when this
    copy has unsynced work."""

    at: str
    report_date: str | None = None
    warning: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"at": self.at, "report_date": self.report_date, "warning": self.warning}


@dataclass(frozen=True)
class CopyContact:
    """``POST .../copies/<copy>/report``: the engagement's active locks, sign-off and
    assembly deadline."""

    locks: tuple[LockInfo, ...] = ()
    finalized: FinalizedInfo | None = None
    deadline: DeadlineInfo | None = None
    ignore_etag: str | None = None  # the engagement rules' ETag (None: an older server)
    # the log's head when the report named the copy's place in it (``history``), with the
    # store's identity; None: not asked, or an older server (then the changes feed is asked)
    head: int | None = None
    store: str | None = None
    generation: int | None = None
    inline: int = 0  # chunk bytes a commit may carry (0: an older server; issue 15)
    inline_raw: int = 0  # ...decoding to at most this (0: ``inline`` counts raw bytes)
    expect: int = 0  # a commit may carry the report with what the copy assumed (0: it may not)
    keyed: bool = False  # the server holds the copy's key hash (its reports may leave it out)


@dataclass(frozen=True)
class ConflictSide:
    """One version of a conflict item: ``seq`` in the log, who wrote it, its content."""

    seq: int | None
    user: str | None
    content: str | None
    size: int

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "user": self.user, "content": self.content, "size": self.size}


@dataclass(frozen=True)
class ConflictInfo:
    """An item of the server's review queue (docs/protocol.md, "Conflict review"): the edit
    ``ours`` of ``path`` lost to ``theirs`` and was kept as ``copy_path``. ``path_seq`` and
    ``copy_seq`` are the versions now, which a resolution names."""

    id: int
    path: str
    copy_path: str
    created_at: str
    theirs: ConflictSide
    ours: ConflictSide
    path_seq: int | None
    copy_seq: int | None
    copy_live: bool
    state: str  # open | resolved
    resolved_at: str | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    resolved_seq: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "path": self.path, "copy_path": self.copy_path,
            "created_at": self.created_at, "theirs": self.theirs.to_json(),
            "ours": self.ours.to_json(), "path_seq": self.path_seq, "copy_seq": self.copy_seq,
            "copy_live": self.copy_live, "state": self.state, "resolved_at": self.resolved_at,
            "resolved_by": self.resolved_by, "resolution": self.resolution,
            "resolved_seq": self.resolved_seq,
        }


@dataclass(frozen=True)
class Resolution:
    """``POST .../conflicts/<id>/resolve``: the item as resolved and the commit it made."""

    conflict: ConflictInfo
    head: int
    results: tuple[CommitResult, ...]


# -- reading answers strictly (a malformed answer is a ProtocolError) ---------------------------


def obj(value: object, what: str) -> JSONObject:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} answer is not a JSON object")
    return value


@overload
def field(
    data: Mapping[str, object], key: str, kind: type[_V], what: str, optional: Literal[False] = False
) -> _V: ...
@overload
def field(
    data: Mapping[str, object], key: str, kind: type[_V], what: str, optional: Literal[True]
) -> _V | None: ...
def field(
    data: Mapping[str, object], key: str, kind: type[_V], what: str, optional: bool = False
) -> _V | None:
    """``data[key]`` checked to be a ``kind`` (None allowed when ``optional``)."""
    value = data.get(key)
    if value is None and optional:
        return None
    # bool is an int in Python; the protocol never uses one for the other.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: field {key!r} is missing or not {kind.__name__}")
    return value


def parse_file_state(item: object) -> FileState:
    data = obj(item, "snapshot file")
    return FileState(
        path=field(data, "path", str, "snapshot file"),
        seq=field(data, "seq", int, "snapshot file"),
        content=field(data, "content", str, "snapshot file"),
        size=field(data, "size", int, "snapshot file"),
        mtime_ns=wire_mtime(data),
        readonly=field(data, "readonly", bool, "snapshot file", optional=True),
    )


def parse_change(item: object) -> Change:
    data = obj(item, "change")
    kind = data.get("kind")
    if kind not in ("put", "delete"):
        raise ProtocolError(f"change has unknown kind {kind!r}")
    content = field(data, "content", str, "change", optional=True)
    if kind == "put" and content is None:
        raise ProtocolError("a put change has no content")
    return Change(
        seq=field(data, "seq", int, "change"),
        path=field(data, "path", str, "change"),
        kind=kind,
        content=content,
        size=field(data, "size", int, "change"),
        prev_seq=field(data, "prev_seq", int, "change", optional=True),
        user=field(data, "user", str, "change"),
        session=field(data, "session", str, "change", optional=True),
        time=parse_time(field(data, "time", str, "change")),
        conflict_of=field(data, "conflict_of", str, "change", optional=True),
        batch=field(data, "batch", str, "change", optional=True),
        record_hash=field(data, "hash", str, "change", optional=True),
        mtime_ns=wire_mtime(data) if kind == "put" else None,
        readonly=field(data, "readonly", bool, "change", optional=True) if kind == "put" else None,
    )


def wire_mtime(data: Mapping[str, object]) -> int | None:
    """A version's ``mtime`` (ns since 1970 UTC); None when absent (a server before issue 16)
    or out of range: a date is never a reason to refuse a version."""
    value = data.get("mtime")
    if type(value) is not int or not MTIME_NS_MIN <= value <= MTIME_NS_MAX:
        return None
    return value


def history_fields(
    data: Mapping[str, object], token_key: str | None, what: str
) -> tuple[str | None, str | None, int | None]:
    """(record token at ``token_key``, store id, generation) of an answer; None when absent
    (a server older than history checks)."""
    token = None if token_key is None else field(data, token_key, str, what, optional=True)
    return (
        token,
        field(data, "store", str, what, optional=True),
        field(data, "generation", int, what, optional=True),
    )


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError(f"change time {text!r} is not ISO 8601") from exc
    if when.tzinfo is None:
        raise ProtocolError(f"change time {text!r} has no time zone")
    return when.astimezone(UTC)


def parse_session(value: object) -> SessionInfo:
    data = obj(value, "session")
    groups = data.get("groups")
    expires = data.get("expires_at")
    return SessionInfo(
        user=str(data.get("user") or ""),
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        expires_at=expires if isinstance(expires, str) else None,
    )


def parse_commit(value: object, changes: int) -> CommitAnswer:
    """A commit answer with one result per change (``changes`` of them)."""
    data = obj(value, "commit")
    head = field(data, "head", int, "commit")
    token, store, generation = history_fields(data, "head_hash", "commit")
    results = field(data, "results", list, "commit")
    if len(results) != changes:
        raise ProtocolError("commit answer has a different number of results than changes")
    return CommitAnswer(
        head=head,
        results=tuple(_commit_result(item) for item in results),
        history=HistoryMark(head if token is not None else None, token, store, generation),
        reported=data.get("reported") is True,
    )


def _commit_result(value: object) -> CommitResult:
    item = obj(value, "commit result")
    return CommitResult(
        status=field(item, "status", str, "commit result"),
        seq=_int_or_none(item.get("seq")),
        current_seq=_int_or_none(item.get("current_seq")),
        conflict_path=_str_or_none(item.get("conflict_path")),
    )


def parse_contact(value: object) -> CopyContact:
    """A copy report's answer; lock entries without a path are left out."""
    data = obj(value, "report")
    locks = tuple(
        LockInfo(
            path=item["path"], holder=_str_or_none(item.get("holder")),
            since=_str_or_none(item.get("since")), expires_at=_str_or_none(item.get("expires_at")),
        )
        for item in field(data, "locks", list, "report")
        if isinstance(item, dict) and isinstance(item.get("path"), str)
    )
    info = data.get("finalized")
    finalized = None
    if isinstance(info, dict):
        finalized = FinalizedInfo(
            _str_or_none(info.get("at")), _str_or_none(info.get("by")),
            _str_or_none(info.get("reason")),
        )
    elif info:
        finalized = FinalizedInfo(None, None, None, known=False)
    due = data.get("deadline")
    deadline = None
    if isinstance(due, dict) and isinstance(due.get("at"), str):
        deadline = DeadlineInfo(due["at"], _str_or_none(due.get("report_date")),
                                _str_or_none(due.get("warning")))
    _token, store, generation = history_fields(data, None, "report")
    return CopyContact(locks=locks, finalized=finalized, deadline=deadline,
                       ignore_etag=_str_or_none(data.get("ignore")),
                       head=field(data, "head", int, "report", optional=True),
                       store=store, generation=generation,
                       inline=_int_or_none(data.get("inline")) or 0,
                       inline_raw=_int_or_none(data.get("inline_raw")) or 0,
                       expect=_int_or_none(data.get("expect")) or 0,
                       keyed=data.get("keyed") is True)


def _int_or_none(value: object) -> int | None:
    return value if type(value) is int else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _side(value: object) -> ConflictSide:
    data = obj(value, "conflict version")
    return ConflictSide(
        seq=_int_or_none(data.get("seq")), user=_str_or_none(data.get("user")),
        content=_str_or_none(data.get("content")), size=field(data, "size", int, "conflict version"),
    )


def parse_conflict(value: object) -> ConflictInfo:
    """One review queue item."""
    data = obj(value, "conflict")
    state = field(data, "state", str, "conflict")
    if state not in ("open", "resolved"):
        raise ProtocolError(f"conflict has an unknown state {state!r}")
    return ConflictInfo(
        id=field(data, "id", int, "conflict"),
        path=field(data, "path", str, "conflict"),
        copy_path=field(data, "copy_path", str, "conflict"),
        created_at=field(data, "created_at", str, "conflict"),
        theirs=_side(data.get("theirs")),
        ours=_side(data.get("ours")),
        path_seq=_int_or_none(data.get("path_seq")),
        copy_seq=_int_or_none(data.get("copy_seq")),
        copy_live=field(data, "copy_live", bool, "conflict"),
        state=state,
        resolved_at=_str_or_none(data.get("resolved_at")),
        resolved_by=_str_or_none(data.get("resolved_by")),
        resolution=_str_or_none(data.get("resolution")),
        resolved_seq=_int_or_none(data.get("resolved_seq")),
    )


def parse_resolution(value: object) -> Resolution:
    data = obj(value, "resolution")
    return Resolution(
        conflict=parse_conflict(data.get("conflict")),
        head=field(data, "head", int, "resolution"),
        results=tuple(_commit_result(r) for r in field(data, "results", list, "resolution")),
    )
