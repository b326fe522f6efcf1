"""The ``smartsync`` command: sign in to a server, clone an engagement, sync, status, watch.

This module only parses arguments, resolves trust and credentials from the user's settings
(:mod:`smartsyncd.client.userconfig`), drives :class:`smartsyncd.client.ServerAPI` and the sync
engine, and turns results and errors into output and exit codes. Errors are one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast
from urllib.parse import unquote, urlsplit

from rich.console import Console
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IPolicyForHTTPS

from smartsyncd import __version__
from smartsyncd.client.errors import (
    AuthError,
    ClientError,
    ConflictsLeft,
    ServerRefused,
    TrustError,
    UsageError,
)
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.progress import RichProgress
from smartsyncd.client.trust import (
    CAPolicy,
    PinnedPolicy,
    TrustPolicy,
    fetch_fingerprint,
    normalize_fingerprint,
)
from smartsyncd.client.userconfig import UserConfig, server_key

PASSWORD_ENV = "SMARTSYNC_PASSWORD"
EXIT_INTERRUPTED = 130

EPILOG = """\
exit codes:
  0  success
  1  finished, but conflict copies are left to resolve (sync, status, conflicts)
  2  usage error (bad arguments, missing password, damaged settings, not a sync copy,
     or the copy is in use by another sync or watch)
  3  authentication failed or session ended (run 'smartsync login' again)
  4  network or trust problem (server unreachable after retries; unknown or changed
     certificate)
  5  the server refused the request (the message says why)
  130 interrupted (Ctrl-C) before the command finished

Settings, session tokens and pinned certificate fingerprints are kept in
$XDG_CONFIG_HOME/smartsync (default ~/.config/smartsync), readable by you only.
The password is read from --password-stdin, else $SMARTSYNC_PASSWORD, else prompted.
"""


class Output:
    """Where results go: human text, one JSON object, or nothing (``--quiet``)."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
        self.json = bool(args.json)
        self.quiet = bool(args.quiet)
        self.stdout = stdout
        self.stderr = stderr

    def result(self, text: str, data: dict[str, Any]) -> None:
        if self.json:
            self.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        elif not self.quiet and text:
            self.stdout.write(text.rstrip("\n") + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """Information for a person (not part of the result): stderr, unless quiet/json."""
        if not (self.quiet or self.json):
            self.stderr.write(text.rstrip("\n") + "\n")
            self.stderr.flush()

    def error(self, exc: BaseException, code: int) -> None:
        message = _one_line(str(exc)) or type(exc).__name__
        self.stderr.write(f"smartsync: error: {message}\n")
        self.stderr.flush()
        if self.json:
            kind = type(exc).__name__
            self.stdout.write(
                json.dumps({"error": kind, "message": message, "exit_code": code}) + "\n"
            )
            self.stdout.flush()


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- argument parsing ------------------------------------------------------------------------


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
    parser.add_argument("--trust-fingerprint", metavar="SHA256", default=default(None),
                        help="accept the server certificate with this SHA-256 fingerprint")
    parser.add_argument("--config-dir", metavar="DIR", default=default(None),
                        help="settings folder (default $XDG_CONFIG_HOME/smartsync)")
    parser.add_argument("--bwlimit", metavar="KBPS", type=_non_negative, default=default(None),
                        help="limit transfers to KBPS KiB/s (0: no limit; default: the "
                             "server's 'bwlimit' in the settings file, else none)")
    parser.add_argument("--attempts", metavar="N", type=_positive, default=default(8),
                        help="tries per request before a network error (default 8, with "
                             "backoff up to 30 s between tries)")


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
    login.add_argument("--user", "-u", required=True, help="user name")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")

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
        ("conflicts", "list conflict copies waiting to be resolved"),
    ]:
        sub = command(name, text)
        sub.add_argument("directory", metavar="DIR", nargs="?", default=".")

    # engagement workflow (docs/workflow.md): PATH is a file or folder inside a sync copy
    checkout = command("checkout", "check out a file or folder: others' changes to it are "
                                   "refused until you check it in")
    checkout.add_argument("path", metavar="PATH")
    checkout.add_argument("--for", dest="duration", metavar="DURATION",
                          help="let the check-out expire after this long (8h, 30m, 2d)")
    checkin = command("checkin", "release your check-out of a file or folder")
    checkin.add_argument("path", metavar="PATH")
    locks = command("locks", "list the engagement's check-outs")
    locks.add_argument("directory", metavar="DIR", nargs="?", default=".")
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
    return parser


