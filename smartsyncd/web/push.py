"""The push routes (docs/protocol.md "Push"): which chunks are missing, chunk upload, commit.

``PushRoutes.add_to`` registers them behind the ``write`` check (web/access.py). A chunk
upload's body is streamed, verified and written while it arrives (web/upload.py) and authorized
before it is read; its route only waits for the durable result. A commit is parsed (off the
reactor when large), applied in one store transaction, and wakes the long-polls it answers; one
whose report says what the copy assumed (``report.expect``) is checked first, and refused with
the report's answer when that no longer holds (web/copyreport.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from klein import Klein
from twisted.logger import Logger
from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage.api import ChangeLogStore, ChunkStore, CommitResult, WorkflowStore
from smartsyncd.web.access import Access, Authorizer, add_route, engagement_route
from smartsyncd.web.bodies import expect_object, read_body
from smartsyncd.web.copyreport import ReportAnswers, parse_report
from smartsyncd.web.errors import send_json
from smartsyncd.web.inlinechunks import InlineChunks
from smartsyncd.web.limits import Limits
from smartsyncd.web.longpoll import LongPolls
from smartsyncd.web.parse import (
    INLINE_JSON_BYTES,
    ParsedCommit,
    content_encoding,
    copy_header,
    hash_list,
    json_body,
    parse_commit,
    parse_encoded_commit,
    parse_json_off_reactor,
)
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.pull import StoreIdentity
from smartsyncd.web.shapes import JsonObject, result_json
from smartsyncd.web.upload import UploadRequest

log = Logger(namespace="smartsyncd.web")


class PushRoutes:
    """What a copy writes: the routes of docs/protocol.md "Push"."""

    def __init__(
        self,
        chunks: ChunkStore,
        changelog: ChangeLogStore,
        authorizer: Authorizer,
        identity: StoreIdentity,
        longpolls: LongPolls,
        run_blocking: RunBlocking,
        limits: Limits,
        now: Callable[[], datetime],
        copies: WorkflowStore | None = None,
        inline: InlineChunks | None = None,
        answers: ReportAnswers | None = None,
    ) -> None:
        """``copies``: where a report folded into a commit is recorded (None: not taken);
        ``inline``: stores the small uploads a commit carries (None: refused); ``answers``:
        checks a report's ``expect`` and answers for it (None: such a commit is refused)."""
        self._copies = copies
        self._inline = inline
        self._answers = answers
        self._chunks = chunks
        self._changelog = changelog
        self._authorizer = authorizer
        self._identity = identity
        self._longpolls = longpolls
        self._run_blocking = run_blocking
        self._limits = limits
        self._now = now

    def add_to(self, app: Klein) -> None:
        auth = self._authorizer
        eng = "/v1/engagements/<engagement:eng>"
        engagement_route(app, auth, "write", eng + "/chunks/missing", methods=["POST"])(self.missing_chunks)
        # authorized by the upload stream before the body is read (web/upload.py)
        add_route(app, eng + "/chunks", ["POST"], self.upload_chunks, "upload_chunks")
        engagement_route(app, auth, "write", eng + "/commit", methods=["POST"])(self.commit)

    async def missing_chunks(self, request: Request, access: Access) -> bytes:
        body = await parse_json_off_reactor(self._run_blocking, json_body(request, self._limits.small_json))
        wanted = hash_list(body, self._limits.missing_per_request)
        await self._authorizer.refuse_if_finalized(access)
        missing = await self._chunks.missing_chunks(access.engagement.id, list(dict.fromkeys(wanted)))
        if expect_object(body).get("answer") == "index":
            # compact answer: positions in the request instead of 64-character hashes; "zstd":
            # uploads may come as one zstd stream (web/upload.py; an older client ignores it)
            lacking = set(missing)
            index = [i for i, h in enumerate(wanted) if h in lacking]
            return send_json(request, {"missing_index": index, "zstd": True})
        return send_json(request, {"missing": missing})

    async def upload_chunks(self, request: Request, eng: str) -> bytes:
        # Streamed (web/upload.py): authorized before the body was read, verified and written
        # while it arrived; this waits for fsync + index of the last part.
        stream = request.upload if isinstance(request, UploadRequest) else None
        if stream is None:
            raise RuntimeError("chunk uploads need the request factory of web.app.make_site")
        access, stored, present = await stream.finish()
        log.info(
            "chunks for {engagement} from {user}: {stored} stored, {present} present",
            engagement=access.engagement.name,
            user=access.session.user,
            stored=stored,
            present=present,
        )
        return send_json(request, {"stored": stored, "present": present})

    async def commit(self, request: Request, access: Access) -> bytes:
        limits = self._limits
        body = read_body(request, limits.json_body)
        encoding = content_encoding(request)
        # a batch of a few hundred changes already takes tens of ms to parse and check: off the
        # reactor, which meanwhile keeps reading the same client's chunk uploads. Compressed, it
        # is decompressed piece by piece as it is parsed (web/parse.py parse_encoded_commit).
        if encoding is not None or len(body) > INLINE_JSON_BYTES:
            parsed: ParsedCommit = await self._run_blocking(parse_encoded_commit, body, encoding, limits)
        else:
            parsed = parse_commit(body, limits)
        del body  # a large commit's body is 25 MB: not held through the store's transaction
        eng = access.engagement
        user = access.session.user
        # the copy's report folded in (issue 15): checked before anything is written, recorded
        # after the commit; a request that does not name its copy has no report to record
        copy = copy_header(request)
        report = None if parsed.report is None else parse_report(parsed.report, "report.")
        if report is not None and report.expect is not None:
            # an edit sync in one request: what the report's answer would have let the copy
            # decide is checked before anything is stored (409 expect_unmet carries it)
            if copy is None or self._answers is None or self._copies is None:
                raise BadRequest("this commit cannot check 'report.expect': report alone first",
                                 field="report.expect")
            paths = (c.path for c in parsed.changes)
            await self._answers.refuse_if_unmet(access, copy, report, parsed.check, paths)
        if parsed.chunks is not None:  # stored durably before the commit's transaction
            if self._inline is None:
                raise BadRequest("this server takes no chunks in a commit", field="chunks")
            await self._inline.store(access, parsed.chunks)
        store, generation = await self._identity.get()
        result = await self._changelog.commit(
            eng.id, user, access.session.id, parsed.batch, list(parsed.changes), parsed.manifests, self._now(),
            copy=copy, check=parsed.check,
        )
        # wakes the long-polls behind the new head; those this commit's records answer need no query
        self._longpolls.committed(eng.id, result.head, result.changes)
        log_commit(eng.name, user, parsed.batch, result)
        answer: JsonObject = {"head": result.head, "results": [result_json(r) for r in result.results]}
        if result.head_hash is not None:
            answer["head_hash"] = result.head_hash
        check = parsed.check
        if check is None or (check.store, check.generation) != (store, generation):
            # else the copy named these very ones: it keeps what it has (issue 15: bytes)
            answer["store"], answer["generation"] = store, generation
        if report is not None and copy is not None and self._copies is not None:
            await report.record(self._copies, eng.id, copy, user, access.session.id)
            answer["reported"] = True
        return send_json(request, answer)


def log_commit(engagement: str, user: str, batch: str, result: CommitResult) -> None:
    """One line per commit (or restore), and one per conflict it kept."""
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
