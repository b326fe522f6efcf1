"""``smartsync-admin`` commands of the engagement's life (issue 20, docs/workflow.md).

``engagement set ENG --report-date D --assembly-days N``: the report date and the assembly
deadline the daemon finalizes the engagement at. Actors are ``admin:<OS login>`` as for the
other workflow commands; exit 0 ok, 1 refused.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime
from typing import Any

from smartsyncd.cli.admin_workflow import actor
from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.storage.lifecycle_store import lifecycle_of


def report_date(raw: str) -> date | datetime:
    """``2026-03-31`` (a date) or ``2026-03-31T17:00:00+00:00`` (a time with its zone)."""
    try:
        if "T" in raw or " " in raw.strip():
            value = datetime.fromisoformat(raw.strip())
            if value.tzinfo is None:
                raise ValueError("no zone")
            return value
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a date (2026-03-31) or a time with its zone (2026-03-31T17:00+00:00)"
        ) from None


def add_engagement_actions(engagement: Any) -> None:
    """``engagement set`` (``engagement``: admin_parser's ACTION sub-parsers)."""
    put = engagement.add_parser(
        "set", help="the report date and assembly deadline (the engagement finalizes itself then)"
    )
    put.add_argument("name")
    put.add_argument("--report-date", type=report_date, required=True, metavar="D",
                     help="report release date (YYYY-MM-DD, or a time with its zone)")
    put.add_argument("--assembly-days", type=int, required=True, metavar="N",
                     help="days after the report date to assemble the final file (e.g. 45 or 60)")


async def engagement_set(admin: AdminContext, args: argparse.Namespace) -> int:
    eng = await admin.engagement(args.name)
    store = lifecycle_of(admin.store)
    if args.assembly_days < 0:
        raise AdminError("--assembly-days must be 0 or more")
    deadline = await store.set_report_date(int(eng.id), args.report_date, args.assembly_days, actor())
    admin.say(
        f"{args.name}: report date {args.report_date}, assembly deadline"
        f" {deadline.strftime('%Y-%m-%d %H:%M:%S UTC')} (the engagement finalizes itself then)"
    )
    return 0


async def run_lifecycle(admin: AdminContext, args: argparse.Namespace) -> int:
    if args.command == "engagement" and args.action == "set":
        return await engagement_set(admin, args)
    raise AdminError(f"unknown command {args.command}")