# -- trust and credentials -----------------------------------------------------------------


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


class Session:
    """Everything one command needs: settings, output, and a way to build a ServerAPI."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Output) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out
        self.config = UserConfig.load(args.config_dir)
        self.progress = RichProgress(Console(stderr=True), quiet=out.quiet or out.json)
        self._apis: list[ServerAPI] = []

    def explicit_fingerprint(self) -> str | None:
        value = self.args.trust_fingerprint
        return normalize_fingerprint(value) if value else None

    def policy(self, url: str) -> TrustPolicy:
        """The trust policy for ``url`` from the options or the saved settings."""
        entry = self.config.server(url)
        if self.args.ca_file:
            return CAPolicy(self.args.ca_file)
        explicit = self.explicit_fingerprint()
        if explicit:
            return PinnedPolicy(explicit)
        if entry.ca_file:
            return CAPolicy(entry.ca_file)
        if entry.fingerprint:
            return PinnedPolicy(entry.fingerprint)
        raise TrustError(
            f"{entry.url} is not trusted yet: run 'smartsync login {entry.url} --user NAME' "
            f"first (or pass --ca-file / --trust-fingerprint)"
        )

    def api(self, url: str, policy: TrustPolicy, *, with_token: bool = True) -> ServerAPI:
        entry = self.config.server(url)
        api = ServerAPI(
            entry.url,
            reactor=self.reactor,
            policy=cast(IPolicyForHTTPS, policy),
            token=entry.token if with_token else None,
            relogin=self._relogin(entry.url) if with_token else None,
            max_attempts=self.args.attempts,
            bwlimit=self._bwlimit(entry.bwlimit),
        )
        self._apis.append(api)
        return api

    def _bwlimit(self, configured: int | None) -> int | None:
        """Bytes per second from --bwlimit, else the settings file; None for no limit."""
        kbps = self.args.bwlimit if self.args.bwlimit is not None else configured
        return kbps * 1024 if kbps else None

    async def signed_in_api(self, url: str) -> ServerAPI:
        """A ServerAPI for a server the user has signed in to (or can sign in to now)."""
        api = self.api(url, self.policy(url))
        if api.token is None:
            if api.relogin is None:
                raise AuthError(
                    f"not signed in to {api.base_url}: run 'smartsync login {api.base_url} "
                    f"--user NAME'"
                )
            api.token = await api.relogin()
        return api

    def _relogin(self, url: str) -> Callable[[], Awaitable[str]] | None:
        """Sign in again when a session ends, if a password can be had without a script's
        help: $SMARTSYNC_PASSWORD, or a prompt on a terminal."""
        entry = self.config.server(url)
        user = entry.user
        if user is None or not (os.environ.get(PASSWORD_ENV) or _interactive()):
            return None

        async def relogin() -> str:
            assert user is not None
            password = os.environ.get(PASSWORD_ENV) or ""
            if not password:
                password = await deferToThread(getpass.getpass, f"Password for {user} at {url}: ")
            fresh = ServerAPI(
                url,
                reactor=self.reactor,
                policy=cast(IPolicyForHTTPS, self.policy(url)),
                max_attempts=self.args.attempts,
            )
            self._apis.append(fresh)
            token = await fresh.login(user, password)
            self.config.set_token(url, user, token)
            self.config.save()
            return token

        return relogin

    async def close(self) -> None:
        for api in self._apis:
            await api.close()


def read_password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif _interactive():
        password = getpass.getpass(f"Password for {args.user}: ")
    else:
        raise UsageError(
            f"no password: pass --password-stdin or set {PASSWORD_ENV} (no terminal to ask on)"
        )
    if not password:
        raise UsageError("the password is empty")
    return password


# -- commands --------------------------------------------------------------------------------


async def cmd_login(session: Session, stdin: TextIO) -> int:
    args = session.args
    url = server_key(args.url)
    entry = session.config.server(url)
    password = read_password(args, stdin)
    pin: str | None = None
    if args.ca_file:
        policy: TrustPolicy = CAPolicy(args.ca_file)
    elif args.trust_fingerprint:
        pin = normalize_fingerprint(args.trust_fingerprint)
        policy = PinnedPolicy(pin)
    elif entry.ca_file:
        policy = CAPolicy(entry.ca_file)
    elif entry.fingerprint:
        policy = PinnedPolicy(entry.fingerprint)  # a changed certificate fails here
    else:
        pin = await _first_contact(session, url)
        policy = PinnedPolicy(pin)
    api = session.api(url, policy, with_token=False)
    await api.info()
    token = await api.login(args.user, password)
    if pin is not None:
        session.config.pin(url, pin)
        if args.ca_file is None:
            session.config.set_ca_file(url, None)
    if args.ca_file:
        session.config.set_ca_file(url, str(Path(args.ca_file).resolve()))
    session.config.set_token(url, args.user, token)
    session.config.save()
    fingerprint = session.config.server(url).fingerprint
    session.out.result(
        f"Signed in to {url} as {args.user}.",
        {"server": url, "user": args.user, "fingerprint": fingerprint,
         "ca_file": session.config.server(url).ca_file},
    )
    return 0


async def _first_contact(session: Session, url: str) -> str:
    """Trust on first use: show the fingerprint; pin it if a person at a terminal agrees."""
    fingerprint = await fetch_fingerprint(session.reactor, url)
    if not _interactive():
        raise TrustError(
            f"{url} is not trusted yet; its certificate's SHA-256 fingerprint is {fingerprint}. "
            f"Check it with the server's administrator, then run again with "
            f"--trust-fingerprint {fingerprint} (or use --ca-file)",
            presented=fingerprint,
        )
    sys.stderr.write(
        f"The server {url} presents a certificate with SHA-256 fingerprint\n"
        f"  {fingerprint}\n"
        f"Compare it with the one your administrator gave you.\n"
        f"Trust this server and remember it? [y/N] "
    )
    sys.stderr.flush()  # the prompt goes to stderr so --json output on stdout stays clean
    answer = await deferToThread(sys.stdin.readline)
    if answer.strip().lower() not in ("y", "yes"):
        raise TrustError(f"certificate of {url} not accepted", presented=fingerprint)
    return fingerprint


async def cmd_logout(session: Session) -> int:
    url = server_key(session.args.url)
    entry = session.config.server(url)
    if entry.token is None:
        session.out.result(f"Not signed in to {url}.", {"server": url, "signed_out": True})
        return 0
    api = session.api(url, session.policy(url))
    api.relogin = None
    failure: ClientError | None = None
    try:
        await api.logout()
    except AuthError:
        pass  # the session had already ended
    except ClientError as exc:
        failure = exc
    # Forget the token either way: a local sign-out must not depend on the network.
    session.config.forget_token(url)
    session.config.save()
    if failure is not None:
        raise failure
    session.out.result(f"Signed out of {url}.", {"server": url, "signed_out": True})
    return 0


async def cmd_engagements(session: Session) -> int:
    api = await session.signed_in_api(session.args.url)
    items = await api.list_engagements()
    lines = [
        f"{item.get('name')}\t{item.get('role')}\thead {item.get('head')}\t{item.get('title', '')}"
        for item in items
    ]
    session.out.result("\n".join(lines) or "No engagements.", {"engagements": items})
    return 0


def split_source(source: str) -> tuple[str, str]:
    """``https://host:port/ENGAGEMENT`` -> (server URL, engagement name)."""
    parts = urlsplit(source)
    name = unquote(parts.path.strip("/"))
    if not name or "/" in name:
        raise UsageError(f"expected URL/ENGAGEMENT such as https://files.example/acme-2026, "
                         f"not {source!r}")
    return server_key(f"{parts.scheme}://{parts.netloc}"), name


