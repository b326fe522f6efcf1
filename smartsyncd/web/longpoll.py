"""Parked long-polls: ``GET .../changes?wait=S`` held as plain records and answered in bulk.

A long-poll that finds no changes is *parked*: the handler (after the session, engagement and
role checks) registers a ``_Parked`` record with the ``ChangeNotifier`` and returns a leaf
resource that renders ``NOT_DONE_YET``, so Klein and its coroutine chain are done with the
request. Nothing per request runs again until it is woken.

When a commit wakes the waiters of an engagement (or a wait runs out), each woken record joins a
*group* keyed by (engagement, since, limit, notified head). The first record of a group starts one
``changes_since`` query, which runs after that head was notified, so it holds every change up
to the head that woke each member; the records woken while it runs join it. The answer is
exactly what ``changes_since`` returned, encoded ONCE per group (and zstd-compressed once if a
member asked for it), and written to every member with one shared, pre-built ``Headers`` object
per distinct set of response headers (``Content-Length`` included, so no chunked framing): per
request only ``Request.write`` + ``Request.finish`` remain (the TLS layer, smartsyncd/runtime/tlsbatching.py,
sends the one record straight to the socket when nothing is buffered before it). Members are
answered ``slice_size`` at a time with a reactor turn between slices (a timed call, no Deferred),
so other work interleaves with a large fan-out.

**A commit made by this process** (``LongPolls.committed``, called by the commit handler as soon
as the store's transaction has returned) answers without any query: the commit holds the change
records it wrote and the head they reached, and the change feed is the same for every member of
an engagement (``changes_since`` takes no user or role). While that commit's ``notify`` runs, a
group whose notified head IS that commit's head and whose ``since`` lies inside the commit's
range (``first seq - 1 <= since < head``: every change after ``since`` is one the commit wrote)
gets ``body_of(head, written changes after since, first limit)``: the records ``changes_since``
reads back right after that transaction, so the same bytes. Everything else keeps the query:
commits learned from another daemon (service/pgnotify.py), a head already notified past this
commit (a later commit's notification came first), a ``since`` before the commit's range,
replayed batches (nothing written), timeouts, and groups that already had a query running. Such
a group is encoded and its first ``FIRST_FRESH_SLICE`` members answered as soon as ``notify``
has returned, inside the commit handler, before the commit's own answer (which so waits for at
most 64 answers, a few ms, not a whole slice); no thread hop, no reactor turn in between. The
rest follow a slice per reactor turn as usual.

A client that disconnects while parked is unregistered at once (``notifyFinish`` errback): it
holds no timer and is skipped if its group is already being answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from smartsyncd.core import bodycodec
from smartsyncd.core.errors import SyncError
from smartsyncd.core.model import Change
from smartsyncd.web.errors import json_bytes
from smartsyncd.web.notify import ChangeNotifier

log = Logger(namespace="smartsyncd.web")

ChangesSince = Callable[[int, int, int], Awaitable[tuple[int, list[Change]]]]
# the JSON of a change feed page: (head, changes, whether the client asked for folder entries)
BodyOf = Callable[[int, list[Change], bool], object]
_GroupKey = tuple[int, int, int, int, bool]  # engagement, since, limit, head, folders
_HeaderKey = tuple[tuple[bytes, tuple[bytes, ...]], ...]
_Variant = tuple[Headers, bytes, bytes]  # headers, body, the whole response as sent

SLICE_SIZE = 256
FIRST_FRESH_SLICE = 64  # answered inside the commit handler, before the commit's own answer
_MAX_HEADER_SETS = 64


class ParkedResource(Resource):
    """What a parked long-poll's handler returns: rendering it leaves the request open."""

    isLeaf = True

    def render(self, request: Request) -> int:
        return NOT_DONE_YET


PARKED = ParkedResource()


class _Parked:
    """One parked request; called (no argument) by the notifier when it is woken."""

    __slots__ = (
        "owner", "request", "engagement_id", "since", "limit", "zstd", "headers", "key", "gone", "finished",
        "folders",
    )

    def __init__(
        self, owner: LongPolls, request: Request, engagement_id: int, since: int, limit: int,
        zstd: bool, headers: _HeaderKey, folders: bool = True,
    ) -> None:
        self.owner = owner
        self.folders = folders
        self.request = request
        self.engagement_id = engagement_id
        self.since = since
        self.limit = limit
        self.zstd = zstd
        self.headers = headers
        self.key: int | None = None
        self.gone = False
        self.finished: Deferred[None] | None = None  # our notifyFinish(), dropped before finish()

    def __call__(self) -> None:
        self.key = None
        self.owner._woken(self)


