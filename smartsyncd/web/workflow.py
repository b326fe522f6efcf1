"""HTTP routes of the engagement workflow (docs/protocol.md "Engagement workflow").

They are registered on ``SyncAPI.app`` when this module is imported (``web/app.py`` imports it
at its end), through the same ``_engagement_route`` check as every other engagement route:
session -> engagement visible to the user -> role allows the operation. Check-out, check-in and
restore need ``write``; history, locks, export and copy contact need ``read`` (a reader's copy
registers and reports too). Admin-only actions (break a lock, finalize, reopen, abandon a copy,
gc, audit) are in ``smartsync-admin``, not here.

A client names its sync copy with the ``Smartsync-Copy`` header (``copy_header``); a commit or
restore from an abandoned copy is refused inside the commit transaction.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.locks import MAX_LOCK_SECONDS, Lock
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import CopyRecord, EngagementStatus
from smartsyncd.storage.lifecycle import deadline_warning
from smartsyncd.web.app import Access, SyncAPI, _engagement_route, _result_json, iso_utc
from smartsyncd.web.bodies import expect_object, get_int, get_str, query_str, read_json
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.errors import send_json

COPY_HEADER = b"smartsync-copy"
_COPY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
app = SyncAPI.app


def copy_header(request: Request) -> str | None:
    """The sync copy id of a ``Smartsync-Copy`` header (None if absent); malformed is a 400."""
    raw = request.requestHeaders.getRawHeaders(COPY_HEADER)
    if not raw:
        return None
    value = raw[0].decode("latin-1").strip()
    if not _COPY_ID.fullmatch(value):
        raise BadRequest("the Smartsync-Copy header must be 1-64 letters, digits, '-' or '_'")
    return value


def parse_time(text: str, field: str) -> datetime:
    """ISO 8601; a time without zone is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field} must be an ISO 8601 time such as 2026-03-31T17:00:00Z", field=field) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def lock_json(lock: Lock) -> dict[str, Any]:
    return {
        "path": lock.path,
        "holder": lock.holder,
        "since": iso_utc(lock.since),
        "expires_at": None if lock.expires_at is None else iso_utc(lock.expires_at),
    }


def copy_json(c: CopyRecord) -> dict[str, Any]:
    return {
        "copy": c.copy_id,
        "user": c.user,
        "host": c.host,
        "registered_at": iso_utc(c.registered_at),
        "last_contact": iso_utc(c.last_contact),
        "unsynced": c.unsynced,
        "unsynced_since": None if c.unsynced_since is None else iso_utc(c.unsynced_since),
        "abandoned_at": None if c.abandoned_at is None else iso_utc(c.abandoned_at),
        "abandoned_by": c.abandoned_by,
    }


def finalized_json(status: EngagementStatus) -> dict[str, Any] | None:
    if status.finalized_at is None:
        return None
    return {"at": iso_utc(status.finalized_at), "by": status.finalized_by, "reason": status.finalized_reason}


def deadline_json(status: EngagementStatus, unsynced: int, now: datetime) -> dict[str, Any] | None:
    """The assembly deadline (issue 20) and, near it, a warning for a copy with unsynced work."""
    if status.assembly_deadline is None:
        return None
    return {
        "at": iso_utc(status.assembly_deadline),
        "report_date": None if status.report_date is None else iso_utc(status.report_date),
        "warning": deadline_warning(status.assembly_deadline, status.finalized, unsynced, now),
    }


def _path(request: Request) -> str:
    raw = query_str(request, "path")
    if raw is None:
        raise BadRequest("query argument 'path' is missing", field="path")
    return normalize_path(raw)


# -- locks ---------------------------------------------------------------------------------------


@_engagement_route(app, "read", "/v1/engagements/<eng>/locks", methods=["GET"])
async def wf_list_locks(self: SyncAPI, request: Request, access: Access) -> bytes:
    locks = await self._store.list_locks(access.engagement.id)
    return send_json(request, {"locks": [lock_json(lock) for lock in locks]})


@_engagement_route(app, "write", "/v1/engagements/<eng>/locks", methods=["POST"])
async def wf_checkout(self: SyncAPI, request: Request, access: Access) -> bytes:
    body = expect_object(read_json(request, self.limits.small_json))
    path = normalize_path(get_str(body, "path", max_len=4096))
    seconds = get_int(body, "seconds", minimum=1, nullable=True, required=False)
    if seconds is not None and seconds > MAX_LOCK_SECONDS:
        raise BadRequest(f"field 'seconds' must be at most {MAX_LOCK_SECONDS}", field="seconds")
    duration = None if seconds is None else timedelta(seconds=seconds)
    lock = await self._store.checkout(access.engagement.id, path, access.session.user, access.session.id, duration)
    return send_json(request, lock_json(lock))


