"""The wipe report route (docs/protocol.md, "Remote wipe"): a copy that obeyed a wipe order
says so, ``POST /v1/engagements/ENG/copies/COPY/wiped``.

Not behind ``engagement_route``: the copy was abandoned, so its session has ended and its user
may have lost access to the engagement, yet the firm must learn that the wipe happened. The
call is authenticated instead by the copy's own secret (``key``), whose SHA-256 the copy sent
when it registered (storage/wipes.py); it is good for this one purpose only. An unknown
engagement, copy or order and a wrong key get the same 404. Idempotent: a repeated report
answers the first one.
"""

from __future__ import annotations

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core.errors import NotFound
from smartsyncd.storage.wipes import WipeOrder, WipeStore
from smartsyncd.web.access import add_route
from smartsyncd.web.bodies import expect_object, get_int, get_str, read_json
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.errors import send_json
from smartsyncd.web.limits import Limits
from smartsyncd.web.shapes import JsonObject, iso_utc


def wipe_json(order: WipeOrder) -> JsonObject:
    return {
        "engagement": order.engagement,
        "copy": order.copy_id,
        "ordered_by": order.ordered_by,
        "ordered_at": iso_utc(order.ordered_at),
        "reported_at": None if order.reported_at is None else iso_utc(order.reported_at),
        "host": order.reported_host,
        "files": order.files_removed,
    }


def add_wipe_routes(app: Klein, wipes: WipeStore | None, limits: Limits) -> None:
    """Register the report route (a store without wipe orders answers 404 to it)."""

    async def report_wiped(request: Request, eng: str, copy: str) -> bytes:
        body = expect_object(read_json(request, limits.small_json))
        key = get_str(body, "key", max_len=64, non_empty=True)
        host = get_str(body, "host", max_len=255, non_empty=True)
        files = get_int(body, "files", minimum=0)
        assert files is not None
        if wipes is None:
            raise NotFound("no wipe order for this copy", copy=copy)
        order = await wipes.report_wipe(eng, copy, key, host, files, client_address(request))
        return send_json(request, wipe_json(order))

    add_route(
        app, "/v1/engagements/<engagement:eng>/copies/<copy:copy>/wiped", ["POST"], report_wiped,
        "report_wiped",
    )
