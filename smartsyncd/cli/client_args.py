"""The ``smartsync`` command line: its options, subcommands and help (``build_parser``), and
the parsing of the arguments that name a server or a moment."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from smartsyncd import __version__
from smartsyncd.client.errors import UsageError
from smartsyncd.client.trust import SYSTEM_TRUST
from smartsyncd.client.userconfig import server_key
from smartsyncd.core.model import ROLES

EPILOG = """\
exit codes:
  0  success
  1  finished, but conflict copies are left to resolve (sync, status, conflicts);
     verify: this copy differs from the server's
  2  usage error (bad arguments, missing password, damaged settings, not a sync copy,
     or the copy is in use by another sync or watch)
  3  authentication failed or session ended (run 'smartsync login' again)
  4  network or trust problem (server unreachable after retries; unknown or changed
     certificate; verify: a signature that does not check, or another signing key)
  5  the server refused the request (the message says why)
  6  finished (the pull included), but some local changes could not sync: refused
     (engagement finalized, a reader's role), waiting for another's check-in, or skipped;
     --json lists each path and why under "skipped"
  130 interrupted (Ctrl-C) before the command finished; watch: a sync still
      running 10 s after Ctrl-C or SIGTERM was cancelled

Settings, session tokens and pinned certificate fingerprints are kept in
your settings folder ($XDG_CONFIG_HOME/smartsync or ~/.config/smartsync on Linux,
%APPDATA%\\smartsync on Windows, ~/Library/Application Support/smartsync on macOS),
readable by you only.
The password is read from --password-stdin, else $SMARTSYNC_PASSWORD, else prompted.
"""


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Added to the main parser (with defaults) and to every subcommand (without), so the
    # options work before or after the command name.
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--quiet", "-q", action="store_true", default=default(False),
                        help="print nothing on success")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the result as one JSON object")
    parser.add_argument("--ca-file", metavar="PEM", default=default(None),
                        help="trust the server's certificate by this CA file (host name checked)")
    parser.add_argument("--system-trust", dest="ca_file", action="store_const", const=SYSTEM_TRUST,
                        default=default(None),
                        help="trust the server's certificate by the system's trusted roots "
                             "(the firm's CA or a public CA; host name checked)")
    parser.add_argument("--trust-fingerprint", metavar="SHA256", default=default(None),
                        help="accept the server certificate with this SHA-256 fingerprint")
    parser.add_argument("--config-dir", metavar="DIR", default=default(None),
                        help="settings folder (default: the system's per-user settings "
                             "folder, e.g. ~/.config/smartsync, %%APPDATA%%\\smartsync)")
    parser.add_argument("--bwlimit", metavar="KBPS", type=_non_negative, default=default(None),
                        help="limit transfers to KBPS KiB/s (0: no limit; default: the "
                             "server's 'bwlimit' in the settings file, else none)")
    parser.add_argument("--attempts", metavar="N", type=_positive, default=default(8),
                        help="tries per request before a network error (default 8, with "
                             "backoff up to 30 s between tries)")
    parser.add_argument("--proxy", metavar="URL", default=default(None),
                        help="reach the server through this HTTP proxy (CONNECT), e.g. "
                             "http://proxy:3128; 'direct' for none (default: HTTPS_PROXY or the "
                             "system's proxy settings)")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _review_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The conflict review queue's commands (docs/workflow.md, "Conflict review")."""
    conflicts = command("conflicts", "list conflict copies here and your conflicts on the server")
    conflicts.add_argument("directory", metavar="DIR", nargs="?", default=".")
    conflicts.add_argument("--all", action="store_true",
                           help="every open conflict of the engagement (the reviewer role)")
    resolve = command("resolve", "resolve a conflict (reviewer): keep a version or a merge")
    resolve.add_argument("id", metavar="ID", type=_positive, help="the number 'conflicts' shows")
    resolve.add_argument("directory", metavar="DIR", nargs="?", default=".")
    pick = resolve.add_mutually_exclusive_group(required=True)
    pick.add_argument("--ours", action="store_true",
                      help="the edit kept as the conflict copy becomes the file")
    pick.add_argument("--theirs", action="store_true", help="the file stays as it is")
    pick.add_argument("--merged", metavar="FILE", help="this file (your merge) becomes the file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartsync",
        description="Sync engagement folders with a smartsyncd server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smartsync {__version__}")
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(sub, defaults=False)
        return sub

    login = command("login", "sign in to a server (pins its certificate on first contact)")
    login.add_argument("url", metavar="URL", help="https://HOST[:PORT]")
    login.add_argument("--user", "-u", help="user name (not with --sso)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
    # issue 19: single sign-on with the Kerberos ticket of the logged-on user
    login.add_argument("--sso", action="store_true",
                       help="single sign-on with your Kerberos ticket (Windows domain logon, kinit)")
    login.add_argument("--spn", metavar="HTTP@HOST",
                       help="Kerberos service of the server with --sso (default: HTTP@URL host)")
    # issue 16: opt-in, remembered per server; --no-keychain moves the token back to the file
    login.add_argument("--keychain", action=argparse.BooleanOptionalAction, default=None,
                       help="keep the session token in the OS keychain, not the settings file")

    logout = command("logout", "end the session and forget its token")
    logout.add_argument("url", metavar="URL")

    engagements = command("engagements", "list the engagements you may see")
    engagements.add_argument("url", metavar="URL")

    clone = command("clone", "make a new sync copy of an engagement")
    clone.add_argument("source", metavar="URL/ENGAGEMENT")
    clone.add_argument("directory", metavar="DIR")

    for name, text in [
        ("sync", "push local changes, then pull the server's"),
        ("status", "show what a sync would move (changes nothing)"),
        ("watch", "sync continuously until interrupted"),
    ]:
        sub = command(name, text)
        sub.add_argument("directory", metavar="DIR", nargs="?", default=".")
        if name == "watch":
            _watch_options(sub)

    _review_commands(command)

    _workflow_commands(command)
    _admin_commands(commands, command)
    _verify_command(command)
    return parser


def _watch_options(watch: argparse.ArgumentParser) -> None:
    """How long ``watch`` waits on the server, and between tries when it cannot reach it."""
    watch.add_argument("--long-poll", metavar="SECONDS", type=_seconds, default=30.0,
                       help="ask the server to hold each wait for changes this long (default "
                            "30; less where a proxy cuts idle connections sooner)")
    watch.add_argument("--retry-delay", metavar="SECONDS", type=_seconds, default=5.0,
                       help="wait this long before trying again when the server cannot be "
                            "reached (default 5)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def _workflow_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Check-out, locks, history, restore and export (docs/workflow.md)."""
    # PATH is a file or folder inside a sync copy
    checkout = command("checkout", "check out a file or folder: others' changes to it are "
                                   "refused until you check it in")
    checkout.add_argument("path", metavar="PATH")
    checkout.add_argument("--for", dest="duration", metavar="DURATION",
                          help="let the check-out expire after this long (8h, 30m, 2d)")
    checkin = command("checkin", "release your check-out of a file or folder")
    checkin.add_argument("path", metavar="PATH")
    locks = command("locks", "list the engagement's check-outs; 'locks break PATH --reason "
                             "...' ends another's (engagement admins)")
    locks.add_argument("directory", metavar="DIR", nargs="?", default=".",
                       help="the sync copy (default: here); 'break' to break a check-out")
    locks.add_argument("path", metavar="PATH", nargs="?",
                       help="with 'break': a file or folder in a copy, or URL/ENGAGEMENT/PATH")
    locks.add_argument("--reason", help="with 'break': why (kept in the audit trail)")
    history = command("history", "list the versions of a file (number, who, when, size)")
    history.add_argument("path", metavar="PATH")
    restore = command("restore", "make an earlier version of a file its newest version")
    restore.add_argument("path", metavar="PATH")
    restore.add_argument("--version", dest="number", metavar="N", type=_positive, required=True,
                         help="the version number shown by 'smartsync history'")
    export = command("export", "write the engagement as it stood at a moment into a new folder")
    export.add_argument("source", metavar="URL/ENGAGEMENT")
    export.add_argument("--at", required=True, metavar="TIME",
                        help="'2026-03-31 17:00' (local time) or ISO 8601 with a zone")
    export.add_argument("directory", metavar="DIR")


def _verify_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``verify``: the copy against the server's signed content root (issue 20)."""
    verify = command("verify", "prove this copy identical to the server's signed content "
                               "root, or list what differs (downloads no file)")
    verify.add_argument("directory", metavar="DIR", nargs="?", default=".")
    verify.add_argument("--seq", type=_non_negative, metavar="N",
                        help="compare with the server's files at change N (default: its head)")
    verify.add_argument("--key-fingerprint", metavar="FP",
                        help="the SHA-256 fingerprint of the server's signing key (from "
                        "'smartsync-admin root-key'); else the key this copy accepted first")


WHERE_HELP = "a sync copy's folder (default: here) or URL/ENGAGEMENT"


def _admin_commands(commands: Any, command: Any) -> None:
    """What an engagement's admins may do from their own machine (issue 17)."""
    copies = command("copies", "list the engagement's sync copies, or abandon one (admins)")
    actions = copies.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in [("list", "list each copy: user, host, last contact, unsynced work"),
                       ("abandon", "revoke a copy for good (a lost laptop)")]:
        sub = actions.add_parser(name, help=text, description=text)
        _global_options(sub, defaults=False)
        if name == "abandon":
            sub.add_argument("copy", metavar="COPY", help="the copy id shown by 'copies list'")
            sub.add_argument("--wipe", action="store_true",
                             help="also order the copy wiped at its next contact (a lost laptop)")
        sub.add_argument("where", metavar="WHERE", nargs="?", default=".", help=WHERE_HELP)
    finalize = command("finalize", "sign the engagement off: read-only for everyone (admins)")
    finalize.add_argument("--force", action="store_true",
                          help="even while copies hold unsynced work (they are named)")
    reopen = command("reopen", "lift the sign-off (admins)")
    grants = command("grants", "list who has which role on the engagement (admins)")
    grant = command("grant", "give a user or group a role on the engagement (admins)")
    grant.add_argument("--role", required=True, choices=ROLES)
    revoke = command("revoke", "take a user's or group's role on the engagement away (admins)")
    for sub in (finalize, reopen):
        sub.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    for sub in (grant, revoke):
        who = sub.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="a user name, local:NAME, ad:SID or a SID")
        who.add_argument("--group", help="a directory group (name or id)")
    rules = command("ignore-rules", "show, set or clear the engagement-wide ignore rules (admins set)")
    which = rules.add_mutually_exclusive_group()
    which.add_argument("--set", metavar="FILE", help="publish the rules of FILE (gitignore syntax)")
    which.add_argument("--clear", action="store_true", help="remove the engagement's rules")
    for sub in (finalize, reopen, grants, grant, revoke, rules):
        sub.add_argument("where", metavar="WHERE", nargs="?", default=".", help=WHERE_HELP)


def split_source(source: str) -> tuple[str, str]:
    """``https://host:port/ENGAGEMENT`` -> (server URL, engagement name)."""
    parts = urlsplit(source)
    name = unquote(parts.path.strip("/"))
    if not name or "/" in name:
        raise UsageError(f"expected URL/ENGAGEMENT such as https://files.example/acme-2026, "
                         f"not {source!r}")
    return server_key(f"{parts.scheme}://{parts.netloc}"), name


def parse_at(text: str) -> datetime:
    """``--at``: ISO 8601 with a zone, or a local time without one."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: use '2026-03-31 17:00' or ISO 8601") from None
    return when if when.tzinfo is not None else when.astimezone()  # local time