def _engine() -> Any:
    try:
        from smartsyncd.client.engine import SyncCopy
    except ImportError as exc:  # pragma: no cover - only while the engine is being written
        raise ClientError(f"the sync engine is not available: {exc}") from exc
    return SyncCopy


async def cmd_clone(session: Session) -> int:
    url, engagement = split_source(session.args.source)
    directory = Path(session.args.directory)
    api = await session.signed_in_api(url)
    copy = await _engine().clone(api, engagement, directory, progress=session.progress)
    session.progress.finish()
    data = {"server": url, "engagement": engagement, "directory": str(directory.resolve())}
    report = getattr(copy, "last_report", None)
    if report is not None and hasattr(report, "to_json"):
        data["report"] = report.to_json()
    session.out.result(f"Cloned {engagement} from {url} into {directory}.", data)
    return 0


async def _open_copy(session: Session, *, exclusive: bool = True) -> tuple[Any, ServerAPI]:
    """Open the copy: ``exclusive`` (sync, watch, restore) takes the copy lock, and a copy
    another process syncs is refused (``CopyInUse``, exit 2); read-only commands pass False."""
    copy = _engine().open(Path(session.args.directory), exclusive=exclusive)
    api = await session.signed_in_api(copy.server_url)
    return copy, api


def _report_exit(session: Session, verb: str, report: Any) -> int:
    data = report.to_json() if hasattr(report, "to_json") else {"report": str(report)}
    session.out.result(describe_report(verb, data), data)
    refused = getattr(report, "refused", None)
    if refused:
        session.out.note(f"not pushed: {refused}")
        return ServerRefused.exit_code
    finalized = getattr(report, "finalized", None)
    if isinstance(finalized, dict):
        session.out.note(f"the engagement is finalized by {finalized.get('by')}: "
                         f"{finalized.get('reason')} (read-only)")
    deadline = getattr(report, "deadline", None)
    if isinstance(deadline, dict) and deadline.get("warning"):
        session.out.note(f"warning: {deadline['warning']}")
    left = int(getattr(report, "conflicts_left", 0) or 0)
    if left:
        session.out.note(f"{left} conflict cop{'y' if left == 1 else 'ies'} left: "
                         f"see 'smartsync conflicts'")
        return ConflictsLeft.exit_code
    return 0


