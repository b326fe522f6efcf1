"""``smartsync-admin`` commands of the engagement workflow (docs/workflow.md).

engagement finalize/reopen/retention/status, lock list/break, copies list/abandon,
audit verify/export, gc. Every state change names its actor in the audit trail: the operating
system account running the tool (``admin:<login>``). Exit codes as for the rest of the tool:
0 ok, 1 refused or damage found.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
from datetime import timedelta
from typing import Any

from smartsyncd.cli.admin_wipe import order_wipe, wipe_states
from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.core.errors import UnsyncedCopies


def actor() -> str:
    try:
        return f"admin:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name (containers): still say it was this tool
        return "admin:smartsync-admin"


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


async def _eid(admin: AdminContext, name: str) -> int:
    return int((await admin.engagement(name)).id)


async def engagement_action(admin: AdminContext, args: argparse.Namespace) -> int:
    store = admin.store
    eid = await _eid(admin, args.name)
    if args.action == "finalize":
        try:
            status, pending = await store.finalize(eid, actor(), args.reason, args.force)
        except UnsyncedCopies as e:
            raise AdminError(f"not finalized: {e.message}") from None
        for c in pending:
            admin.say(f"warning: copy {c.copy_id} ({c.user} on {c.host}) holds {c.unsynced} unsynced change(s)")
        admin.say(f"finalized {args.name} at {_when(status.finalized_at)}: {args.reason}")
        return 0
    if args.action == "reopen":
        await store.reopen(eid, actor(), args.reason)
        admin.say(f"reopened {args.name}: {args.reason}")
        return 0
    if args.action == "retention":
        days = None if args.keep_all else args.days
        await store.set_retention(eid, days, actor())
        admin.say(f"{args.name} keeps replaced versions " + ("forever" if days is None else f"{days} day(s)"))
        return 0
    status = await store.engagement_status(eid)
    admin.say(f"{status.name}\t" + (
        f"finalized {_when(status.finalized_at)} by {status.finalized_by}: {status.finalized_reason}"
        if status.finalized else "open"
    ) + "\tretention " + ("keep all" if status.retention_days is None else f"{status.retention_days} days")
        + ("" if status.assembly_deadline is None else
           f"\treport {_when(status.report_date)}\tassembly deadline {_when(status.assembly_deadline)}")
        + ("" if status.min_retention_days is None else f"\tminimum retention {status.min_retention_days} days")
        + ("" if status.legal_hold is None else f"\tLEGAL HOLD by {status.legal_hold_by}: {status.legal_hold}")
        + ("" if status.disposed_at is None else f"\tdisposed {_when(status.disposed_at)} by {status.disposed_by}"))
    return 0


async def run_workflow(admin: AdminContext, args: argparse.Namespace) -> int:
    store = admin.store
    if args.command == "lock":
        eid = await _eid(admin, args.engagement)
        if args.action == "list":
            locks = await store.list_locks(eid)
            for lock in locks:
                until = "" if lock.expires_at is None else f"\tuntil {_when(lock.expires_at)}"
                admin.say(f"{lock.path}\t{lock.holder}\tsince {_when(lock.since)}{until}")
            if not locks:
                admin.say("(no check-outs)")
            return 0
        lock = await store.break_lock(eid, args.path, actor(), args.reason)
        admin.say(f"broke the check-out of {lock.path} held by {lock.holder} since {_when(lock.since)}")
        return 0
    if args.command == "copies":
        eid = await _eid(admin, args.engagement)
        if args.action == "list":
            copies = await store.list_copies(eid)
            admin.say("copy\tuser\thost\tlast contact\tunsynced\tsince\tstate")
            wiped = await wipe_states(admin, eid)
            for c in copies:
                state = "active" if c.abandoned_at is None else f"abandoned {_when(c.abandoned_at)} by {c.abandoned_by}"
                state += wiped.get(c.copy_id, "")
                admin.say(
                    f"{c.copy_id}\t{c.user}\t{c.host}\t{_when(c.last_contact)}\t{c.unsynced}"
                    f"\t{_when(c.unsynced_since)}\t{state}"
                )
            return 0
        if args.wipe:
            return await order_wipe(admin, eid, args.copy, actor())
        c = await store.abandon_copy(eid, args.copy, actor())
        admin.say(f"abandoned copy {c.copy_id} ({c.user} on {c.host}); it can never commit again")
        return 0
    if args.command == "audit":
        if args.action == "verify":
            return await _verify(admin, args.engagement)
        return await _export(admin, args.engagement, args.format, args.global_chain)
    return await _gc(admin, args.engagement, timedelta(hours=args.grace_hours))


async def _verify(admin: AdminContext, engagement: str | None) -> int:
    if engagement is not None:
        await admin.engagement(engagement)
    reports = await admin.store.verify_audit(engagement)
    bad = 0
    for r in reports:
        if r.problem is None:
            admin.say(f"ok\t{r.chain}\t{r.records} records\thead {r.head_hash}")
        else:
            bad += 1
            admin.say(f"BAD\t{r.chain}\t{r.problem}")
    admin.say("audit verify: " + ("all chains intact" if not bad else f"{bad} chain(s) damaged"))
    return 1 if bad else 0


async def _export(admin: AdminContext, engagement: str | None, fmt: str, global_chain: bool = False) -> int:
    if global_chain == (engagement is not None):
        raise AdminError("give an engagement or --global (sign-ins), not both")
    if engagement is None:
        from smartsyncd.storage.lifecycle_store import lifecycle_of

        records = await lifecycle_of(admin.store).global_audit_records()
        engagement = "(global)"
    else:
        records = await admin.store.audit_records(await _eid(admin, engagement))
    rows = [
        {
            "time": r.time.isoformat(),
            "chain": r.chain,
            "seq": r.seq,
            "actor": r.actor,
            "event": r.event,
            "path": r.detail.get("path"),
            "detail": json.dumps(r.detail, sort_keys=True, ensure_ascii=False),
            "record_hash": r.record_hash,
        }
        for r in records
    ]
    if fmt == "json":
        admin.out.write(json.dumps({"engagement": engagement, "records": rows}, ensure_ascii=False, indent=1) + "\n")
        return 0
    writer = csv.DictWriter(admin.out, fieldnames=list(rows[0]) if rows else ["time"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


async def _gc(admin: AdminContext, engagement: str | None, grace: timedelta) -> int:
    names = [engagement] if engagement else [e.name for e in await admin.store.list_engagements()]
    for name in names:
        report = await admin.store.gc(await _eid(admin, name), grace)
        if report.skipped:
            admin.say(f"{name}: skipped ({report.skipped})")
            continue
        admin.say(
            f"{name}: removed {report.manifests_removed} manifest(s), {report.chunks_removed} chunk(s),"
            f" {report.packs_removed} pack(s) ({report.bytes_freed} bytes), {report.orphan_packs_removed} orphan pack(s)"
        )
    return 0
