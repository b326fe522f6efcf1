"""``smartsync-admin copies abandon ENG COPY --wipe`` and the wipe column of ``copies list``
(docs/workflow.md, "Remote wipe"): the order is recorded with the admin's name, and the copy
carries it out at its next contact with the server."""

from __future__ import annotations

from datetime import datetime

from smartsyncd.cli.context import AdminContext
from smartsyncd.storage.wipes import wipes_of, wipes_or_none


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else "-"


async def order_wipe(admin: AdminContext, engagement_id: int, copy_id: str, actor: str) -> int:
    """Abandon the copy (unless it already is) and order it wiped; say what happens next."""
    order = await wipes_of(admin.store).order_wipe(engagement_id, copy_id, actor)
    admin.say(
        f"abandoned copy {order.copy_id} ({order.user}) and ordered it wiped: at its next contact"
        " with this server it deletes its files and settings, uploading nothing, and reports"
        " that to the audit trail ('copies list' shows it)"
    )
    return 0


async def wipe_states(admin: AdminContext, engagement_id: int) -> dict[str, str]:
    """Copy id -> what to add to its state in ``copies list``."""
    wipes = wipes_or_none(admin.store)
    if wipes is None:
        return {}
    out: dict[str, str] = {}
    for order in await wipes.wipe_orders(engagement_id):
        if order.reported_at is None:
            out[order.copy_id] = f"; wipe ordered {_when(order.ordered_at)} by {order.ordered_by}, not reported yet"
        else:
            out[order.copy_id] = (
                f"; wiped {_when(order.reported_at)} on {order.reported_host}"
                f" ({order.files_removed} files removed)"
            )
    return out