class _Answer:
    """One group's answer: the body encoded once, the headers built once per variant."""

    __slots__ = ("status", "plain", "compressed", "date", "variants")

    def __init__(self, status: int, plain: bytes, date: bytes) -> None:
        self.status = status
        self.plain = plain
        self.compressed: bytes | None = None
        self.date = date
        self.variants: dict[tuple[bool, _HeaderKey, bytes], _Variant] = {}

    def for_request(self, zstd: bool, base: _HeaderKey, version: bytes) -> _Variant:
        variant = self.variants.get((zstd, base, version))
        if variant is None:
            headers, body = self._build(zstd, base)
            status = b"%s %d %s\r\n" % (version, self.status, RESPONSES.get(self.status, b"Unknown"))
            lines = [status] + [name + b": " + value + b"\r\n" for name, values in headers.getAllRawHeaders()
                                for value in values]
            variant = self.variants[(zstd, base, version)] = (headers, body, b"".join(lines) + b"\r\n" + body)
        return variant

    def _build(self, zstd: bool, base: _HeaderKey) -> tuple[Headers, bytes]:
        body = self.plain
        compress = zstd and bodycodec.worth_compressing(body)
        if compress:
            if self.compressed is None:
                self.compressed = bodycodec.compress(body)
            body = self.compressed
        headers = Headers()
        for name, values in base:
            headers.setRawHeaders(name, list(values))
        headers.setRawHeaders(b"date", [self.date])
        headers.setRawHeaders(b"content-type", [b"application/json"])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        if compress:
            headers.setRawHeaders(b"content-encoding", [b"zstd"])
            headers.setRawHeaders(b"vary", [b"accept-encoding"])
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        return headers, body


