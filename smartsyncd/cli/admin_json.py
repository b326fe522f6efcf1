"""``--json`` on every ``smartsync-admin`` listing: the same facts, for scripts.

Each listing writes one JSON document (UTF-8, indented) and nothing else on standard output:
an array of objects for lists (``user list``, ``sessions list``, ``engagement list``,
``grants``, ``lock list``, ``copies list``, ``gc``), one object for single answers
(``engagement status``, ``fsck``, ``audit verify``, ``db upgrade``). Times are ISO 8601 in UTC.
Secrets never appear: no password or token hashes. Exit codes are the text form's (``fsck``
and ``audit verify`` exit 1 when they found damage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

# (command, action) pairs that take --json; None: the command has no action
LISTINGS: frozenset[tuple[str, str | None]] = frozenset({
    ("user", "list"), ("sessions", "list"), ("engagement", "list"), ("engagement", "status"),
    ("grants", None), ("fsck", None), ("lock", "list"), ("copies", "list"), ("audit", "verify"),
    ("gc", None), ("db", "upgrade"),
})
_SECRET_FIELDS = frozenset({"password_hash", "token_hash"})


def add_json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return parser


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def plain(value: Any) -> Any:
    """A record as JSON-ready data: dataclasses as objects (secrets left out), times in ISO."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value) if f.name not in _SECRET_FIELDS
        }
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _write(admin: Any, document: Any) -> None:
    admin.out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


async def run_json(admin: Any, args: argparse.Namespace) -> int:
    """Answer the listing ``args`` names as JSON; returns the exit code."""
    store = admin.store
    command, action = args.command, getattr(args, "action", None)
    if command == "user":
        users = sorted(await store.list_users(), key=lambda u: u.name)
        _write(admin, [plain(u) | {"has_password": u.password_hash is not None} for u in users])
    elif command == "sessions":
        _write(admin, plain(await store.list_sessions(args.user)))
    elif command == "engagement" and action == "status":
        status = await store.engagement_status((await admin.engagement(args.name)).id)
        _write(admin, plain(status) | {"finalized": status.finalized})
    elif command == "engagement":
        _write(admin, plain(sorted(await store.list_engagements(), key=lambda e: e.name)))
    elif command == "grants":
        if args.engagement is not None:
            await admin.engagement(args.engagement)
        rows = await store.list_grants(args.engagement)
        _write(admin, plain(sorted(rows, key=lambda g: (g.engagement, g.kind, g.display_name))))
    elif command == "fsck":
        problems = await store.fsck()
        _write(admin, {"ok": not problems, "problems": plain(problems)})
        return 1 if problems else 0
    elif command == "lock":
        _write(admin, plain(await store.list_locks((await admin.engagement(args.engagement)).id)))
    elif command == "copies":
        _write(admin, plain(await store.list_copies((await admin.engagement(args.engagement)).id)))
    elif command == "audit":
        if args.engagement is not None:
            await admin.engagement(args.engagement)
        reports = await store.verify_audit(args.engagement)
        ok = all(r.problem is None for r in reports)
        _write(admin, {"ok": ok, "chains": plain(reports)})
        return 0 if ok else 1
    elif command == "gc":
        return await _gc(admin, args)
    elif command == "db":
        return await _db(admin)
    else:
        raise AssertionError(f"no JSON form for {command} {action}")
    return 0


async def _gc(admin: Any, args: argparse.Namespace) -> int:
    store = admin.store
    names = [args.engagement] if args.engagement else [
        e.name for e in await store.list_engagements()
    ]
    reports = []
    for name in names:
        record = await admin.engagement(name)
        reports.append(plain(await store.gc(record.id, timedelta(hours=args.grace_hours))))
    _write(admin, reports)
    return 0


async def _db(admin: Any) -> int:
    from smartsyncd.service.server import describe_database
    from smartsyncd.storage.schema import LATEST_VERSION, current_version

    version = await admin.store.run_db(lambda meta: current_version(meta.conn, meta.dialect))
    _write(admin, {
        "schema_version": version, "latest_version": LATEST_VERSION,
        "database": describe_database(admin.config),
    })
    return 0
