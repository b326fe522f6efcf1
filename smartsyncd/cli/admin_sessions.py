"""``smartsync-admin user disable|enable|remove`` and ``sessions list|revoke``.

Ending a session deletes it from the database, so the next request with its token gets 401 on
every daemon at once. Disabling or removing a local user ends that user's sessions in the same
transaction; ``user passwd`` does too (the store's ``set_password``).
"""

from __future__ import annotations

import argparse
from typing import Any

from smartsyncd.core.errors import NotFound


async def user_state(admin: Any, action: str, name: str) -> int:
    """Disable, enable or remove the local user ``name``."""
    from smartsyncd.cli.context import AdminError

    try:
        if action == "remove":
            await admin.store.remove_user(name)
            admin.say(f"removed user {name}; their open sessions are ended")
        else:
            await admin.store.set_user_disabled(name, action == "disable")
            if action == "disable":
                admin.say(f"disabled user {name}; their open sessions are ended")
            else:
                admin.say(f"enabled user {name}")
    except NotFound:
        raise AdminError(f"unknown user {name!r}") from None
    return 0


async def sessions_action(admin: Any, args: argparse.Namespace) -> int:
    """List open sessions, or end one (by id) or all of a user's."""
    from smartsyncd.cli.context import AdminError

    if args.action == "list":
        found = await admin.store.list_sessions(args.user)
        for s in found:
            admin.say(
                f"{s.id}\t{s.user}\t{s.backend}\tsince {s.created_at:%Y-%m-%d %H:%M}"
                f"\tuntil {s.expires_at:%Y-%m-%d %H:%M}"
            )
        if not found:
            admin.say("(no sessions)")
        return 0
    if args.id is not None:
        if await admin.store.end_sessions(session_id=args.id) == 0:
            raise AdminError(f"no session {args.id!r}")
        admin.say(f"ended session {args.id}")
        return 0
    count = await admin.store.end_sessions(user=args.user)
    admin.say(f"ended {count} session(s) of {args.user}")
    return 0
