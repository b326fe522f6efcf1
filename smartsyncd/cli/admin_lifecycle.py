"""``smartsync-admin`` commands of the engagement's life (issue 20, docs/workflow.md).

``engagement set ENG --report-date D --assembly-days N``: the report date and the assembly
deadline the daemon finalizes the engagement at; ``--min-retention-days N``: the engagement's
minimum retention. ``engagement dispose ENG``: remove the content after retention, print the
disposal record. ``legal-hold set|release ENG --reason R``. ``quota set|remove (--engagement
ENG | --user U) [--bytes N]``, ``quota list``. ``root-key``: the fingerprint of the key that
signs content roots (``storage/rootkey``). Actors are ``admin:<OS login>`` as for the
other workflow commands; exit 0 ok, 1 refused.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime
from typing import Any

from smartsyncd.cli.admin_workflow import actor
from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.storage.lifecycle_store import lifecycle_of
from smartsyncd.storage.quotas import Scope


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
    """``engagement set`` and ``engagement dispose`` (``engagement``: ACTION sub-parsers)."""
    put = engagement.add_parser(
        "set", help="report date and assembly deadline, minimum retention (audited)"
    )
    put.add_argument("name")
    put.add_argument("--report-date", type=report_date, metavar="D",
                     help="report release date (YYYY-MM-DD, or a time with its zone)")
    put.add_argument("--assembly-days", type=int, metavar="N",
                     help="days after the report date to assemble the final file (e.g. 45 or 60);"
                     " the engagement finalizes itself then")
    put.add_argument("--min-retention-days", type=int, metavar="N",
                     help="keep every version and the engagement at least N days (after"
                     " finalization for disposal); can be lengthened, never shortened")
    dispose = engagement.add_parser(
        "dispose", help="after retention: remove the content, keep a signed record (audited)"
    )
    dispose.add_argument("name")


def add_parsers(commands: Any) -> None:
    """``legal-hold set|release`` (and ``quota``)."""
    hold = commands.add_parser("legal-hold", help="block disposal and any deletion of an engagement")
    actions = hold.add_subparsers(dest="action", metavar="ACTION", required=True)
    for verb, text in (("set", "put the engagement under legal hold"), ("release", "lift the legal hold")):
        one = actions.add_parser(verb, help=text)
        one.add_argument("engagement")
        one.add_argument("--reason", required=True, help="why (kept in the audit trail)")


    quota = commands.add_parser("quota", help="storage quotas (logical and stored bytes)")
    qa = quota.add_subparsers(dest="action", metavar="ACTION", required=True)
    for verb, text in (("set", "set the quota of an engagement or a user"), ("remove", "remove a quota")):
        one = qa.add_parser(verb, help=text)
        who = one.add_mutually_exclusive_group(required=True)
        who.add_argument("--engagement", metavar="ENG")
        who.add_argument("--user", metavar="U")
        if verb == "set":
            one.add_argument("--bytes", type=int, required=True, metavar="N",
                             help="limit on both the live files' size and the bytes stored")
    qa.add_parser("list", help="every quota with its use")

    commands.add_parser(
        "root-key",
        help="the store's key that signs engagement content roots: its fingerprint (made on first use)",
    )


async def root_key(admin: AdminContext) -> int:
    """Print the signing key's fingerprint, the one ``smartsync verify`` shows and pins."""
    signer = await lifecycle_of(admin.store).root_signer()
    assert signer is not None
    admin.say(f"content root signing key (Ed25519): {signer.path}")
    admin.say(f"public key: {signer.public.hex()}")
    admin.say(f"SHA-256 fingerprint: {signer.fingerprint}")
    return 0


async def quota(admin: AdminContext, args: argparse.Namespace) -> int:
    store = lifecycle_of(admin.store)
    if args.action == "list":
        rows = await store.quotas()
        admin.say("scope\tname\tlimit\tlogical\tstored")
        for row in rows:
            admin.say("\t".join(str(v) for v in row))
        return 0
    scope: Scope = "engagement" if args.engagement else "user"
    principal: str = args.engagement or args.user
    if scope == "engagement":
        await admin.engagement(principal)
    limit: int | None = args.bytes if args.action == "set" else None
    if limit is not None and limit < 0:
        raise AdminError("--bytes must be 0 or more")
    logical, stored = await store.set_quota(scope, principal, limit, actor())
    what = "no quota" if limit is None else f"quota {limit} bytes"
    admin.say(f"{scope} {principal}: {what}; uses {logical} bytes logical, {stored} bytes stored")
    return 0


async def engagement_set(admin: AdminContext, args: argparse.Namespace) -> int:
    eng = await admin.engagement(args.name)
    store = lifecycle_of(admin.store)
    if (args.report_date is None) != (args.assembly_days is None):
        raise AdminError("give --report-date and --assembly-days together")
    if args.report_date is None and args.min_retention_days is None:
        raise AdminError("nothing to set: give --report-date D --assembly-days N and/or --min-retention-days N")
    if args.report_date is not None:
        if args.assembly_days < 0:
            raise AdminError("--assembly-days must be 0 or more")
        deadline = await store.set_report_date(int(eng.id), args.report_date, args.assembly_days, actor())
        admin.say(
            f"{args.name}: report date {args.report_date}, assembly deadline"
            f" {deadline.strftime('%Y-%m-%d %H:%M:%S UTC')} (the engagement finalizes itself then)"
        )
    if args.min_retention_days is not None:
        await store.set_min_retention(int(eng.id), args.min_retention_days, actor())
        admin.say(f"{args.name}: minimum retention {args.min_retention_days} day(s)")
    return 0


async def dispose(admin: AdminContext, args: argparse.Namespace) -> int:
    eng = await admin.engagement(args.name)
    record = await lifecycle_of(admin.store).dispose(int(eng.id), actor())
    admin.say(f"disposed of {args.name}: {record['versions']} version(s), {record['logical_bytes']} bytes"
              f" ({record['stored_bytes']} stored) removed; the change log and audit trail stay")
    admin.say("disposal record (audit chain eng:" + args.name + f" #{record['audit_seq']},"
              f" record hash {record['record_hash']}):")
    admin.out.write(json.dumps(record, sort_keys=True, indent=1) + "\n")
    return 0


async def run_lifecycle(admin: AdminContext, args: argparse.Namespace) -> int:
    if args.command == "engagement" and args.action == "set":
        return await engagement_set(admin, args)
    if args.command == "engagement" and args.action == "dispose":
        return await dispose(admin, args)
    if args.command == "legal-hold":
        eng = await admin.engagement(args.engagement)
        on = args.action == "set"
        await lifecycle_of(admin.store).legal_hold(int(eng.id), on, args.reason, actor())
        admin.say(f"{args.engagement}: legal hold " + ("set" if on else "released") + f": {args.reason}")
        return 0
    if args.command == "quota":
        return await quota(admin, args)
    if args.command == "root-key":
        return await root_key(admin)
    raise AdminError(f"unknown command {args.command}")
