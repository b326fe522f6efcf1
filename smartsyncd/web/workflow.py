"""HTTP routes of the engagement workflow (docs/protocol.md "Engagement workflow").

``add_workflow_routes`` registers them where the app is built (web/app.py), through the same
``engagement_route`` check as every other engagement route (web/access.py): session ->
engagement visible to the user -> role allows the operation. Check-out, check-in and restore
need ``write``; history, locks, export and copy contact need ``read`` (a reader's copy registers
and reports too). What an engagement's admins manage (break a lock, finalize, reopen, copies,
grants) is in web/manage.py; gc and the audit tools stay in ``smartsync-admin``.

A client names its sync copy with the ``Smartsync-Copy`` header (``parse.copy_header``); a
commit or restore from an abandoned copy is refused inside the commit transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.locks import MAX_LOCK_SECONDS
from smartsyncd.core.model import is_folder
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import ChangeLogStore, WorkflowStore
from smartsyncd.web.access import Access, Authorizer, engagement_route
from smartsyncd.web.bodies import (
    asks_folders,
    expect_object,
    get_int,
    get_str,
    query_str,
    read_json,
)
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.copyreport import ReportAnswers, RulesLookup, key_hash, parse_report
from smartsyncd.web.errors import send_json
from smartsyncd.web.history import check_from_body
from smartsyncd.web.limits import Limits
from smartsyncd.web.notify import ChangeNotifier
from smartsyncd.web.parse import copy_header, parse_time, query_path
from smartsyncd.web.pull import StoreIdentity
from smartsyncd.web.push import log_commit
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.shapes import (
    copy_json,
    export_file_json,
    iso_utc,
    lock_json,
    result_json,
    version_json,
)


class WorkflowRoutes:
    """Locks, history, restore, export and sync copies, over the store's workflow role."""

    def __init__(
        self,
        store: WorkflowStore,
        notifier: ChangeNotifier,
        limits: Limits,
        now: Callable[[], datetime],
        read_audit: ReadAudit,
        rules: RulesLookup,
        log: tuple[ChangeLogStore, StoreIdentity] | None = None,
        inline: int = 0,
    ) -> None:
        """``log``: where a copy report that names the copy's place in the log (``history``)
        reads the head it answers with (None: such reports are answered without it);
        ``inline``: the raw chunk bytes a commit may carry, advertised in its answer."""
        # the report's answer, shared with a commit that expected it (web/copyreport.py)
        self.answers = ReportAnswers(store, rules, log, inline, now)
        self._store = store
        self._notifier = notifier
        self._limits = limits
        self._now = now
        self._read_audit = read_audit  # history views and exports are audited (issue 20)

    # -- locks -----------------------------------------------------------------------------------

    async def list_locks(self, request: Request, access: Access) -> bytes:
        locks = await self._store.list_locks(access.engagement.id)
        return send_json(request, {"locks": [lock_json(lock) for lock in locks]})

    async def checkout(self, request: Request, access: Access) -> bytes:
        body = expect_object(read_json(request, self._limits.small_json))
        path = normalize_path(get_str(body, "path", max_len=4096))
        seconds = get_int(body, "seconds", minimum=1, nullable=True, required=False)
        if seconds is not None and seconds > MAX_LOCK_SECONDS:
            raise BadRequest(f"field 'seconds' must be at most {MAX_LOCK_SECONDS}", field="seconds")
        duration = None if seconds is None else timedelta(seconds=seconds)
        session = access.session
        lock = await self._store.checkout(access.engagement.id, path, session.user, session.id, duration)
        return send_json(request, lock_json(lock))

    async def checkin(self, request: Request, access: Access) -> bytes:
        body = expect_object(read_json(request, self._limits.small_json))
        path = normalize_path(get_str(body, "path", max_len=4096))
        lock = await self._store.checkin(access.engagement.id, path, access.session.user)
        return send_json(request, lock_json(lock))

    # -- history, restore, export ------------------------------------------------------------------

    async def history(self, request: Request, access: Access) -> bytes:
        path = query_path(request)
        versions = await self._store.history(access.engagement.id, path)
        self._read_audit.note(access.engagement.id, "history", access.session.user,
                              access.session.id, client_address(request), path=path,
                              versions=len(versions))
        return send_json(request, {"path": path, "versions": [version_json(v) for v in versions]})

    async def restore(self, request: Request, access: Access) -> bytes:
        body = expect_object(read_json(request, self._limits.small_json))
        path = normalize_path(get_str(body, "path", max_len=4096))
        version = get_int(body, "version", minimum=1)
        assert version is not None
        batch = get_str(body, "batch", max_len=128, non_empty=True)
        eng, session = access.engagement, access.session
        result = await self._store.restore(
            eng.id, session.user, session.id, copy_header(request), path, version, batch, self._now()
        )
        self._notifier.notify(eng.id, result.head)
        log_commit(eng.name, session.user, batch, result)
        return send_json(request, {"head": result.head, "results": [result_json(r) for r in result.results]})

    async def export(self, request: Request, access: Access) -> bytes:
        raw = query_str(request, "at")
        if raw is None:
            raise BadRequest("query argument 'at' is missing", field="at")
        at = parse_time(raw, "at")
        seq, files = await self._store.export_at(access.engagement.id, at)
        self._read_audit.note(access.engagement.id, "export", access.session.user,
                              access.session.id, client_address(request), at=iso_utc(at), seq=seq,
                              files=len(files))
        folders = asks_folders(request)  # else folder entries are left out (docs/protocol.md)
        listed = [export_file_json(f) for f in files if folders or not is_folder(f.content)]
        return send_json(request, {"at": iso_utc(at), "seq": seq, "files": listed})

    # -- copies ------------------------------------------------------------------------------------

    async def register_copy(self, request: Request, access: Access) -> bytes:
        body = expect_object(read_json(request, self._limits.small_json))
        copy_id = get_str(body, "copy", max_len=64, non_empty=True)
        host = get_str(body, "host", max_len=255, non_empty=True)
        session = access.session
        record = await self._store.register_copy(
            access.engagement.id, copy_id, session.user, host, session.id, key_hash(body)
        )
        # "zstd": uploads may come as one zstd stream (web/upload.py): a new copy's first
        # upload asks no /missing question, whose answer says the same (issue 15)
        return send_json(request, {**copy_json(record), "zstd": True})

    async def report_copy(self, request: Request, access: Access, copy: str) -> bytes:
        body = expect_object(read_json(request, self._limits.small_json))
        report = parse_report(body)
        check = check_from_body(body)  # the copy's place in the log: the answer has the head
        return send_json(request, await self.answers.answer(access, copy, report, check))


def add_workflow_routes(app: Klein, authorizer: Authorizer, routes: WorkflowRoutes) -> None:
    """Register the workflow routes on ``app`` behind ``authorizer``'s checks."""
    eng = "/v1/engagements/<engagement:eng>"
    get, post = ["GET"], ["POST"]
    on = engagement_route
    on(app, authorizer, "read", eng + "/locks", methods=get)(routes.list_locks)
    on(app, authorizer, "write", eng + "/locks", methods=post)(routes.checkout)
    on(app, authorizer, "write", eng + "/locks/release", methods=post)(routes.checkin)
    on(app, authorizer, "read", eng + "/history", methods=get)(routes.history)
    on(app, authorizer, "write", eng + "/restore", methods=post)(routes.restore)
    on(app, authorizer, "read", eng + "/export", methods=get)(routes.export)
    on(app, authorizer, "read", eng + "/copies", methods=post)(routes.register_copy)
    on(app, authorizer, "read", eng + "/copies/<copy:copy>/report", methods=post)(routes.report_copy)