@_engagement_route(app, "write", "/v1/engagements/<eng>/locks/release", methods=["POST"])
async def wf_checkin(self: SyncAPI, request: Request, access: Access) -> bytes:
    body = expect_object(read_json(request, self.limits.small_json))
    path = normalize_path(get_str(body, "path", max_len=4096))
    lock = await self._store.checkin(access.engagement.id, path, access.session.user)
    return send_json(request, lock_json(lock))


# -- history, restore, export ---------------------------------------------------------------------


@_engagement_route(app, "read", "/v1/engagements/<eng>/history", methods=["GET"])
async def wf_history(self: SyncAPI, request: Request, access: Access) -> bytes:
    path = _path(request)
    versions = await self._store.history(access.engagement.id, path)
    self.read_audit.note(access.engagement.id, "history", access.session.user, access.session.id,
                         client_address(request), path=path, versions=len(versions))
    return send_json(
        request,
        {
            "path": path,
            "versions": [
                {
                    "version": v.number,
                    "seq": v.seq,
                    "kind": v.kind,
                    "content": v.content,
                    "size": v.size,
                    "user": v.user,
                    "time": iso_utc(v.time),
                    "conflict_of": v.conflict_of,
                    "available": v.available,
                }
                for v in versions
            ],
        },
    )


@_engagement_route(app, "write", "/v1/engagements/<eng>/restore", methods=["POST"])
async def wf_restore(self: SyncAPI, request: Request, access: Access) -> bytes:
    body = expect_object(read_json(request, self.limits.small_json))
    path = normalize_path(get_str(body, "path", max_len=4096))
    version = get_int(body, "version", minimum=1)
    assert version is not None
    batch = get_str(body, "batch", max_len=128, non_empty=True)
    eng = access.engagement
    result = await self._store.restore(
        eng.id, access.session.user, access.session.id, copy_header(request), path, version, batch, self._now()
    )
    self._notifier.notify(eng.id, result.head)
    self._log_commit(eng.name, access.session.user, batch, result)
    return send_json(request, {"head": result.head, "results": [_result_json(r) for r in result.results]})


@_engagement_route(app, "read", "/v1/engagements/<eng>/export", methods=["GET"])
async def wf_export(self: SyncAPI, request: Request, access: Access) -> bytes:
    raw = query_str(request, "at")
    if raw is None:
        raise BadRequest("query argument 'at' is missing", field="at")
    at = parse_time(raw, "at")
    seq, files = await self._store.export_at(access.engagement.id, at)
    self.read_audit.note(access.engagement.id, "export", access.session.user, access.session.id,
                         client_address(request), at=iso_utc(at), seq=seq, files=len(files))
    return send_json(
        request,
        {
            "at": iso_utc(at),
            "seq": seq,
            "files": [
                {"path": f.path, "seq": f.seq, "content": f.content, "size": f.size, "available": f.available}
                for f in files
            ],
        },
    )


# -- copies ---------------------------------------------------------------------------------------


@_engagement_route(app, "read", "/v1/engagements/<eng>/copies", methods=["POST"])
async def wf_register_copy(self: SyncAPI, request: Request, access: Access) -> bytes:
    body = expect_object(read_json(request, self.limits.small_json))
    copy_id = get_str(body, "copy", max_len=64, non_empty=True)
    host = get_str(body, "host", max_len=255, non_empty=True)
    record = await self._store.register_copy(
        access.engagement.id, copy_id, access.session.user, host, access.session.id
    )
    return send_json(request, copy_json(record))


@_engagement_route(app, "read", "/v1/engagements/<eng>/copies/<copy>/report", methods=["POST"])
async def wf_report_copy(self: SyncAPI, request: Request, access: Access, copy: str) -> bytes:
    body = expect_object(read_json(request, self.limits.small_json))
    host = get_str(body, "host", max_len=255, non_empty=True)
    unsynced = get_int(body, "unsynced", minimum=0)
    assert unsynced is not None
    since_raw = body.get("since")
    if since_raw is not None and not isinstance(since_raw, str):
        raise BadRequest("field 'since' must be an ISO 8601 time or null", field="since")
    since = None if since_raw is None else parse_time(since_raw, "since")
    eid = access.engagement.id
    record = await self._store.report_copy(
        eid, copy, access.session.user, host, access.session.id, unsynced, since
    )
    status = await self._store.engagement_status(eid)
    locks = await self._store.list_locks(eid)
    return send_json(
        request,
        {
            "copy": copy_json(record),
            "finalized": finalized_json(status),
            "locks": [lock_json(lock) for lock in locks],
            "deadline": deadline_json(status, record.unsynced, self._now()),
        },
    )
