"""``smartsync-admin`` storage volume commands (docs/operations.md, "Storage volumes").

``volume list [--json]``: each volume of the config (``default`` is ``[storage] path``), its
folder, free and total bytes, whether it is below ``[storage] warn_free_mb``, and how many
engagements live on it (a volume the database names but the config lacks is listed without a
folder). ``engagement create NAME --volume V`` places a new engagement (without
``--volume``: the volume with the most free space). ``engagement move NAME --volume V`` moves
one online (``storage/volumes.py``), printing what it copied.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet.threads import deferToThread

from smartsyncd.cli.context import AdminContext, AdminError
from smartsyncd.storage import volumes
from smartsyncd.web.diskspace import free_space


def add_parsers(commands: Any, engagement: Any) -> None:
    """``volume list`` (``commands``) and ``engagement move`` (``engagement``: its actions)."""
    volume = commands.add_parser("volume", help="storage volumes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    listing = volume.add_parser("list", help="volumes, their free space and engagements")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    move = engagement.add_parser(
        "move", help="move an engagement's files to another volume, online (copy, verify, switch, remove)"
    )
    move.add_argument("name")
    move.add_argument("--volume", required=True, metavar="V", help="the target volume's name")


def handles(args: argparse.Namespace) -> bool:
    return args.command == "volume" or (args.command == "engagement" and args.action == "move")


def _packs(ctx: AdminContext) -> Any:
    return getattr(ctx.store, "packs")  # noqa: B009 - SqlServerStore's, through RecordingStore


async def pick_volume(ctx: AdminContext, wanted: str | None) -> str:
    """``wanted`` if configured, else the volume with the most free space."""
    folders: dict[str, str] = _packs(ctx).volumes
    if wanted is not None:
        if wanted not in folders:
            raise AdminError(f"no volume {wanted!r} (have: {', '.join(folders)})", code=2)
        return wanted
    space = await deferToThread(free_space, folders)
    return volumes.choose_volume({name: free for name, (free, _) in space.items()}, list(folders))


async def run_volumes(ctx: AdminContext, args: argparse.Namespace, warn_bytes: int) -> int:
    if args.command == "volume":
        return await _list(ctx, args.json, warn_bytes)
    packs = _packs(ctx)
    if args.volume not in packs.volumes:
        raise AdminError(f"no volume {args.volume!r} (have: {', '.join(packs.volumes)})", code=2)
    await ctx.engagement(args.name)
    report = await volumes.move_engagement(ctx.store, packs, args.name, args.volume)  # type: ignore[arg-type]
    if report.source == report.target:
        ctx.say(f"{report.engagement} is on volume {report.target} (other volumes' copies removed)")
        return 0
    ctx.say(
        f"moved {report.engagement} from volume {report.source} to {report.target}: {report.packs} packs, "
        f"{report.bytes_copied} bytes copied ({report.caught_up} uploaded during the move)"
    )
    return 0


async def _list(ctx: AdminContext, as_json: bool, warn_bytes: int) -> int:
    folders: dict[str, str] = _packs(ctx).volumes
    space = await deferToThread(free_space, folders)
    placed = await ctx.store.run_read(volumes.placements)  # type: ignore[attr-defined]
    rows: list[dict[str, object]] = []
    for name, path in folders.items():
        free, size = space.get(name, (None, None))
        rows.append({
            "name": name, "path": path, "free_bytes": free, "size_bytes": size,
            "low": None if free is None else free < warn_bytes,
            "engagements": sum(1 for p in placed if p[2] == name),
            "moving_in": sum(1 for p in placed if p[3] == name),
        })
    for name in sorted({p[2] for p in placed} - set(folders)):  # named by the database only
        rows.append({
            "name": name, "path": None, "free_bytes": None, "size_bytes": None, "low": None,
            "engagements": sum(1 for p in placed if p[2] == name), "moving_in": 0,
        })
    if as_json:
        ctx.out.write(json.dumps(rows, indent=1) + "\n")
        return 0
    for r in rows:
        if r["path"] is None:
            ctx.say(f"{r['name']}\tNOT CONFIGURED\t{r['engagements']} engagements")
            continue
        free_text = "unreadable" if r["free_bytes"] is None else f"{r['free_bytes']} bytes free of {r['size_bytes']}"
        low = " LOW" if r["low"] else ""
        ctx.say(f"{r['name']}\t{r['path']}\t{free_text}{low}\t{r['engagements']} engagements")
    return 0
