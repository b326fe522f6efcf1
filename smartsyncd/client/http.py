"""The client's typed calls to one server: every call of docs/protocol.md as an async method.

``ServerAPI`` sends through :class:`smartsyncd.client.transport.Transport` (requests, retries,
re-login, error mapping) and speaks in typed values only: requests are built from, and answers
parsed strictly into, the dataclasses of :mod:`smartsyncd.client.wire` and ``core.model``; a
malformed answer is a :class:`ProtocolError`, a refusal its typed ``ServerRefused``. Chunk
transfers are packed by :mod:`smartsyncd.client.chunkpacking`, several requests on the wire
at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS

from smartsyncd.client import transport
from smartsyncd.client.backoff import Backoff
from smartsyncd.client.bodyproducer import Body, BodyBuffers, body_length
from smartsyncd.client.chunkpacking import (
    CHUNKS_PER_REQUEST,
    UPLOAD_BODY_LIMIT,
    encode_request,
    fetch_batches,
    fetch_body,
    upload_batches,
    wanted_item,
)
from smartsyncd.client.errors import AuthError, ProtocolError, ServerRefused
from smartsyncd.client.fetchanswer import decode_answer
from smartsyncd.client.manifestanswer import manifest_item, parse_manifest, snapshot_files
from smartsyncd.client.progress import Progress
from smartsyncd.client.reportbody import iso_time as _iso
from smartsyncd.client.reportbody import report_body as report_body
from smartsyncd.client.rootapi import RootCalls
from smartsyncd.client.rootapi import eng_path as _eng
from smartsyncd.client.serverrules import RulesAnswer, parse_rules_answer
from smartsyncd.client.transport import HTTPRequester, Reply, RunInThread, decode_json
from smartsyncd.client.wire import (
    ChangePage,
    ChunkWanted,
    CommitAnswer,
    CommitChange,
    ConflictInfo,
    CopyContact,
    DeltaHint,
    HistoryKeeper,
    HistoryMark,
    JSONObject,
    Resolution,
    SessionInfo,
    Snapshot,
    UploadItem,
    encode_commit,
    field,
    history_fields,
    history_json,
    manifests_json,
    obj,
    parse_change,
    parse_commit,
    parse_conflict,
    parse_contact,
    parse_resolution,
    parse_session,
)
from smartsyncd.core.chunkstream import decode_to_raw
from smartsyncd.core.errors import SyncError
from smartsyncd.core.manifest import chunks_to_json
from smartsyncd.core.model import ChunkRef, Manifest

if TYPE_CHECKING:
    from smartsyncd.client.reactor import ClientReactor

log = Logger()

PROTOCOL_VERSION = 1
CHUNKS_TYPE = b"application/x-smartsync-chunks"
MISSING_PER_REQUEST = 10000
LONG_POLL_CAP = 60.0
PARALLEL_REQUESTS = 4  # chunk transfers on the wire at once
MANIFESTS_PER_REQUEST = 1000  # the server's default cap (docs/protocol.md "Limits")
# asks for folder entries (docs/protocol.md, "Folder entries"); without it a server hides them
FOLDERS = {"folders": "1"}

__all__ = [
    "CHUNKS_PER_REQUEST", "UPLOAD_BODY_LIMIT", "DeltaHint", "HistoryKeeper", "Reply",
    "ServerAPI", "fetch_batches", "fetch_body",
]


class ServerAPI(RootCalls):
    """Typed calls to one smartsyncd server (``base_url`` like ``https://host:8443``); the
    keyword arguments are the transport's (:class:`Transport`) and ``progress``."""

    def __init__(
        self,
        base_url: str,
        *,
        reactor: ClientReactor,
        policy: IPolicyForHTTPS,
        token: str | None = None,
        relogin: Callable[[], Awaitable[str]] | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 8,
        progress: Progress | None = None,
        bwlimit: int | None = None,
        timeout: float = 120.0,
        http: HTTPRequester | None = None,
        run_in_thread: RunInThread | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(
            base_url, reactor=reactor, policy=policy, token=token, relogin=relogin,
            backoff=backoff, max_attempts=max_attempts, bwlimit=bwlimit, timeout=timeout,
            http=http, run_in_thread=run_in_thread, proxy=proxy,
        )
        # only ``advance`` is called (per batch); the owner starts and finishes tasks
        self.progress = progress
        # chunks that uploads sent although the server had them (its "present" count): a
        # caller that uploads without asking /missing first watches this to resume asking
        self.chunks_present = 0
        # that copy's view of the log (client/reconcile.py): sent with change feeds and commits
        # so a restored server refuses (409 history_diverged) instead of stranding the copy
        self.keeper: HistoryKeeper | None = None
        # where the last snapshot stood in the log (a clone keeps it)
        self.snapshot_history: HistoryMark | None = None
        self.snapshot_manifests: dict[str, Manifest] = {}  # from the last snapshot(chunks=True)
        # the server answered 404 to POST .../manifests (an older one): manifests per file
        self.manifests_per_file = False
        # its /missing answer said it takes zstd-encoded uploads (chunkpacking.encode_body)
        self.stream_chunks = False
        self._bodies = BodyBuffers(keep=PARALLEL_REQUESTS)

    # -- sessions and information ------------------------------------------------------------

    async def info(self) -> JSONObject:
        """``GET /v1/info`` (no sign-in needed); checks the server speaks protocol 1."""
        data = obj(await self._json("GET", "/v1/info", auth=False), "info")
        protocols = data.get("protocol")
        if not isinstance(protocols, list) or PROTOCOL_VERSION not in protocols:
            raise ProtocolError(
                f"server speaks protocol versions {protocols!r}; this client speaks "
                f"{PROTOCOL_VERSION}"
            )
        return data

    async def login(self, user: str, password: str) -> str:
        """Sign in; stores and returns the session token."""
        if not password:
            raise AuthError("sign-in failed: empty password")
        data = obj(
            await self._json(
                "POST", "/v1/login", body={"user": user, "password": password}, auth=False,
                name_copy=True,  # a copy an admin ordered wiped learns it here too
            ),
            "login",
        )
        token = field(data, "token", str, "login")
        if not token:
            raise ProtocolError("login answer has an empty token")
        self.token = token
        log.info("signed in to {url} as {user}", url=self.base_url, user=user)
        return token

    async def logout(self) -> None:
        """End the session on the server and forget the token."""
        await self._request("POST", "/v1/logout", relogin=False)
        self.token = None

    async def session(self) -> SessionInfo:
        """Who this connection is signed in as."""
        return parse_session(await self._json("GET", "/v1/session"))

    async def list_engagements(self) -> list[JSONObject]:
        data = obj(await self._json("GET", "/v1/engagements"), "engagements")
        items = field(data, "engagements", list, "engagements")
        return [obj(item, "engagement") for item in items]

    async def engagement(self, name: str) -> JSONObject:
        return obj(await self._json("GET", _eng(name)), "engagement")

    # -- pull ----------------------------------------------------------------------------------

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Snapshot:
        """Live files at the head: ``(head, files)``. With ``chunks`` the server is asked for
        the first files' chunk lists too (a clone): kept, checked against their content ids,
        in ``snapshot_manifests`` (empty from a server that does not send them)."""
        # lean: a file with its chunk list may leave its content id out (client/manifestanswer.py)
        params = {**FOLDERS, "chunks": "1", "lean": "1"} if chunks else FOLDERS
        data = obj(await self._json("GET", _eng(eng, "snapshot"), params=params), "snapshot")
        head, items = field(data, "head", int, "snapshot"), field(data, "files", list, "snapshot")
        files, self.snapshot_manifests = snapshot_files(items, chunks)
        self.snapshot_history = HistoryMark(head, *history_fields(data, "head_hash", "snapshot"))
        return Snapshot(head, files)

    async def first_chunks(self, eng: str, small: int, budget: int, files: int) -> dict[str, bytes]:
        """A clone's first small files' chunks, picked by the server while the snapshot comes
        (docs/protocol.md, "First chunks"), each checked against its hash; none when it picks
        none (204), from an older server (404), or one that refused the request: the usual
        fetch then asks for them and says what is wrong."""
        params = {"small": str(small), "budget": str(budget), "files": str(files)}
        try:
            reply = await self._request("GET", _eng(eng, "snapshot", "chunks"), params=params)
            body = reply.body if reply.pieces is None else b"".join(reply.pieces)
            raw = await self._in_thread(decode_to_raw, body, CHUNKS_PER_REQUEST)
        except ServerRefused:
            return {}
        except SyncError as exc:
            raise ProtocolError(f"server sent bad chunk data: {exc.message}") from exc
        if self.progress is not None:
            self.progress.advance(sum(map(len, raw.values())))
        return raw

    async def changes(
        self, eng: str, since: int, limit: int = 5000, wait: float = 0
    ) -> ChangePage:
        """Changes with ``seq > since``: ``(head, changes, more)``; long-polls when ``wait``."""
        wait = max(0.0, min(float(wait), LONG_POLL_CAP))
        params = {"since": str(since), "limit": str(limit), **FOLDERS}
        if wait:
            params["wait"] = f"{wait:g}"
        keeper = self.keeper
        if keeper is not None:
            check = await keeper.check(since)
            if check.hash is not None:
                params["hash"] = check.hash
            if check.store is not None:
                params["store"] = check.store
            if check.generation is not None:
                params["generation"] = str(check.generation)
        data = obj(
            await self._json(
                "GET", _eng(eng, "changes"), params=params, timeout=self.timeout + wait
            ),
            "changes",
        )
        head = field(data, "head", int, "changes")
        changes = [parse_change(item) for item in field(data, "changes", list, "changes")]
        more = field(data, "more", bool, "changes")
        seqs = [c.seq for c in changes]
        if seqs != sorted(seqs) or (seqs and seqs[0] <= since):
            raise ProtocolError("changes answer is out of order or repeats old changes")
        if keeper is not None:
            last = changes[-1] if changes else None
            _token, store, generation = history_fields(data, None, "changes")
            await keeper.seen(HistoryMark(
                None if last is None else last.seq, None if last is None else last.record_hash,
                store, generation,
            ))
        return ChangePage(head, changes, more)

    async def manifest(self, eng: str, content: str, base: Manifest | None = None) -> Manifest:
        """The chunk list of ``content``, fetched as a delta against ``base`` when given."""
        params = {"base": base.content} if base is not None else None
        data = obj(
            await self._json("GET", _eng(eng, "manifests", content), params=params), "manifest"
        )
        return parse_manifest(data, content, base)

    async def manifests(
        self, eng: str, wanted: Sequence[tuple[str, Manifest | None]]
    ) -> dict[str, Manifest]:
        """The chunk lists of many contents (each as a delta against its base where given) in
        as few requests as the server's caps allow (``POST .../manifests``); a server without
        that route (404/405) is asked per file, as is any content it reports missing (so an
        unknown one is refused as the per-file route refuses it)."""
        bases = dict(wanted)
        todo = list(bases)
        result: dict[str, Manifest] = {}
        while todo and not self.manifests_per_file:
            batch, todo = todo[:MANIFESTS_PER_REQUEST], todo[MANIFESTS_PER_REQUEST:]
            files = [manifest_item(c, bases[c]) for c in batch]
            try:
                data = obj(await self._json(
                    "POST", _eng(eng, "manifests"), body={"files": files}, compress=True,
                    decode=manifests_json,  # large chunk lists packed from the bytes (wire.py)
                ), "manifests")
            except ServerRefused as exc:
                if exc.status not in (404, 405):
                    raise
                log.info("the server has no batched manifests; asking per file")
                self.manifests_per_file = True
                todo = batch + todo
                break
            for item in field(data, "manifests", list, "manifests"):
                answer = obj(item, "manifest")
                content = field(answer, "content", str, "manifest")
                if content not in bases or content not in batch:
                    raise ProtocolError(f"server sent a manifest not asked for: {content!r}")
                result[content] = parse_manifest(answer, content, bases[content])
            deferred = [c for c in batch if c not in result]
            if len(deferred) == len(batch):
                todo.extend(deferred)  # nothing came back: per file below
                break
            todo = deferred + todo
        for content in todo:
            result[content] = await self.manifest(eng, content, bases[content])
        return result

    async def fetch_chunks(
        self, eng: str, hashes: Iterable[ChunkWanted], stream: bool = False
    ) -> dict[str, bytes]:
        """Download chunks (raw bytes by hash), each verified against its hash.

        Items may be plain hashes or ``(hash, size)``/``ChunkRef``; sizes pack requests up to
        16 MiB (an unknown size counts as the largest chunk). A ``(hash, size, DeltaHint)``
        names bytes of a version this client has: the server may send the chunk as a delta
        against them (docs/protocol.md, codec 2); a delta that does not rebuild to its hash
        is fetched again whole, and a refused request is repeated without deltas. ``stream``:
        asks for one zstd stream (small files: client/pullbatch.py; a server ignores it).
        """
        wanted: dict[str, tuple[int, DeltaHint | None]] = {}
        for item in hashes:
            wanted.setdefault(*wanted_item(item))
        result: dict[str, bytes] = {}
        in_flight: list[tuple[list[str], Deferred[dict[str, bytes]]]] = []

        def collect(batch: list[str], raw: dict[str, bytes]) -> None:
            for digest in batch:
                result[digest] = raw[digest]
            if self.progress is not None:
                self.progress.advance(sum(len(raw[h]) for h in batch))

        try:
            for batch in fetch_batches(wanted):
                while len(in_flight) >= PARALLEL_REQUESTS:
                    done, waiting = in_flight.pop(0)
                    collect(done, await waiting)
                hints = {h: hint for h in batch if (hint := wanted[h][1]) is not None}
                in_flight.append(
                    (batch, Deferred.fromCoroutine(self._fetch_batch(eng, batch, hints, stream)))
                )
            while in_flight:
                done, waiting = in_flight.pop(0)
                collect(done, await waiting)
        finally:
            for _, pending in in_flight:
                pending.addErrback(lambda _: None)
                pending.cancel()
        return result

    async def _fetch_batch(
        self, eng: str, batch: list[str], hints: Mapping[str, DeltaHint] | None = None,
        stream: bool = False,
    ) -> dict[str, bytes]:
        body, prefixes = fetch_body(batch, hints or {}, stream)
        try:
            reply = await self._request(
                "POST", _eng(eng, "chunks", "fetch"), body=body, expect=CHUNKS_TYPE,
                compress=True,
            )
        except ServerRefused as exc:
            if not prefixes or exc.status not in (400, 404, 413):
                raise
            # the server would not use our bases (a version it no longer has?): whole chunks
            # (a 404 for the chunks themselves comes back from the plain request too)
            log.warn("fetch with deltas refused ({why}); fetching whole chunks", why=exc.message)
            return await self._fetch_batch(eng, batch, stream=stream)
        try:  # by hash, or by position in ``batch`` (a stream: client/fetchanswer.py)
            raw, failed = await self._in_thread(
                decode_answer, reply.body if reply.pieces is None else reply.pieces,
                reply.content_type, batch, prefixes)
        except SyncError as exc:
            raise ProtocolError(f"server sent bad chunk data: {exc.message}") from exc
        if failed:
            # our own base bytes did not rebuild these (a local base gone bad): never write
            # them; fetch them again without a delta
            log.warn("{n} chunk(s) did not rebuild from the local base; fetching them whole",
                     n=len(failed))
            raw.update(await self._fetch_batch(eng, failed, stream=stream))
        absent = [h for h in batch if h not in raw]
        if absent:
            raise ProtocolError(f"server left out {len(absent)} requested chunk(s)")
        return raw

    # -- push ----------------------------------------------------------------------------------

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]:
        """Which of ``hashes`` the server lacks (order kept, duplicates dropped)."""
        unique = list(dict.fromkeys(hashes))
        missing: list[str] = []
        for start in range(0, len(unique), MISSING_PER_REQUEST):
            batch = unique[start : start + MISSING_PER_REQUEST]
            data = obj(
                await self._json(
                    "POST", _eng(eng, "chunks", "missing"),
                    body={"chunks": batch, "answer": "index"}, compress=True,
                ),
                "missing",
            )
            self.stream_chunks = data.get("zstd") is True  # a daemon put back says no
            if "missing_index" in data:  # the compact answer: positions in ``batch``
                index = field(data, "missing_index", list, "missing")
                if not all(
                    type(i) is int and 0 <= i < len(batch) for i in index
                ) or index != sorted(set(index)):
                    raise ProtocolError("missing-chunks answer has bad positions")
                missing.extend(batch[i] for i in index)
                continue
            answer = field(data, "missing", list, "missing")
            asked = set(batch)
            if not all(isinstance(h, str) and h in asked for h in answer):
                raise ProtocolError("missing-chunks answer names chunks that were not asked")
            missing.extend(answer)
        return missing

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int:
        """Upload chunks given as ``(hash, raw bytes)`` or ``(hash, raw bytes, DeltaHint)``;
        returns request body bytes sent.

        Chunks are zstd-compressed in a thread and packed up to 24 MiB / 4096 per request,
        ``PARALLEL_REQUESTS`` on the wire at once, the next one packed meanwhile."""
        path = _eng(eng, "chunks")
        sent = 0
        in_flight: list[Deferred[int]] = []
        try:
            for batch in upload_batches(chunks):
                body, encoding, buffer = await self._in_thread(
                    encode_request, batch, self.stream_chunks, self._bodies)
                raw_total = sum(len(item[1]) for item in batch)
                batch.clear()  # its bytes are in ``body``: not held again while that travels
                try:
                    while len(in_flight) >= PARALLEL_REQUESTS:
                        sent += await in_flight.pop(0)
                except BaseException:
                    if buffer is not None:  # _post_chunks gives it back, but never started
                        self._bodies.give(buffer)
                    raise
                in_flight.append(Deferred.fromCoroutine(
                    self._post_chunks(path, body, raw_total, encoding, buffer)))
            while in_flight:
                sent += await in_flight.pop(0)
        finally:
            for pending in in_flight:  # only left after a failure: stop the rest quietly
                pending.addErrback(lambda _: None)
                pending.cancel()
        return sent

    async def _post_chunks(
        self, path: str, body: Body, raw_total: int, encoding: bytes | None,
        buffer: bytearray | None,
    ) -> int:
        size = body_length(body)
        try:
            reply = await self._request(
                "POST", path, data=body, content_type=CHUNKS_TYPE, encoding=encoding
            )
        finally:
            if buffer is not None:
                self._bodies.give(buffer)
        present = obj(decode_json(reply), "upload").get("present")
        if type(present) is int and present > 0:
            self.chunks_present += present
        if self.progress is not None:
            self.progress.advance(raw_total)
        return size

    async def commit(
        self, eng: str, batch: str, changes: Sequence[CommitChange],
        report: Mapping[str, object] | None = None, chunks: str | None = None,
    ) -> CommitAnswer:
        """Commit a batch of changes; a retried ``batch`` key returns the first answer.
        ``report``: the copy's report (``report_body``) folded in: ``answer.reported`` says
        whether the server recorded it (an older one ignores it). ``chunks``: small uploads
        carried along (client/inline.py), only to a server that advertised it."""
        keeper = self.keeper
        history = None if keeper is None else history_json(await keeper.check(None))
        extra = {k: v for k, v in (("report", report), ("chunks", chunks)) if v is not None}
        # written and compressed in a thread, manifests from their packed form (wire.py)
        data, encoding = await self._in_thread(
            encode_commit, batch, changes, history, self.compress_requests, extra
        )
        reply = await self._request("POST", _eng(eng, "commit"), data=data,
                                    content_type=transport.JSON_TYPE, encoding=encoding)
        answer = parse_commit(decode_json(reply), len(changes))
        if keeper is not None and answer.history is not None:
            await keeper.seen(answer.history)
        return answer

    # -- engagement workflow (docs/protocol.md "Engagement workflow") ---------------------------

    async def register_copy(
        self, eng: str, copy_id: str, host: str, key_hash: str | None = None
    ) -> JSONObject:
        """Tell the server about a new sync copy (at clone); ``key_hash``: SHA-256 of the
        copy's secret, which later authenticates its wipe report."""
        body = {"copy": copy_id, "host": host}
        if key_hash is not None:
            body["key_hash"] = key_hash
        answer = obj(await self._json("POST", _eng(eng, "copies"), body=body), "copy")
        self.stream_chunks = answer.get("zstd") is True
        return answer

    async def report_copy(
        self, eng: str, copy_id: str, host: str, unsynced: int, since: datetime | None,
        key_hash: str | None = None,
    ) -> CopyContact:
        """A contact: how many local changes this copy holds unsynced, and since when. The
        answer carries the engagement's active locks and its sign-off state."""
        body = report_body(host, unsynced, since, key_hash)
        keeper = self.keeper
        check = None if keeper is None else await keeper.check(None)
        if check is not None:  # the answer then says the head: nothing to ask when at it
            body["history"] = history_json(check)
        answer = parse_contact(
            await self._json("POST", _eng(eng, "copies", copy_id, "report"), body=body)
        )
        if keeper is not None and answer.head is not None:
            await keeper.seen(HistoryMark(None, None, answer.store, answer.generation))
        return answer

    async def report_wipe(
        self, eng: str, copy_id: str, key: str, host: str, files: int
    ) -> JSONObject:
        """Tell the server this copy obeyed its wipe order (docs/protocol.md "Remote wipe"):
        authenticated by the copy's secret, not a session, and sent without the copy header
        (which would only be answered with the order again). Idempotent."""
        body = {"key": key, "host": host, "files": files}
        return obj(
            await self._json(
                "POST", _eng(eng, "copies", copy_id, "wiped"), body=body, auth=False,
                name_copy=False,
            ),
            "wipe report",
        )

    async def ignore_rules(self, eng: str, etag: str | None) -> RulesAnswer:
        """The engagement's published ignore rules, or UNCHANGED (a 304) while ``etag`` holds."""
        reply = await self._request("GET", _eng(eng, "ignore"), if_none_match=etag)
        return parse_rules_answer(reply)

    async def checkout(self, eng: str, path: str, seconds: int | None = None) -> JSONObject:
        body: JSONObject = {"path": path, "seconds": seconds}
        return obj(await self._json("POST", _eng(eng, "locks"), body=body), "lock")

    async def checkin(self, eng: str, path: str) -> JSONObject:
        reply = await self._json("POST", _eng(eng, "locks", "release"), body={"path": path})
        return obj(reply, "lock")

    async def locks(self, eng: str) -> list[JSONObject]:
        data = obj(await self._json("GET", _eng(eng, "locks")), "locks")
        return [obj(item, "lock") for item in field(data, "locks", list, "locks")]

    async def history(self, eng: str, path: str) -> list[JSONObject]:
        data = obj(await self._json("GET", _eng(eng, "history"), params={"path": path}), "history")
        return [obj(item, "version") for item in field(data, "versions", list, "history")]

    async def restore(self, eng: str, path: str, version: int, batch: str) -> JSONObject:
        """Make ``version`` of ``path`` its newest version (retried safely: ``batch``)."""
        body = {"path": path, "version": version, "batch": batch}
        data = obj(await self._json("POST", _eng(eng, "restore"), body=body), "restore")
        field(data, "head", int, "restore")
        return data

    async def conflicts(
        self, eng: str, everyone: bool = False, resolved: bool = False
    ) -> list[ConflictInfo]:
        """The review queue's open items (and resolved ones with ``resolved``): those this
        user wrote a side of, or with ``everyone`` all of them (the reviewer role)."""
        params = {k: "1" for k, on in (("all", everyone), ("resolved", resolved)) if on}
        data = obj(await self._json("GET", _eng(eng, "conflicts"), params=params), "conflicts")
        return [parse_conflict(item) for item in field(data, "conflicts", list, "conflicts")]

    async def resolve_conflict(
        self, eng: str, item: ConflictInfo, choice: str, batch: str,
        merged: Sequence[ChunkRef] | None = None,
    ) -> Resolution:
        """Resolve ``item`` as listed (its ``path_seq``/``copy_seq``) by ``choice``: ours,
        theirs, or merged (``merged``: the merge's chunks, uploaded first). Retried safely:
        ``batch``. A changed item is refused (``ConflictStale``), a resolved one too
        (``ConflictResolved``)."""
        body: JSONObject = {"choice": choice, "batch": batch, "path_seq": item.path_seq,
                            "copy_seq": item.copy_seq}
        if merged is not None:
            body["manifest"] = chunks_to_json(merged)
        path = _eng(eng, "conflicts", str(item.id), "resolve")
        return parse_resolution(await self._json("POST", path, body=body))

    async def export(self, eng: str, at: datetime) -> tuple[int, list[JSONObject]]:
        """The files as they stood at ``at``: ``(seq, [{path, seq, content, size, available}])``."""
        data = obj(
            await self._json(
                "GET", _eng(eng, "export"), params={"at": _iso(at), **FOLDERS}
            ),
            "export",
        )
        files = [obj(item, "export file") for item in field(data, "files", list, "export")]
        return field(data, "seq", int, "export"), files

