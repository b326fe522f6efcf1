"""``smartsync-admin branch ...``: branch offices' credentials and what they carry (issue 18).

Run against the central database (docs/branch-offices.md, "Carrying engagements"):

- ``branch add NAME [--credential-file FILE]``: a new branch office; its secret is printed
  once (or written to FILE, mode 0600, never overwriting); only its hash is stored.
- ``branch rotate NAME [--credential-file FILE]``: a new secret; the old one stops working.
- ``branch remove NAME``: revoke the credential and forget the branch's carry list.
- ``branch carry NAME ENG [--drop]``: the branch prefetches ENG (or stops).
- ``branch list [--json]``: the branches and what each carries.

Each change is audited (``storage/branches.py``). The lists replicate to the branches'
standbys with everything else in the database.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from twisted.internet.threads import deferToThread

from smartsyncd.auth.branchcred import new_secret, secret_hash, write_credential
from smartsyncd.cli.admin_json import plain
from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.core.errors import BadRequest
from smartsyncd.storage import branches
from smartsyncd.storage.api import TOOL_ACTOR


def add_parsers(commands: Any) -> None:
    branch = commands.add_parser("branch", help="branch offices: credentials and carried engagements")
    actions = branch.add_subparsers(dest="action", metavar="ACTION", required=True)
    for verb, text in (("add", "add a branch office and print its credential once"),
                       ("rotate", "give a branch a new credential (the old one stops working)")):
        p = actions.add_parser(verb, help=text)
        p.add_argument("name")
        p.add_argument("--credential-file", metavar="FILE",
                       help="write the secret to FILE (created 0600) instead of printing it")
    actions.add_parser("remove", help="revoke a branch's credential and forget its carry list").add_argument("name")
    carry = actions.add_parser("carry", help="have a branch prefetch an engagement (or --drop it)")
    carry.add_argument("name")
    carry.add_argument("engagement")
    carry.add_argument("--drop", action="store_true", help="stop carrying it")
    listing = actions.add_parser("list", help="branches and the engagements each carries")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def handles(args: argparse.Namespace) -> bool:
    return bool(args.command == "branch")


def _now() -> datetime:
    return datetime.now(UTC)


async def run_branch(ctx: AdminContext, args: argparse.Namespace) -> int:
    store: Any = ctx.store
    if args.action == "list":
        return await _list(ctx, await store.run_read(branches.list_branches), args.json)
    if args.action in ("add", "rotate"):
        try:
            branches.check_branch_name(args.name)
        except BadRequest as e:
            raise AdminError(e.message, code=2) from None
        secret = new_secret()
        if args.credential_file:  # first, so a file that exists refuses before any change
            try:
                await deferToThread(write_credential, args.credential_file, secret)
            except OSError as e:
                raise AdminError(f"cannot write {args.credential_file}: {e.strerror or e}; nothing changed") from None
        change = branches.add_branch if args.action == "add" else branches.rotate_branch
        await store.run_db(change, args.name, secret_hash(secret), TOOL_ACTOR, _now())
        done = "added branch" if args.action == "add" else "new credential for branch"
        if args.credential_file:
            ctx.say(f"{done} {args.name}: its credential is in {args.credential_file} (mode 0600)")
        else:
            ctx.say(f"{done} {args.name}; its credential (shown once, keep it in the branch's"
                    " [branch] credential_file, mode 0600):")
            ctx.say(secret)
        return 0
    if args.action == "remove":
        carried = await store.run_db(branches.remove_branch, args.name, TOOL_ACTOR, _now())
        ctx.say(f"removed branch {args.name}: its credential no longer works ({carried} engagements were carried)")
        return 0
    await ctx.engagement(args.engagement)
    changed = await store.run_db(branches.set_carry, args.name, args.engagement, not args.drop, TOOL_ACTOR, _now())
    verb = "no longer carries" if args.drop else "carries"
    ctx.say(f"branch {args.name} {verb} {args.engagement}" + ("" if changed else " (unchanged)"))
    return 0


async def _list(ctx: AdminContext, rows: list[branches.BranchRecord], as_json: bool) -> int:
    if as_json:
        ctx.out.write(json.dumps([plain(r) for r in rows], indent=1) + "\n")
        return 0
    for r in rows:
        carried = ", ".join(r.carries) or "(nothing)"
        ctx.say(f"{r.name}\tadded {r.created_at:%Y-%m-%d} by {r.created_by}\tcarries: {carried}")
    return 0
