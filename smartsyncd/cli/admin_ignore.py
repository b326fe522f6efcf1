"""``smartsync-admin engagement ignore NAME --set FILE | --show | --clear``: the engagement's
published ignore rules (docs/operations.md, "Engagement ignore rules").

``--set`` reads a gitignore-syntax file (``-``: standard input), refuses a bad pattern naming
its line and a file over 64 KiB, and prints the new digest; ``--show`` prints the rules as set
(nothing when there are none); ``--clear`` removes them. Each change is audited as done by
``smartsync-admin``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.core.ignore import MAX_RULES_BYTES


def add_parsers(engagement: Any) -> None:
    """``engagement ignore`` (``engagement``: the engagement command's actions)."""
    ignore = engagement.add_parser(
        "ignore", help="set, show or clear the engagement's ignore rules (gitignore syntax)"
    )
    ignore.add_argument("name")
    which = ignore.add_mutually_exclusive_group(required=True)
    which.add_argument("--set", metavar="FILE", dest="rules_file", help="rules file ('-': stdin)")
    which.add_argument("--show", action="store_true", help="print the rules as set")
    which.add_argument("--clear", action="store_true", help="remove the rules")


def handles(args: argparse.Namespace) -> bool:
    return args.command == "engagement" and args.action == "ignore"


def _read_rules(name: str) -> str:
    try:
        data = sys.stdin.buffer.read(MAX_RULES_BYTES + 1) if name == "-" else Path(name).read_bytes()
    except OSError as e:
        raise AdminError(f"cannot read {name}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AdminError(f"{name} is not UTF-8 text; nothing changed") from None


async def run_ignore(ctx: AdminContext, args: argparse.Namespace) -> int:
    record = await ctx.engagement(args.name)
    if args.show:
        rules = await ctx.store.ignore_rules(record.id)
        if rules is not None:
            ctx.out.write(rules.text if rules.text.endswith("\n") or not rules.text else rules.text + "\n")
        return 0
    if args.clear:
        await ctx.store.set_ignore_rules(args.name, None)
        ctx.say(f"cleared the ignore rules of {args.name}")
        return 0
    text = await deferToThread(_read_rules, args.rules_file)
    digest = await ctx.store.set_ignore_rules(args.name, text)
    ctx.say(f"set the ignore rules of {args.name}: {len(text.splitlines())} lines, digest {digest}")
    return 0