class LongPolls:
    """Parks long-polls on a ``ChangeNotifier`` and answers each woken group with one query."""

    def __init__(
        self,
        notifier: ChangeNotifier,
        clock: IReactorTime,
        changes_since: ChangesSince,
        body_of: BodyOf,
        slice_size: int = SLICE_SIZE,
    ) -> None:
        self._notifier = notifier
        self._clock = clock
        self._call_later = clock.callLater
        self._changes_since = changes_since
        self._body_of = body_of
        self._slice = slice_size
        self._groups: dict[_GroupKey, list[_Parked]] = {}
        self._header_keys: dict[_HeaderKey, _HeaderKey] = {}  # one tuple per distinct set
        # set only while ``committed`` runs the notifier: (engagement, head, written changes),
        # and the groups it answers: (key, head, the changes of their answer)
        self._fresh: tuple[int, int, Sequence[Change]] | None = None
        self._fresh_groups: list[tuple[_GroupKey, int, Sequence[Change]]] = []
        self.queries = 0  # changes_since queries run for woken long-polls (tests, metrics)
        self.shortcuts = 0  # woken groups answered from the commit's own changes (no query)

    def committed(self, engagement_id: int, head: int, changes: Sequence[Change]) -> None:
        """Wake the long-polls behind ``head`` after a commit made by THIS process: ``changes``
        are the records its transaction wrote (``CommitResult.changes``), ending at ``head``.

        Equivalent to ``notifier.notify(engagement_id, head)``; groups the commit's records
        provably answer get them without a query (see the module docstring)."""
        if (
            changes
            and changes[-1].seq == head
            and changes[-1].seq - changes[0].seq == len(changes) - 1  # seq first..head, no gap
            and self._notifier.head(engagement_id) < head  # no later head was notified first
        ):
            self._fresh = (engagement_id, head, changes)
        try:
            self._notifier.notify(engagement_id, head)  # every member joins its group first
        finally:
            self._fresh = None
            groups, self._fresh_groups = self._fresh_groups, []
            for key, answer_head, answer_changes in groups:  # formed groups are answered, always
                self._answer_fresh(key, answer_head, answer_changes)

    def park(
        self, request: Request, engagement_id: int, since: int, limit: int, timeout: float,
        folders: bool = True,
    ) -> ParkedResource:
        """Hold ``request`` until the head passes ``since`` or ``timeout`` runs out; return the
        resource the handler must return (it leaves the request open). ``folders``: the client
        asked for folder entries (docs/protocol.md)."""
        zstd = bodycodec.accepts(request.requestHeaders.getRawHeaders(b"accept-encoding"))
        parked = _Parked(
            self, request, engagement_id, since, limit, zstd, self._header_key(request), folders
        )
        key = self._notifier.watch(engagement_id, since, timeout, parked)
        if key is not None:
            parked.key = key
        parked.finished = request.notifyFinish()
        parked.finished.addErrback(self._gone, parked)
        return PARKED

    def _header_key(self, request: Request) -> _HeaderKey:
        """The response headers set so far (Server, maybe Connection), Date left out."""
        key = tuple(
            (name, tuple(values))
            for name, values in request.responseHeaders.getAllRawHeaders()
            if name.lower() != b"date"
        )
        if len(self._header_keys) >= _MAX_HEADER_SETS:  # per-request headers: no sharing then
            return self._header_keys.get(key, key)
        return self._header_keys.setdefault(key, key)

    def _gone(self, _: Failure, parked: _Parked) -> None:
        parked.gone = True
        parked.request = None  # type: ignore[assignment]
        parked.finished = None
        if parked.key is not None:
            self._notifier.unwatch(parked.engagement_id, parked.key)
            parked.key = None

    def _woken(self, parked: _Parked) -> None:
        eid = parked.engagement_id
        key = (eid, parked.since, parked.limit, self._notifier.head(eid), parked.folders)
        group = self._groups.get(key)
        if group is not None:
            group.append(parked)  # its query starts after this head was notified
            return
        self._groups[key] = [parked]
        fresh = self._fresh
        if fresh is not None and fresh[0] == eid and fresh[1] == key[3]:
            _, head, written = fresh
            first = written[0].seq
            if first - 1 <= parked.since < head:
                # every change after ``since`` is one this commit wrote: the same records
                # changes_since reads back right after its transaction (docstring)
                self.shortcuts += 1
                start = parked.since - first + 1
                self._fresh_groups.append((key, head, written[start : start + parked.limit]))
                return
        Deferred.fromCoroutine(self._answer_group(key)).addErrback(
            lambda f: log.failure("answering woken long-polls failed", f)
        )

    def _answer_fresh(self, key: _GroupKey, head: int, changes: Sequence[Change]) -> None:
        try:
            answer = _Answer(200, json_bytes(self._body_of(head, list(changes), key[4])), datetimeToString())
        except Exception:
            answer = self._error_answer(Failure())
        self._answer_slice(self._groups.pop(key), 0, answer, min(FIRST_FRESH_SLICE, self._slice))

    async def _answer_group(self, key: _GroupKey) -> None:
        eid, since, limit, _, folders = key
        self.queries += 1
        try:
            head, changes = await self._changes_since(eid, since, limit)
            answer = _Answer(200, json_bytes(self._body_of(head, changes, folders)), datetimeToString())
        except Exception:
            answer = self._error_answer(Failure())
        self._answer_slice(self._groups.pop(key), 0, answer)

    def _answer_slice(self, group: list[_Parked], start: int, answer: _Answer, size: int | None = None) -> None:
        """Answer ``size`` (default ``slice_size``) members from ``start``; the rest a slice per
        reactor turn (a plain timed call: no Deferred or coroutine step per slice)."""
        end = start + (self._slice if size is None else size)
        for parked in group[start:end]:
            if not parked.gone:
                self._write(parked, answer)
        if end < len(group):
            self._call_later(0, self._answer_slice, group, end, answer)

    @staticmethod
    def _error_answer(failure: Failure) -> _Answer:
        exc = failure.value
        if isinstance(exc, SyncError):
            log.info("woken long-polls refused: {code}", code=exc.code)
            return _Answer(exc.status, json_bytes(exc.to_json()), datetimeToString())
        log.failure("internal error answering woken long-polls", failure)
        body = {"error": "internal_error", "message": "internal server error"}
        return _Answer(500, json_bytes(body), datetimeToString())

    @staticmethod
    def _write(parked: _Parked, answer: _Answer) -> None:
        request = parked.request
        if request.finished:
            return
        try:
            headers, body, raw = answer.for_request(parked.zstd, parked.headers, request.clientproto)
            request.setResponseCode(answer.status)
            request.responseHeaders = headers  # shared, read-only from here on
            if request.method == b"HEAD":
                request.write(body)  # twisted.web sends the headers only
            else:
                # The status line, headers and body as one pre-built bytes object, in one
                # write (one TLS record); what Request.write would have sent, without building
                # the header block again for each request. finish() then sees a started response
                # with a Content-Length (no chunked trailer) and completes the request as usual.
                request.startedWriting = 1
                request.sentLength = len(body)
                request.channel.write(raw)
            if parked.finished is not None:
                # ours only watched for a client going away while parked; finish() would run it
                # through the Deferred machinery for nothing (a visible share of each answer)
                notifications = getattr(request, "notifications", None)
                if notifications is not None and parked.finished in notifications:
                    notifications.remove(parked.finished)
                parked.finished = None
            request.finish()
        except Exception:
            log.failure("answering a woken long-poll failed")