def describe_report(verb: str, data: dict[str, Any]) -> str:
    """A short human summary of a report's JSON (counts that are not zero, then lists)."""
    parts: list[str] = []
    details: list[str] = []
    for key, value in data.items():
        label = key.replace("_", " ")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value:
            parts.append(f"{label} {value}")
        elif isinstance(value, list) and value:
            parts.append(f"{label} {len(value)}")
            details.extend(f"  {label}: {_item(v)}" for v in value[:50])
    head = f"{verb}: " + (", ".join(parts) if parts else "nothing to do")
    return "\n".join([head, *details])


def _item(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return " - ".join(str(v) for v in value)
    return str(value)


async def cmd_sync(session: Session) -> int:
    copy, api = await _open_copy(session)
    report = await copy.sync(api, progress=session.progress)
    session.progress.finish()
    return _report_exit(session, "sync", report)


async def cmd_status(session: Session) -> int:
    copy, api = await _open_copy(session, exclusive=False)  # reads only: works beside a sync
    report = await copy.status(api)
    return _report_exit(session, "status", report)


async def cmd_watch(session: Session) -> int:
    copy, api = await _open_copy(session)
    stop: Deferred[None] = Deferred()


    def on_report(report: Any) -> None:
        data = report.to_json() if hasattr(report, "to_json") else {"report": str(report)}
        # --json: one object per line (one per sync round).
        session.out.result(describe_report("sync", data), data)

    watching = Deferred.fromCoroutine(
        copy.watch(api, stop, on_report, progress=session.progress)
    )

    def shutdown() -> Deferred[None]:
        # Ctrl-C / SIGTERM: ask the engine to finish the current step and stop.
        if not stop.called:
            stop.callback(None)
        return watching.addErrback(lambda _: None)

    session.reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    session.out.note(f"Watching {Path(session.args.directory).resolve()} (Ctrl-C to stop).")
    await watching
    return 0


async def cmd_conflicts(session: Session) -> int:
    copy = _engine().open(Path(session.args.directory), exclusive=False)
    names = list(copy.conflicts())
    text = "\n".join(names) if names else "No conflict copies."
    session.out.result(text, {"conflicts": names})
    return ConflictsLeft.exit_code if names else 0


# -- engagement workflow ----------------------------------------------------------------------


def copy_path(path_arg: str) -> tuple[Path, str]:
    """The sync copy holding ``path_arg`` and the path inside it (``/``-separated)."""
    target = Path(path_arg).absolute()
    for root in [target, *target.parents]:
        if (root / ".smartsync" / "copy.json").is_file():
            if root == target:
                raise UsageError(f"{path_arg} is the copy itself; name a file or folder in it")
            return root, target.relative_to(root).as_posix()
    raise UsageError(f"{path_arg} is not inside a sync copy (no .smartsync folder above it)")


async def _copy_api(
    session: Session, path_arg: str, *, exclusive: bool = False
) -> tuple[Any, ServerAPI, str]:
    root, rel = copy_path(path_arg)
    copy = _engine().open(root, exclusive=exclusive)
    api = await session.signed_in_api(copy.server_url)
    api.copy_id = copy.copy_id
    return copy, api, rel


def _lock_line(lock: dict[str, Any]) -> str:
    until = f" until {lock['expires_at']}" if lock.get("expires_at") else ""
    return f"{lock.get('path')}\t{lock.get('holder')}\tsince {lock.get('since')}{until}"


async def cmd_checkout(session: Session) -> int:
    from smartsyncd.core.errors import SyncError
    from smartsyncd.core.locks import parse_duration

    seconds = None
    if session.args.duration:
        try:
            seconds = max(1, int(parse_duration(session.args.duration).total_seconds()))
        except SyncError as exc:
            raise UsageError(exc.message) from None
    copy, api, rel = await _copy_api(session, session.args.path)
    lock = await api.checkout(copy.engagement, rel, seconds)
    session.out.result(f"Checked out {lock.get('path')}"
                       + (f" until {lock['expires_at']}." if lock.get("expires_at") else "."), lock)
    return 0


async def cmd_checkin(session: Session) -> int:
    copy, api, rel = await _copy_api(session, session.args.path)
    lock = await api.checkin(copy.engagement, rel)
    session.out.result(f"Checked in {lock.get('path')}.", lock)
    return 0


async def cmd_locks(session: Session) -> int:
    copy, api = await _open_copy(session, exclusive=False)
    items = await api.locks(copy.engagement)
    session.out.result("\n".join(_lock_line(lk) for lk in items) or "No check-outs.", {"locks": items})
    return 0


async def cmd_history(session: Session) -> int:
    copy, api, rel = await _copy_api(session, session.args.path)
    versions = await api.history(copy.engagement, rel)
    lines = []
    for v in versions:
        number = v.get("version")
        label = f"{number}" if number is not None else "-"
        what = f"{v.get('size')} bytes" if v.get("kind") == "put" else "deleted"
        if v.get("kind") == "put" and not v.get("available", True):
            what += " (past retention)"
        lines.append(f"{label}\t{v.get('user')}\t{v.get('time')}\t{what}")
    session.out.result("\n".join(lines) or f"No versions of {rel}.", {"path": rel, "versions": versions})
    return 0


async def cmd_restore(session: Session) -> int:
    import uuid

    copy, api, rel = await _copy_api(session, session.args.path, exclusive=True)  # it syncs
    answer = await api.restore(copy.engagement, rel, session.args.number, str(uuid.uuid4()))
    result = (answer.get("results") or [{}])[0]
    report = await copy.sync(api, progress=session.progress)
    session.progress.finish()
    data = {"path": rel, "version": session.args.number, "status": result.get("status"),
            "seq": result.get("seq"), "sync": report.to_json()}
    session.out.result(f"Restored version {session.args.number} of {rel} "
                       f"({result.get('status')}, sequence {result.get('seq')}).", data)
    return 0


def parse_at(text: str) -> Any:
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: use '2026-03-31 17:00' or ISO 8601") from None
    return when if when.tzinfo is not None else when.astimezone()  # local time


async def cmd_export(session: Session) -> int:
    from smartsyncd.client.export import export_engagement

    url, engagement = split_source(session.args.source)
    at = parse_at(session.args.at)
    api = await session.signed_in_api(url)
    report = await export_engagement(api, engagement, at, Path(session.args.directory))
    data = {"server": url, "engagement": engagement, "at": at.isoformat(), **report.to_json()}
    text = f"Exported {engagement} as of {at.isoformat()} (sequence {report.seq}): {report.files} files."
    if report.missing:
        text += "\n" + "\n".join(f"  past retention, not written: {p}" for p in report.missing)
    session.out.result(text, data)
    return 1 if report.missing else 0


COMMANDS: dict[str, Callable[[Session], Awaitable[int]]] = {
    "logout": cmd_logout,
    "engagements": cmd_engagements,
    "clone": cmd_clone,
    "sync": cmd_sync,
    "status": cmd_status,
    "watch": cmd_watch,
    "conflicts": cmd_conflicts,
    "checkout": cmd_checkout,
    "checkin": cmd_checkin,
    "locks": cmd_locks,
    "history": cmd_history,
    "restore": cmd_restore,
    "export": cmd_export,
}


# -- entry point -----------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return exc.exit_code
    if isinstance(exc, OSError):
        return 1
    return 1


async def run(
    reactor: Any,
    argv: Sequence[str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; returns the exit code (never raises except on cancel)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = build_parser().parse_args(list(argv))
    out = Output(args, stdout, stderr)
    session: Session | None = None
    try:
        session = Session(reactor, args, out)
        if args.command == "login":
            return await cmd_login(session, stdin)
        return await COMMANDS[args.command](session)
    except CancelledError:
        raise
    except ClientError as exc:
        code = exc.exit_code
        out.error(exc, code)
        return code
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        out.error(Exception(f"{exc.strerror or exc}{where}"), 1)
        return 1
    except Exception as exc:  # a bug: one line, and a hint how to see more
        if os.environ.get("SMARTSYNC_DEBUG"):
            import traceback

            traceback.print_exc(file=stderr)
        out.error(Exception(f"unexpected {type(exc).__name__}: {exc} "
                            f"(set SMARTSYNC_DEBUG=1 for details)"), 1)
        return 1
    finally:
        if session is not None:
            session.progress.finish()
            await session.close()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(arguments)  # usage errors exit 2 before the reactor starts

    async def _main(reactor: Any) -> None:
        command = Deferred.fromCoroutine(run(reactor, arguments))
        interrupted = False

        def on_shutdown() -> Deferred[Any] | None:
            nonlocal interrupted
            if command.called:
                return None
            interrupted = True
            if arguments and _command_name(arguments) == "watch":
                return None  # watch stops itself cleanly (see cmd_watch)
            command.cancel()
            return command.addErrback(lambda _: None)

        reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
        try:
            code = await command
        except CancelledError:
            code = EXIT_INTERRUPTED
        if interrupted and code == 0 and _command_name(arguments) != "watch":
            code = EXIT_INTERRUPTED
        raise SystemExit(code)

    react(_main)


def _command_name(arguments: Sequence[str]) -> str | None:
    for arg in arguments:
        if arg in COMMANDS or arg == "login":
            return arg
    return None
