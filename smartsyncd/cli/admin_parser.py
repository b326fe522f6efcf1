"""``smartsync-admin``'s command line: the argument parser, one builder per command group.

``cli/admin.py`` runs what it parses; the backup commands add their own parsers
(``cli/admin_backup.py``).
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

import smartsyncd
from smartsyncd.cli.admin_json import add_json_flag as _json
from smartsyncd.core.model import ROLES

PROG = "smartsync-admin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage smartsyncd's users, engagements and grants; check the store.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {smartsyncd.__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's config file (ini; default /etc/smartsyncd/smartsync.ini when it "
        "exists and no --data-dir is given)",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help="the daemon's data folder (default ./data)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_group in (
        _add_user_parsers,
        _add_session_parsers,
        _add_engagement_parsers,
        _add_grant_parsers,
        _add_fsck_parser,
        _add_checkout_parsers,
        _add_audit_parsers,
        _add_gc_parser,
        _add_db_parsers,
    ):
        add_group(commands)
    from smartsyncd.cli.admin_backup import add_parsers

    add_parsers(commands)
    from smartsyncd.cli import admin_lifecycle

    admin_lifecycle.add_parsers(commands)
    from smartsyncd.cli import admin_branch

    admin_branch.add_parsers(commands)
    return parser


# what ``add_subparsers`` returns (argparse names its class privately)
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _actions(commands: Commands, name: str, text: str) -> Commands:
    """A command with its own ACTION sub-commands (``user add``, ``db upgrade``...)."""
    return commands.add_parser(name, help=text).add_subparsers(
        dest="action", metavar="ACTION", required=True
    )


def _add_user_parsers(commands: Commands) -> None:
    user = _actions(commands, "user", "local user accounts")
    add = user.add_parser("add", help="add a local user (asks for a password)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    passwd = user.add_parser("passwd", help="set a local user's password")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    _json(user.add_parser("list", help="list local users"))
    for verb, text in (
        ("disable", "stop a local or directory user signing in; ends their sessions"),
        ("enable", "let a disabled user sign in again"),
        ("remove", "delete a local user, or refuse a directory user and drop their grants"),
    ):
        user.add_parser(verb, help=text).add_argument("name")


def _add_session_parsers(commands: Commands) -> None:
    sessions = _actions(commands, "sessions", "open sign-in sessions")
    _json(sessions.add_parser("list", help="list open sessions")).add_argument(
        "--user", help="only this user's sessions"
    )
    end = sessions.add_parser("revoke", help="end a session (by id) or all of a user's")
    end_which = end.add_mutually_exclusive_group(required=True)
    end_which.add_argument("id", nargs="?", help="the session id (from: sessions list)")
    end_which.add_argument("--user", help="end every session of this user")


def _add_engagement_parsers(commands: Commands) -> None:
    engagement = _actions(commands, "engagement", "engagements")
    create = engagement.add_parser("create", aliases=["add"], help="create an engagement")
    create.add_argument("name", help="1-64 characters of A-Z a-z 0-9 . _ - (not starting with .)")
    create.add_argument("--title", help="a readable title (default: the name)")
    create.add_argument(
        "--volume", metavar="V", help="the storage volume for its files (default: the one with most free space)"
    )
    _json(engagement.add_parser("list", help="list engagements"))
    finalize = engagement.add_parser(
        "finalize", help="sign off: make the engagement read-only for everyone (audited)"
    )
    finalize.add_argument("name")
    finalize.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    finalize.add_argument(
        "--force", action="store_true", help="finalize even while copies hold unsynced work"
    )
    reopen = engagement.add_parser("reopen", help="lift the sign-off freeze (audited)")
    reopen.add_argument("name")
    reopen.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    retention = engagement.add_parser(
        "retention", help="how long replaced versions are kept (gc collects older ones)"
    )
    retention.add_argument("name")
    keep = retention.add_mutually_exclusive_group(required=True)
    keep.add_argument("--days", type=int, metavar="N", help="keep replaced versions N days")
    keep.add_argument("--keep-all", action="store_true", help="keep every version (default)")
    _json(engagement.add_parser("status", help="sign-off state and retention")).add_argument("name")
    from smartsyncd.cli.admin_lifecycle import add_engagement_actions

    add_engagement_actions(engagement)
    from smartsyncd.cli.admin_volumes import add_parsers as add_volume_parsers

    add_volume_parsers(commands, engagement)
    from smartsyncd.cli.admin_ignore import add_parsers as add_ignore_parsers

    add_ignore_parsers(engagement)


def _add_grant_parsers(commands: Commands) -> None:
    grant = commands.add_parser("grant", help="give a user or group a role on an engagement")
    grant.add_argument("engagement")
    who = grant.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="U")
    who.add_argument("--group", metavar="G", help="a local group name, or a directory group")
    grant.add_argument("--role", required=True, choices=ROLES)

    revoke = commands.add_parser("revoke", help="take a user's or group's role away")
    revoke.add_argument("engagement")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="U")
    who.add_argument("--group", metavar="G")

    grants = _json(commands.add_parser("grants", help="list grants (of one engagement, or all)"))
    grants.add_argument("engagement", nargs="?")


def _add_fsck_parser(commands: Commands) -> None:
    _json(commands.add_parser("fsck", help="check that every manifest's chunks exist and hash right"))


def _add_gc_parser(commands: Commands) -> None:
    gc = _json(commands.add_parser(
        "gc", help="delete chunks no retained version or conflict copy needs"
    ))
    gc.add_argument("engagement", nargs="?", help="one engagement (default: all)")
    gc.add_argument(
        "--grace-hours", type=float, default=1.0, metavar="H",
        help="keep packs younger than this (uploads whose commit is still coming; default 1)",
    )


def _add_checkout_parsers(commands: Commands) -> None:
    """``lock`` (check-outs) and ``copies`` (sync copies)."""
    lock = _actions(commands, "lock", "check-outs")
    _json(lock.add_parser("list", help="list active check-outs")).add_argument("engagement")
    brk = lock.add_parser("break", help="release another user's check-out (audited)")
    brk.add_argument("engagement")
    brk.add_argument("path")
    brk.add_argument("--reason", required=True)

    copies = _actions(commands, "copies", "sync copies known to the server")
    _json(copies.add_parser(
        "list", help="every copy with its last contact and unsynced count"
    )).add_argument("engagement")
    abandon = copies.add_parser(
        "abandon", help="revoke a copy (a lost laptop): its session ends, it never commits again"
    )
    abandon.add_argument("engagement")
    abandon.add_argument("copy")
    abandon.add_argument(
        "--wipe", action="store_true",
        help="also order the copy wiped: at its next contact it deletes its files and settings,"
        " uploading nothing, and reports that (audited)",
    )


def _add_audit_parsers(commands: Commands) -> None:
    audit = _actions(commands, "audit", "the tamper-evident audit trail")
    _json(audit.add_parser(
        "verify", help="check the hash chains (one engagement, or all and the global chain)"
    )).add_argument("engagement", nargs="?")
    export = audit.add_parser("export", help="who did what when, for quality reviewers")
    export.add_argument("engagement", nargs="?")
    export.add_argument(
        "--global", dest="global_chain", action="store_true",
        help="instead of an engagement: sign-ins and other events of no engagement",
    )
    export.add_argument("--format", choices=["csv", "json"], default="csv")


def _add_db_parsers(commands: Commands) -> None:
    db = _actions(commands, "db", "the metadata database")
    _json(db.add_parser(
        "upgrade",
        help="create the schema or apply pending migrations (safe while daemons start)",
    ))
    db.add_parser(
        "new-generation",
        help="after restoring or rolling back the store by hand: copies reconcile (docs/operations.md)",
    )
