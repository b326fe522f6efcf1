"""The Klein application implementing docs/protocol.md v1.

``SyncAPI`` gets everything it needs injected (store, sessions, notifier, clock, a runner for CPU
work) and holds no sync rules: it parses and checks requests, asks the store, and shapes JSON.
Every engagement route goes through ``_engagement_route``: bearer token -> session ->
engagement + role (an engagement the user has no role on is answered exactly like an unknown
one) -> ``acl.allows(role, operation)``. Every failure goes through ``errors.error_response``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import Any, cast

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

import smartsyncd
from smartsyncd.auth.acl import allows
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core import bodycodec, chunking, chunkstream, manifest
from smartsyncd.core.errors import (
    BadChunk,
    BadRequest,
    Finalized,
    Forbidden,
    NotFound,
    TooLarge,
)
from smartsyncd.core.model import Change, ChunkRef, HistoryCheck, ProposedChange, Role
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import (
    CommitResult,
    CommitResultItem,
    EngagementRecord,
    PutManifest,
    ServerStore,
    SessionRecord,
)
from smartsyncd.web.admission import ClientAddresses
from smartsyncd.web.bodies import (
    expect_object,
    get_int,
    get_list,
    get_str,
    guarded_channel_factory,
    parse_json,
    query_float,
    query_int,
    query_str,
    read_body,
)
from smartsyncd.web.clientaddr import Network, access_log_formatter, client_address
from smartsyncd.web.errors import error_response, json_bytes, send_json
from smartsyncd.web.health import HealthCache
from smartsyncd.web.history import check_from_body, check_from_query
from smartsyncd.web.limits import ClientLimits, Limits
from smartsyncd.web.longpoll import LongPolls, ParkedResource
from smartsyncd.web.notify import ChangeNotifier
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.upload import UploadRequest

log = Logger(namespace="smartsyncd.web")

CHUNKS_CONTENT_TYPE = b"application/x-smartsync-chunks"
_HASH = re.compile(r"[0-9a-f]{64}")
_BEARER = re.compile(r"Bearer ([A-Za-z0-9._~+/=-]{1,512})", re.IGNORECASE)
# Chunks are read from the store in slices so a fetch over the response cap stops early.
_FETCH_SLICE = 128
_INLINE_COMMIT_BYTES = 16 * 1024  # larger JSON bodies are parsed on the CPU pool
_RECORD_HEADER = 41


@dataclass(frozen=True)
class Access:
    """Who is asking, about which engagement, with which role (the auth check's result)."""

    session: SessionRecord
    engagement: EngagementRecord
    role: Role


@dataclass(frozen=True)
class ParsedCommit:
    batch: str
    changes: tuple[ProposedChange, ...]
    manifests: dict[str, PutManifest]
    check: HistoryCheck | None = None  # the copy's view of the log (web/history.py)


def iso_utc(when: datetime, micro: bool = True) -> str:
    """``2026-11-26T15:30:12.345678Z`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    raw = request.requestHeaders.getRawHeaders(b"authorization")
    if not raw:
        return None
    match = _BEARER.fullmatch(raw[0].decode("latin-1").strip())
    return match.group(1) if match else None


def _hash(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise BadRequest(f"field {field!r} must be a 64-character lowercase hex hash", field=field)
    return value


def _hash_list(body: Any, limit: int) -> list[str]:
    obj = expect_object(body)
    items = get_list(obj, "chunks", max_len=limit)
    return [_hash(h, f"chunks[{i}]") for i, h in enumerate(items)]


def _fetch_refs(body: Any, wanted: list[str], max_bytes: int) -> dict[str, tuple[str, int, int]]:
    """The optional base ranges of a fetch (docs/protocol.md): ``"bases": [content id, ...]``
    and ``"deltas": [[chunk index, base index, offset, length], ...]`` -> hash -> (base,
    offset, length). At most ``max_bytes`` of base ranges in all (``413``)."""
    obj = expect_object(body)
    if obj.get("deltas") is None:
        return {}
    items = get_list(obj, "deltas", max_len=len(wanted))
    bases = [_hash(b, f"bases[{j}]") for j, b in enumerate(get_list(obj, "bases", max_len=len(wanted)))]
    refs: dict[str, tuple[str, int, int]] = {}
    total = 0
    for k, item in enumerate(items):
        f = f"deltas[{k}]"
        if not (isinstance(item, list) and len(item) == 4 and all(type(x) is int for x in item)):
            raise BadRequest(f"field {f!r} must be [chunk index, base index, offset, length]", field=f)
        i, b, offset, length = item
        if not (0 <= i < len(wanted) and 0 <= b < len(bases)):
            raise BadRequest(f"field {f!r} names a chunk or base index out of range", field=f)
        if offset < 0 or not 0 < length <= chunkstream.DELTA_MAX_PREFIX:
            raise BadRequest(
                f"field {f!r} needs offset >= 0 and length 1..{chunkstream.DELTA_MAX_PREFIX}", field=f
            )
        if refs.setdefault(wanted[i], (bases[b], offset, length)) != (bases[b], offset, length):
            raise BadRequest(f"field {f!r} names a second base range for one chunk", field=f)
        total += length
    if total > max_bytes:
        raise TooLarge(f"the deltas name over {max_bytes} bytes of base ranges; ask for fewer", limit=max_bytes)
    return refs


def change_json(change: Change) -> dict[str, Any]:
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
    }


def changes_body(head: int, changes: list[Change], identity: tuple[str, int] | None = None) -> dict[str, Any]:
    """The answer to ``GET .../changes`` for ``changes_since``'s (head, changes); ``identity``
    is the store's (id, generation)."""
    more = bool(changes) and changes[-1].seq < head
    body: dict[str, Any] = {"head": head, "changes": [change_json(c) for c in changes], "more": more}
    if identity is not None:
        body["store"], body["generation"] = identity
    return body


def _with_field(e: BadRequest, field: str) -> BadRequest:
    return BadRequest(e.message, **{**e.details, "field": field})


def parse_commit(body: bytes, limits: Limits) -> ParsedCommit:
    """Parse and type-check a commit body (pure; the caller may run it off the reactor).

    Unknown keys are ignored; a wrong type is a BadRequest naming the field; paths are
    normalized (InvalidPath names the path). Delta ops are kept raw: storage applies them.
    """
    obj = expect_object(parse_json(body))
    batch = get_str(obj, "batch", max_len=128, non_empty=True)
    items = get_list(obj, "changes", max_len=limits.changes_per_commit)
    changes: list[ProposedChange] = []
    manifests: dict[str, PutManifest] = {}
    for i, raw in enumerate(items):
        fast = _plain_change(raw)
        if fast is not None:
            changes.append(fast[0])
            if fast[1] is not None:
                manifests[fast[0].path] = fast[1]
            continue
        f = f"changes[{i}]"
        item = expect_object(raw, f)
        path = normalize_path(get_str(item, "path", f"{f}.path"))
        kind = get_str(item, "kind", f"{f}.kind")
        base = get_int(item, "base", f"{f}.base", minimum=0, nullable=True)
        if kind == "delete":
            changes.append(ProposedChange(path=path, kind="delete", base=base))
            continue
        if kind != "put":
            raise BadRequest(f"field '{f}.kind' must be \"put\" or \"delete\"", field=f"{f}.kind")
        full, delta = item.get("manifest"), item.get("delta")
        if full is not None and delta is not None:
            raise BadRequest(f"{f} has both 'manifest' and 'delta'", field=f)
        chunks = None
        size: int | None
        if full is not None:
            try:
                chunks = manifest.chunks_from_json(full, field=f"{f}.manifest")
            except BadRequest as e:
                raise _with_field(e, f"{f}.manifest") from None
        if chunks is not None and item.get("content") is None and item.get("size") is None:
            # the compact form: content id and size follow from the full manifest
            content = manifest.content_id(chunks)
            size = sum(c.size for c in chunks)
        else:
            content = _hash(item.get("content"), f"{f}.content")
            size = get_int(item, "size", f"{f}.size", minimum=0)
        assert size is not None
        changes.append(ProposedChange(path=path, kind="put", base=base, content=content, size=size))
        if chunks is not None:
            manifests[path] = PutManifest(content=content, chunks=chunks)
        elif delta is not None:
            d = expect_object(delta, f"{f}.delta")
            delta_base = _hash(d.get("base"), f"{f}.delta.base")
            ops = get_list(d, "ops", f"{f}.delta.ops")
            manifests[path] = PutManifest(content=content, delta_base=delta_base, delta_ops=tuple(ops))
    return ParsedCommit(batch=batch, changes=tuple(changes), manifests=manifests, check=check_from_body(obj))


def _plain_change(raw: Any) -> tuple[ProposedChange, PutManifest | None] | None:
    """The two shapes a sync sends nearly always, checked without building field names: a
    delete, and a put with a full manifest only (content id and size derived). ``None`` for
    anything else, valid or not: ``parse_commit``'s full checks then decide and name the field.
    It accepts only what those checks accept, and gives the same result."""
    if type(raw) is not dict:
        return None
    path = raw.get("path")
    if type(path) is not str or "base" not in raw:
        return None
    base = raw["base"]
    if base is not None and (type(base) is not int or base < 0):
        return None
    kind = raw.get("kind")
    if kind == "delete":
        return ProposedChange(path=normalize_path(path), kind="delete", base=base), None
    full = raw.get("manifest")
    if (
        kind != "put"
        or type(full) is not list
        or len(full) > manifest.DEFAULT_MAX_ENTRIES
        or raw.get("delta") is not None
        or raw.get("content") is not None
        or raw.get("size") is not None
    ):
        return None
    refs = []
    for entry in full:
        if type(entry) is not list or len(entry) != 2:
            return None
        h, n = entry
        if type(n) is not int or not 0 < n <= chunking.MAX_CHUNK or not manifest.is_hash(h):
            return None
        refs.append(ChunkRef(h, n))
    chunks = tuple(refs)
    content = manifest.content_id(chunks)
    path = normalize_path(path)
    size = sum(c.size for c in chunks)
    return (
        ProposedChange(path=path, kind="put", base=base, content=content, size=size),
        PutManifest(content=content, chunks=chunks),
    )


def _engagement_route(
    app: Klein, operation: str, *route_args: Any, **route_kwargs: Any
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Like ``app.route``, but the handler gets an ``Access`` instead of the engagement name,
    after the session, visibility and role checks for ``operation`` passed."""

    def decorator(f: Callable[..., Awaitable[Any]]) -> Any:
        @app.route(*route_args, **route_kwargs)
        @wraps(f)
        async def handler(self: SyncAPI, request: Request, eng: str, **kwargs: Any) -> Any:
            access = await self.authorize(request, eng, operation)
            return await f(self, request, access, **kwargs)

        return handler

    return decorator


class SyncAPI:
    """The HTTP interface of the sync server (see docs/protocol.md)."""

    app = Klein()

    def __init__(
        self,
        store: ServerStore,
        sessions: SessionManager,
        notifier: ChangeNotifier,
        clock: IReactorTime,
        run_blocking: Callable[..., Awaitable[Any]],
        limits: Limits = Limits(),
        server_version: str = smartsyncd.__version__,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._notifier = notifier
        self.clock = clock
        # zope interface methods confuse mypy without the mypy-zope plugin
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self._run_blocking = run_blocking
        self.limits = limits
        self._version = server_version
        self._now = now or self._clock_now
        self._health = HealthCache(lambda: self._store.check_health(), clock)
        # downloads, exports, history views: buffered into the audit trail (web/readaudit.py)
        self.read_audit = ReadAudit(store, clock.callLater, self._now)  # type: ignore[misc]
        # parked long-polls: answered in bulk, one query and one encoding per woken group
        # the store's (id, generation), read by the first change feed or commit: constant while
        # the daemon runs (a restore or rollback happens with every daemon stopped)
        self._identity: tuple[str, int] | None = None
        self.longpolls = LongPolls(
            notifier, clock, lambda e, s, n: self._store.changes_since(e, s, n),
            lambda h, c: changes_body(h, c, self._identity),
        )

    async def identity(self) -> tuple[str, int]:
        if self._identity is None:
            self._identity = await self._store.store_identity()
        return self._identity

    def _clock_now(self) -> datetime:
        return datetime.fromtimestamp(self._seconds(), UTC)

    def resource(self) -> IResource:
        """The twisted.web resource serving this API."""
        return cast(IResource, self.app.resource())

    @app.handle_errors(Exception)
    def _error(self, request: Request, failure: Failure) -> bytes:
        return error_response(request, failure)

    # -- auth ------------------------------------------------------------------------------

    async def refuse_if_finalized(self, access: Access) -> None:
        """A signed-off engagement takes no new chunks (423 ``finalized``), as it takes no
        commit: they could never be used, and would only fill the disk."""
        status = await self._store.engagement_status(access.engagement.id)
        if status.finalized_at is not None:
            raise Finalized(
                f"the engagement was finalized (signed off) by {status.finalized_by}; it is"
                " read-only until an admin reopens it, and takes no chunks",
                reason=status.finalized_reason, finalized_by=status.finalized_by,
                finalized_at=iso_utc(status.finalized_at),
            )

    async def authorize(self, request: Request, name: str, operation: str) -> Access:
        """Session, then the engagement if this user may see it, then the role check."""
        session = await self._sessions.resolve(bearer_token(request))
        engagement = await self._store.get_engagement(name)
        role = None
        if engagement is not None:
            role = await self._store.role_for(name, session.user, session.groups)
        if engagement is None or role is None:
            # Same answer whether it does not exist or is not visible: no hint which.
            raise NotFound("no such engagement")
        if not allows(role, operation):
            raise Forbidden(f"role {role!r} may not {operation} in engagement {name!r}")
        return Access(session=session, engagement=engagement, role=role)

    async def _parse_json(self, body: bytes) -> Any:
        """``parse_json`` inline for a small body, on the CPU pool for a larger one (a 1 MiB
        body of empty lists takes about 0.15 s to parse)."""
        if len(body) > _INLINE_COMMIT_BYTES:
            return await self._run_blocking(parse_json, body)
        return parse_json(body)

    async def check_session(self, request: Request) -> SessionRecord:
        """The live session of the request's bearer token (or SessionExpired)."""
        return await self._sessions.resolve(bearer_token(request))

    # -- server information ----------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: Request) -> bytes:
        checks = await self._health.get()
        healthy = all(v == "ok" for v in checks.values())
        return send_json(request, {"status": "ok" if healthy else "error", **checks}, 200 if healthy else 503)

    @app.route("/v1/info", methods=["GET"])
    def info(self, request: Request) -> bytes:
        return send_json(
            request,
            {
                "server": "smartsyncd",
                "version": self._version,
                "protocol": [1],
                "chunking": {
                    "algorithm": "fastcdc",
                    "min": chunking.MIN_CHUNK,
                    "avg": chunking.AVG_CHUNK,
                    "max": chunking.MAX_CHUNK,
                },
                "limits": {
                    "json_body": self.limits.json_body,
                    "chunk_body": self.limits.chunk_body,
                    "chunks_per_request": self.limits.chunks_per_request,
                },
                "encodings": [bodycodec.ENCODING],
            },
        )

    # -- sessions --------------------------------------------------------------------------

    @app.route("/v1/login", methods=["POST"])
    async def login(self, request: Request) -> bytes:
        body = expect_object(await self._parse_json(read_body(request, self.limits.login_json)))
        user = get_str(body, "user", max_len=256)
        password = get_str(body, "password", max_len=4096)
        address = client_address(request)
        token, session = await self._sessions.sign_in(user, password, address)
        return send_json(
            request,
            {"token": token, "user": session.user, "expires_at": iso_utc(session.expires_at, False)},
        )

    @app.route("/v1/logout", methods=["POST"])
    async def logout(self, request: Request) -> bytes:
        token = bearer_token(request)
        await self._sessions.resolve(token)
        assert token is not None  # resolve refuses a missing token
        await self._sessions.sign_out(token)
        request.setResponseCode(204)
        return b""

    @app.route("/v1/session", methods=["GET"])
    async def session(self, request: Request) -> bytes:
        session = await self._sessions.resolve(bearer_token(request))
        return send_json(
            request,
            {
                "user": session.user,
                "groups": list(session.groups),
                "expires_at": iso_utc(session.expires_at, False),
            },
        )

    # -- engagements -----------------------------------------------------------------------

    @app.route("/v1/engagements", methods=["GET"])
    async def engagements(self, request: Request) -> bytes:
        session = await self._sessions.resolve(bearer_token(request))
        visible = []
        for e in await self._store.list_engagements():
            role = await self._store.role_for(e.name, session.user, session.groups)
            if role is not None and allows(role, "read"):
                visible.append({"name": e.name, "title": e.title, "role": role, "head": e.head})
        return send_json(request, {"engagements": visible})

    @_engagement_route(app, "read", "/v1/engagements/<eng>", methods=["GET"])
    async def engagement(self, request: Request, access: Access) -> bytes:
        e = access.engagement
        return send_json(request, {"name": e.name, "title": e.title, "role": access.role, "head": e.head})

    # -- pull ------------------------------------------------------------------------------

    @_engagement_route(app, "read", "/v1/engagements/<eng>/snapshot", methods=["GET"])
    async def snapshot(self, request: Request, access: Access) -> bytes:
        head, files = await self._store.snapshot(access.engagement.id)
        store, generation = await self.identity()
        # the record token at head: a clone remembers it (web/history.py)
        token = await self._store.record_token(access.engagement.id, head)
        return send_json(
            request,
            {
                "head": head,
                "files": [
                    {"path": f.path, "seq": f.seq, "content": f.content, "size": f.size}
                    for f in files
                    if f.content is not None
                ],
                "head_hash": token,
                "store": store,
                "generation": generation,
            },
        )

    @_engagement_route(app, "read", "/v1/engagements/<eng>/changes", methods=["GET"])
    async def changes(self, request: Request, access: Access) -> bytes | ParkedResource:
        since = query_int(request, "since", 0, 0)
        limit = min(query_int(request, "limit", self.limits.changes_page, 1), self.limits.changes_page)
        wait = min(query_float(request, "wait", 0.0, 0.0, 1e9), self.limits.max_wait)
        eid = access.engagement.id
        check = check_from_query(request, since)
        identity = await self.identity()
        # since past the head, or another record token at since: 409 history_diverged (the
        # store was restored; the copy reconciles instead of waiting for numbers it has seen)
        head, changes = await self._store.changes_since(eid, since, limit, check=check)
        if not changes and wait > 0:
            # parked: web/longpoll.py answers it (with what changes_since then says) once a
            # commit moves the head past ``since`` or the wait runs out
            return self.longpolls.park(request, eid, since, limit, wait)
        return send_json(request, changes_body(head, changes, identity))

    @_engagement_route(
        app, "read", "/v1/engagements/<eng>/manifests/<content>", methods=["GET"]
    )
    async def manifest(self, request: Request, access: Access, content: str) -> bytes:
        content = _hash(content, "content")
        base = query_str(request, "base")
        eid = access.engagement.id
        found = await self._store.get_manifest(eid, content)
        if found is None:
            raise NotFound(f"no manifest for content {content}", content=content)
        full = manifest.chunks_to_json(found.chunks)
        if base is not None and _hash(base, "base") != content:
            base_manifest = await self._store.get_manifest(eid, base)
            if base_manifest is not None:
                ops = manifest.make_delta(base_manifest.chunks, found.chunks)
                if len(json_bytes(ops)) < len(json_bytes(full)):
                    self.read_audit.note(eid, "download", access.session.user, access.session.id,
                                         client_address(request), content=content, size=found.size)
                    return send_json(
                        request,
                        {"content": content, "size": found.size, "delta": {"base": base, "ops": ops}},
                    )
        self.read_audit.note(eid, "download", access.session.user, access.session.id,
                             client_address(request), content=content, size=found.size)
        return send_json(request, {"content": content, "size": found.size, "chunks": full})

    @_engagement_route(app, "read", "/v1/engagements/<eng>/chunks/fetch", methods=["POST"])
    async def fetch_chunks(self, request: Request, access: Access) -> bytes:
        asked = await self._parse_json(_json_body(request, self.limits.small_json))
        wanted = _hash_list(asked, self.limits.chunks_per_request)
        # optional base ranges: chunks may come back as deltas against a version the caller has
        refs = _fetch_refs(asked, wanted, self.limits.delta_prefix_bytes)
        prefixes = await self._fetch_prefixes(access.engagement.id, refs) if refs else {}
        unique = list(dict.fromkeys(wanted))
        cap = self.limits.chunk_body
        found: dict[str, tuple[int, int, bytes]] = {}
        total = 0
        for start in range(0, len(unique), _FETCH_SLICE):
            for chunk in await self._store.read_chunks(access.engagement.id, unique[start : start + _FETCH_SLICE]):
                found[chunk.hash] = (chunk.codec, chunk.raw_size, chunk.payload)
                total += _RECORD_HEADER + len(chunk.payload)
            if total > cap:
                raise TooLarge(
                    f"the requested chunks are over the response limit of {cap} bytes; ask for fewer",
                    limit=cap,
                )
        unknown = [h for h in unique if h not in found]
        if unknown:
            raise NotFound(f"{len(unknown)} unknown chunk(s)", chunks=unknown)
        records: list[chunkstream.Record] = [(h, *found[h]) for h in wanted]
        if refs:  # compressing against the bases is CPU work: off the reactor
            records = await self._run_blocking(chunkstream.delta_encode_records, records, refs, prefixes)
        body = chunkstream.encode_records(records)
        if len(body) > cap:  # duplicates in the request
            raise TooLarge(f"response over the limit of {cap} bytes; ask for fewer", limit=cap)
        request.setHeader(b"content-type", CHUNKS_CONTENT_TYPE)
        return body

    async def _fetch_prefixes(
        self, engagement_id: int, refs: dict[str, tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], bytes]:
        """The base ranges a fetch names, cut from versions of THIS engagement only (a base
        that is not one, or a range past its end, is ``400 bad_request`` naming the base)."""
        ranges = set(refs.values())
        wanted: dict[tuple[str, int, int], list[tuple[str, int, int]]] = {}
        for base in sorted({b for b, _, _ in ranges}):
            found = await self._store.get_manifest(engagement_id, base)
            if found is None:
                raise BadRequest(f"delta base {base} is not a version in this engagement; fetch without it",
                                 field="bases", base=base)
            try:
                pieces = chunkstream.ranges_of(
                    [(c.hash, c.size) for c in found.chunks], [(o, n) for b, o, n in ranges if b == base]
                )
            except BadChunk as e:
                raise BadRequest(f"{e.message}; fetch without it", field="deltas", base=base) from None
            wanted.update({(base, o, n): p for (o, n), p in pieces.items()})
        hashes = list(dict.fromkeys(h for p in wanted.values() for h, _, _ in p))
        stored: dict[str, chunkstream.Record] = {}
        for start in range(0, len(hashes), _FETCH_SLICE):
            try:
                chunks = await self._store.read_chunks(engagement_id, hashes[start : start + _FETCH_SLICE])
            except NotFound:  # a base being collected right now: not a 404 for the asked chunks
                raise BadRequest("a delta base is no longer stored; fetch without it", field="bases") from None
            for c in chunks:
                stored[c.hash] = (c.hash, c.codec, c.raw_size, c.payload)
        prefixes: dict[tuple[str, int, int], bytes] = await self._run_blocking(
            chunkstream.assemble_prefixes, wanted, stored
        )
        return prefixes

    # -- push ------------------------------------------------------------------------------

    @_engagement_route(app, "write", "/v1/engagements/<eng>/chunks/missing", methods=["POST"])
    async def missing_chunks(self, request: Request, access: Access) -> bytes:
        body = await self._parse_json(_json_body(request, self.limits.small_json))
        wanted = _hash_list(body, self.limits.missing_per_request)
        await self.refuse_if_finalized(access)
        missing = await self._store.missing_chunks(access.engagement.id, list(dict.fromkeys(wanted)))
        if expect_object(body).get("answer") == "index":
            # compact answer: positions in the request instead of 64-character hashes
            lacking = set(missing)
            return send_json(request, {"missing_index": [i for i, h in enumerate(wanted) if h in lacking]})
        return send_json(request, {"missing": missing})

    @app.route("/v1/engagements/<eng>/chunks", methods=["POST"])
    async def upload_chunks(self, request: Request, eng: str) -> bytes:
        stream = getattr(request, "upload", None)
        if stream is not None:
            # Streamed (web/upload.py): authorized before the body was read, verified and
            # written while it arrived; this waits for fsync + index of the last part.
            access, stored, present = await stream.finish()
        else:
            # A request built by another factory (tests' in-memory Site): the whole body.
            access = await self.authorize(request, eng, "write")
            await self.refuse_if_finalized(access)
            body = read_body(request, self.limits.chunk_body)
            records = chunkstream.decode_records(body, max_records=self.limits.chunks_per_request)
            prefixes = await self._delta_prefixes(access.engagement.id, records)
            verified = await self._run_blocking(chunkstream.verify_records, records, prefixes)
            stored, present = await self._store.store_chunks(
                access.engagement.id, verified, user=access.session.user
            )
        log.info(
            "chunks for {engagement} from {user}: {stored} stored, {present} present",
            engagement=access.engagement.name,
            user=access.session.user,
            stored=stored,
            present=present,
        )
        return send_json(request, {"stored": stored, "present": present})

    async def _delta_prefixes(
        self, engagement_id: int, records: list[chunkstream.Record], spent: int = 0
    ) -> dict[tuple[str, int, int], bytes]:
        """The base ranges named by delta records, read from this engagement's own content
        (a base it does not have is a ``bad_chunk``); at most ``delta_prefix_bytes`` in all,
        counting the ``spent`` bytes earlier slices of the same request named."""
        refs = {chunkstream.delta_ref(r) for r in records if r[1] == chunkstream.CODEC_DELTA}
        if not refs:
            return {}
        if spent + chunkstream.delta_base_bytes(records) > self.limits.delta_prefix_bytes:
            raise TooLarge("delta records name too many base bytes; send fewer per request",
                           limit=self.limits.delta_prefix_bytes)
        wanted: dict[tuple[str, int, int], list[tuple[str, int, int]]] = {}
        for base in {b for b, _, _ in refs}:
            found = await self._store.get_manifest(engagement_id, base)
            if found is None:
                raise BadChunk(f"delta base {base} is not known here; send the chunk whole")
            pieces = chunkstream.ranges_of(
                [(c.hash, c.size) for c in found.chunks], [(o, n) for b, o, n in refs if b == base]
            )
            wanted.update({(base, o, n): p for (o, n), p in pieces.items()})
        hashes = list(dict.fromkeys(h for p in wanted.values() for h, _, _ in p))
        stored: dict[str, chunkstream.Record] = {}
        for start in range(0, len(hashes), _FETCH_SLICE):
            for c in await self._store.read_chunks(engagement_id, hashes[start : start + _FETCH_SLICE]):
                stored[c.hash] = (c.hash, c.codec, c.raw_size, c.payload)
        prefixes: dict[tuple[str, int, int], bytes] = await self._run_blocking(
            chunkstream.assemble_prefixes, wanted, stored
        )
        return prefixes

    @_engagement_route(app, "write", "/v1/engagements/<eng>/commit", methods=["POST"])
    async def commit(self, request: Request, access: Access) -> bytes:
        body = read_body(request, self.limits.json_body)
        if _content_encoding(request) is not None:
            body = await self._run_blocking(
                bodycodec.decode, body, _content_encoding(request), self.limits.json_body
            )
        # a batch of a few hundred changes already takes tens of ms to parse and check: off the
        # reactor, which meanwhile keeps reading the same client's chunk uploads
        if len(body) > _INLINE_COMMIT_BYTES:
            parsed: ParsedCommit = await self._run_blocking(parse_commit, body, self.limits)
        else:
            parsed = parse_commit(body, self.limits)
        eng = access.engagement
        user = access.session.user
        store, generation = await self.identity()
        result = await self._store.commit(
            eng.id, user, access.session.id, parsed.batch, list(parsed.changes), parsed.manifests, self._now(),
            copy=_workflow.copy_header(request), check=parsed.check,
        )
        # wakes the long-polls behind the new head; those this commit's records answer need no query
        self.longpolls.committed(eng.id, result.head, result.changes)
        self._log_commit(eng.name, user, parsed.batch, result)
        answer: dict[str, Any] = {"head": result.head, "results": [_result_json(r) for r in result.results]}
        if result.head_hash is not None:
            answer["head_hash"] = result.head_hash
        answer["store"], answer["generation"] = store, generation
        return send_json(request, answer)

    def _log_commit(self, engagement: str, user: str, batch: str, result: CommitResult) -> None:
        if result.changes:
            log.info(
                "commit {engagement} by {user}: seq {first}-{last}, {files} files, {bytes} bytes",
                engagement=engagement,
                user=user,
                first=result.changes[0].seq,
                last=result.changes[-1].seq,
                files=len(result.changes),
                bytes=sum(c.size for c in result.changes if c.kind == "put"),
                batch=batch,
            )
        else:
            log.info(
                "commit {engagement} by {user}: nothing written (replayed={replayed})",
                engagement=engagement,
                user=user,
                replayed=result.replayed,
                batch=batch,
            )
        for item in result.results:
            if item.status == "conflict":
                log.info(
                    "conflict in {engagement}: {path} by {user} kept as {conflict_path}",
                    engagement=engagement,
                    path=item.path,
                    user=user,
                    conflict_path=item.conflict_path,
                )


def _result_json(item: CommitResultItem) -> dict[str, Any]:
    # The fields of CommitResultItem written out, in their order, leaving out the optional ones
    # that are None (seq stays: null means "nothing written"). Neither asdict() (deep copy) nor
    # fields() per item: with 2,000-10,000 results per answer, both were a large share of the
    # reactor's time in a small-files sync.
    out: dict[str, Any] = {"path": item.path, "status": item.status, "seq": item.seq}
    if item.conflict_path is not None:
        out["conflict_path"] = item.conflict_path
    if item.current_seq is not None:
        out["current_seq"] = item.current_seq
    return out


def _content_encoding(request: Request) -> str | None:
    raw = request.requestHeaders.getRawHeaders(b"content-encoding")
    return raw[0].decode("latin-1") if raw else None


def _json_body(request: Request, limit: int) -> bytes:
    """A small JSON body, decoded from its ``Content-Encoding`` (zstd), capped at ``limit``."""
    body = read_body(request, limit)
    return bodycodec.decode(body, _content_encoding(request), limit)


class _SyncSite(Site):
    """A Site whose access log leaves out answered long-polls: one commit answers every waiting
    client, and 10,000 lines per commit cost about a third of the wake-up (bench/sessions.py);
    refusals and every other request are still logged."""

    def log(self, request: http.Request) -> None:
        if request.code == 200 and request.method == b"GET" and request.path.endswith(b"/changes"):
            return
        super().log(request)


def make_site(
    api: SyncAPI,
    *,
    timeout: float = 120,
    clients: ClientLimits = ClientLimits(),
    trusted_proxies: tuple[Network, ...] = (),
) -> Site:
    """The twisted.web Site for ``api``: body caps, idle timeout, per-address caps and the
    deadline before sign-in (web/admission.py), no version in ``Server``; behind
    ``trusted_proxies`` the client address comes from their X-Forwarded-For."""
    site = _SyncSite(
        api.resource(),
        reactor=api.clock,
        timeout=timeout,
        logFormatter=access_log_formatter(trusted_proxies),
    )
    site.client_addresses = ClientAddresses(clients)  # type: ignore[attr-defined]
    site.trusted_proxies = trusted_proxies  # type: ignore[attr-defined]
    site.requestFactory = UploadRequest  # type: ignore[assignment]
    site.sync_api = api  # type: ignore[attr-defined]  # UploadRequest streams chunk uploads into it
    site.protocol = guarded_channel_factory  # type: ignore[assignment]
    site.displayTracebacks = False
    return site


# The engagement workflow's routes (locks, history, restore, export, copies) register themselves
# on SyncAPI.app; imported last because they build on the names above.
from smartsyncd.web import workflow as _workflow  # noqa: E402
