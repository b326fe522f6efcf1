"""The ``smartsync`` command: sign in to a server, clone an engagement, sync, status, watch.

This module only parses arguments, resolves trust and credentials from the user's settings
(:mod:`smartsyncd.client.userconfig`), drives :class:`smartsyncd.client.ServerAPI` and the sync
engine, and turns results and errors into output and exit codes. Errors are one line on stderr,
never a traceback.
"""

from __future__ import annotations

# isort: off
from smartsyncd.cli import startup  # first: no collector passes, and the server's TCP
# handshake under way, while the rest imports (issue 15)
# isort: on

import argparse
import importlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

from smartsyncd.cli.client_args import build_parser, split_source
from smartsyncd.cli.client_session import (
    Output,
    Session,
    interactive,
    open_copy,
    read_password,
    stamp,
)
from smartsyncd.client import preconnect
from smartsyncd.client.errors import (
    AuthError,
    ClientError,
    ConflictsLeft,
    CopyWiped,
    TrustError,
    UsageError,
    WipeOrdered,
)
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.reports import StatusReport, SyncReport
from smartsyncd.client.trust import (
    SYSTEM_TRUST,
    PinnedPolicy,
    TrustPolicy,
    ca_policy,
    fetch_fingerprint,
    normalize_fingerprint,
)
from smartsyncd.client.userconfig import server_key

if TYPE_CHECKING:
    from smartsyncd.client.copyservice import CopyEvent

# The sync engine and the other commands' modules are imported when a command needs them:
# a clone's or sync's TLS handshake is already on the wire by then (``_open_early``).

startup.imported()

EXIT_INTERRUPTED = 130
STOP_GRACE = 10.0  # seconds a stopping watch lets its running sync go on before cancelling it
EXIT_PARTIAL = 6  # finished, but some local changes could not sync (as rsync's 23)

__all__ = ["COMMANDS", "Output", "Session", "build_parser", "main", "run"]


async def cmd_login(session: Session, stdin: TextIO) -> int:
    args = session.args
    url = server_key(args.url)
    entry = session.config.server(url)
    if args.sso == bool(args.user):  # issue 19: --sso takes the user from the ticket
        raise UsageError("give --user NAME (password sign-in) or --sso (single sign-on)")
    password = None if args.sso else read_password(args, stdin)
    pin: str | None = None
    if args.ca_file:
        policy: TrustPolicy = ca_policy(args.ca_file)
    elif args.trust_fingerprint:
        pin = normalize_fingerprint(args.trust_fingerprint)
        policy = PinnedPolicy(pin)
    elif entry.ca_file:
        policy = ca_policy(entry.ca_file)
    elif entry.fingerprint:
        policy = PinnedPolicy(entry.fingerprint)  # a changed certificate fails here
    else:
        pin = await _first_contact(session, url)
        policy = PinnedPolicy(pin)
    api = session.api(url, policy, with_token=False)
    await api.info()
    from smartsyncd.client.sso import sso_login, sso_service  # issue 19: single sign-on

    service = sso_service(url, args.spn) if args.sso else None
    if service is not None:  # issue 19
        user, token = await sso_login(api, service, session.reactor)
    else:
        assert password is not None
        user, token = args.user, await api.login(args.user, password)
    if pin is not None:
        session.config.pin(url, pin)
        if args.ca_file is None:
            session.config.set_ca_file(url, None)
    if args.ca_file:
        stored = args.ca_file if args.ca_file == SYSTEM_TRUST else str(Path(args.ca_file).resolve())
        session.config.set_ca_file(url, stored)
    try:
        session.config.set_token(url, user, token, sso=service, keychain=args.keychain)
    except ClientError:
        await _end_unkept_session(api)  # the keychain refused the token: leave none behind
        raise
    session.config.save()
    entry = session.config.server(url)
    session.out.result(
        f"Signed in to {url} as {user}{' with single sign-on' if service else ''}"
        f"{' (token in the OS keychain)' if entry.keychain else ''}.",
        {"server": url, "user": user, "fingerprint": entry.fingerprint,
         "ca_file": entry.ca_file, "sso": service is not None, "keychain": entry.keychain},
    )
    return 0


async def _end_unkept_session(api: ServerAPI) -> None:
    """End on the server a session whose token could not be kept (best effort)."""
    try:
        await api.logout()
    except ClientError:
        pass  # the error that stopped the sign-in is the one to report


async def _first_contact(session: Session, url: str) -> str:
    """Trust on first use: show the fingerprint; pin it if a person at a terminal agrees."""
    fingerprint = await fetch_fingerprint(session.reactor, url, proxy=session.args.proxy)
    if not interactive():
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
    if session.config.token(url) is None:
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
    session.forget_tls_session(url)
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


async def cmd_clone(session: Session) -> int:
    url, engagement = split_source(session.args.source)
    directory = Path(session.args.directory)
    api = await session.signed_in_api(url)
    from smartsyncd.client.engine import SyncCopy

    copy = await SyncCopy.clone(api, engagement, directory, progress=session.progress)
    session.progress.finish()
    data: dict[str, Any] = {
        "server": url, "engagement": engagement, "directory": str(directory.resolve()),
    }
    text = f"Cloned {engagement} from {url} into {directory}."
    report = copy.clone_report
    if report is not None and report.skipped:  # e.g. a file that did not fit on the disk
        data["skipped"] = report.to_json()["skipped"]
        data["partial"] = True
        text += "\n" + "\n".join(f"  skipped: {path}: {why}" for path, why in report.skipped)
    session.out.result(text, data)
    if data.get("partial"):
        session.out.note("some files were not written (see above); a later sync brings them")
        return EXIT_PARTIAL
    return 0


def _report_exit(session: Session, verb: str, report: SyncReport | StatusReport) -> int:
    data = report.to_json()
    session.out.result(describe_report(verb, data), data)
    if isinstance(report, SyncReport) and report.refused:
        session.out.note(f"not pushed (kept in this copy; the pull went ahead): {report.refused}")
    finalized = report.finalized if isinstance(report, StatusReport) else None
    if isinstance(finalized, dict):
        session.out.note(f"the engagement is finalized by {finalized.get('by')}: "
                         f"{finalized.get('reason')} (read-only)")
    deadline = report.deadline if isinstance(report, StatusReport) else None
    if deadline is not None and deadline.get("warning"):
        session.out.note(f"warning: {deadline['warning']}")
    left = report.conflicts_left
    if left:
        session.out.note(f"{left} conflict cop{'y' if left == 1 else 'ies'} left: "
                         f"see 'smartsync conflicts'")
        return ConflictsLeft.exit_code
    if isinstance(report, SyncReport) and report.partial:
        session.out.note("finished, but some changes could not sync (see above, or 'skipped' "
                         "with --json); local ones stay in this copy, files not pulled come "
                         "with a later sync")
        return EXIT_PARTIAL
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
    copy, api = await open_copy(session)
    report = await copy.sync(api, progress=session.progress)
    session.progress.finish()
    return _report_exit(session, "sync", report)


async def cmd_status(session: Session) -> int:
    copy, api = await open_copy(session, exclusive=False)  # reads only: works beside a sync
    report = await copy.status(api)
    return _report_exit(session, "status", report)


async def cmd_watch(session: Session) -> int:
    from smartsyncd.client.copyservice import CopyService
    from smartsyncd.client.watch import steady

    copy, api = await open_copy(session)
    args = session.args
    service = CopyService(
        copy, api, long_poll=args.long_poll, poll_retry=args.retry_delay,
        backoff=steady(args.retry_delay), progress=session.progress, end_when_signed_out=True,
    )
    service.subscribe(lambda event: _tell_watch_event(session, event))
    cancelled = False

    def shutdown() -> Deferred[bool]:
        # Ctrl-C / SIGTERM: let the running sync end, within STOP_GRACE seconds.
        def said(clean: bool) -> bool:
            nonlocal cancelled
            if not clean:
                cancelled = True
                session.out.stamped(
                    f"stopping took longer than {STOP_GRACE:g} s: cancelled what was running "
                    f"(no file is left half-written; the next sync finishes the job)")
            return clean

        return service.stop(grace=STOP_GRACE).addCallback(said)

    session.reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    session.out.stamped(f"watching {Path(args.directory).resolve()} (Ctrl-C to stop)")
    try:
        await service.start()
    except CancelledError:
        if not cancelled:
            raise
    return EXIT_INTERRUPTED if cancelled else 0


def _tell_watch_event(session: Session, event: CopyEvent) -> None:
    """Each sync round on a line of its own (with --json: one object per line); a line when
    the server stops answering, when it is back, and when the machine seems to have slept."""
    if event.kind == "report":
        data = event.value.to_json()
        if session.out.json:
            session.out.result("", data)
        else:
            session.out.result(f"{stamp(time.time())} {describe_report('sync', data)}", data)
    elif event.kind == "reachability":
        session.out.stamped(event.value.describe())
    elif event.kind == "woke" and event.value == "clock-jump":
        session.out.stamped("the clock jumped (the computer slept?): syncing now")


# the other commands, each imported from its module when it runs (not at every start)
_ELSEWHERE: dict[str, tuple[str, str]] = {
    "conflicts": ("client_review", "cmd_conflicts"),
    "resolve": ("client_review", "cmd_resolve"),
    "checkout": ("client_workflow", "cmd_checkout"),
    "checkin": ("client_workflow", "cmd_checkin"),
    "locks": ("client_manage", "cmd_locks_or_break"),
    "copies": ("client_manage", "cmd_copies"),
    "finalize": ("client_manage", "cmd_finalize"),
    "reopen": ("client_manage", "cmd_reopen"),
    "grants": ("client_manage", "cmd_grants"),
    "grant": ("client_manage", "cmd_grant"),
    "revoke": ("client_manage", "cmd_revoke"),
    "ignore-rules": ("client_manage", "cmd_ignore_rules"),
    "history": ("client_workflow", "cmd_history"),
    "restore": ("client_workflow", "cmd_restore"),
    "export": ("client_workflow", "cmd_export"),
    "verify": ("client_workflow", "cmd_verify"),
}


def _elsewhere(module: str, name: str) -> Callable[[Session], Awaitable[int]]:
    async def command(session: Session) -> int:
        found: Callable[[Session], Awaitable[int]] = getattr(
            importlib.import_module(f"smartsyncd.cli.{module}"), name)
        return await found(session)

    command.__name__ = command.__qualname__ = name
    return command


COMMANDS: dict[str, Callable[[Session], Awaitable[int]]] = {
    "logout": cmd_logout,
    "engagements": cmd_engagements,
    "clone": cmd_clone,
    "sync": cmd_sync,
    "status": cmd_status,
    "watch": cmd_watch,
    **{command: _elsewhere(*where) for command, where in _ELSEWHERE.items()},
}


# -- entry point -----------------------------------------------------------------------------

# commands whose DIR is a sync copy: a wipe of it that was interrupted is finished first
_OPENS_A_COPY = frozenset({"sync", "status", "watch", "conflicts", "locks"})


async def _open_early(session: Session) -> None:
    """Issue 15: TLS on the connections the command began at its start (cli/startup.py)
    before its engine imports, so that the handshake's round trip passes meanwhile; the
    reactor turns once to send the ClientHello. Nothing when none was begun."""
    url = _server_of(session.args)
    if url is not None and session.open_early(url):
        await deferLater(session.reactor, 0, lambda: None)


def _server_of(args: Any) -> str | None:
    """The server a command talks to first, as cli/startup.py found it (or None)."""
    if args.command == "engagements":
        return str(args.url)
    if args.command == "clone":
        try:
            return split_source(args.source)[0]
        except UsageError:
            return None  # the command says what is wrong
    if args.command in ("sync", "status"):
        return startup.copy_server(args.directory)
    return None


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
    wait_for_close: bool = True,
    parsed: argparse.Namespace | None = None,
) -> int:
    """Run one command; returns the exit code (never raises except on cancel).
    ``wait_for_close``: False when the process exits right after (``main``): the server's
    answer to closing each connection is not waited for. ``parsed``: ``argv`` as
    ``build_parser`` parses it, when the caller did already (``main``: 5 ms less)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = parsed if parsed is not None else build_parser().parse_args(list(argv))
    out = Output(args, stdout, stderr)
    session: Session | None = None
    code: int | None = None
    try:
        session = Session(reactor, args, out)
        if args.command == "login":
            code = await cmd_login(session, stdin)
            return code
        await _open_early(session)
        if args.command in _OPENS_A_COPY:
            from smartsyncd.cli.client_wipe import finish_interrupted

            await finish_interrupted(session, Path(args.directory))  # raises Wiped if it did
        code = await COMMANDS[args.command](session)
        return code
    except CancelledError:
        raise
    except WipeOrdered as order:  # the copy's server ordered it wiped: obey, say so
        assert session is not None
        from smartsyncd.cli.client_wipe import obey_order, print_wiped

        try:
            return print_wiped(out, await obey_order(session, order))
        except ClientError as exc:
            out.error(exc, exc.exit_code)
            return exc.exit_code
    except CopyWiped as gone:
        from smartsyncd.cli.client_wipe import Wiped, print_wiped

        if isinstance(gone, Wiped):  # an interrupted wipe was finished
            return print_wiped(out, gone)
        out.error(gone, gone.exit_code)
        return gone.exit_code
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
        preconnect.discard_all()  # begun at the start and not used (e.g. a proxy, an error)
        if session is not None:
            session.progress.finish()
            # a command that failed leaves the settings folder as it found it
            await session.close(keep_tls_sessions=code == 0, wait=wait_for_close)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parsed = build_parser().parse_args(arguments)  # usage errors exit 2 before the reactor
    if _command_name(arguments) == "watch":
        _take_sigint()

    unfinished = [False]  # the reactor stopped before the command ended (a watch cancelled)

    async def _main(reactor: Any) -> None:
        command = Deferred.fromCoroutine(
            run(reactor, arguments, wait_for_close=False, parsed=parsed))
        interrupted = False
        reactor.addSystemEventTrigger(
            "after", "shutdown", lambda: unfinished.__setitem__(0, not command.called))

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

    try:
        react(_main)
    except SystemExit as done:
        if unfinished[0] and done.code in (0, None):
            _leave(EXIT_INTERRUPTED)
        _leave(done.code)


def _leave(code: object) -> NoReturn:
    """Exit now, skipping the interpreter's teardown (about 0.1 s after a clone of 1,000
    files: freeing its objects and modules). Nothing is left to it: files and state rows
    are durable and closed when a command returns (SQLite's WAL is committed with
    synchronous=FULL; the next open folds it in), the copy lock is the kernel's (flock,
    dropped with the process), the reactor and its threads have stopped; only the output
    streams are flushed here."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def _take_sigint() -> None:
    """Let Ctrl-C (SIGINT) stop a watch even when it was started with SIGINT ignored, as a
    script's or CI step's background job (``cmd &``) is: Twisted only takes SIGINT over from
    Python's default handler, and such a watch ignored every SIGINT sent to stop it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _command_name(arguments: Sequence[str]) -> str | None:
    for arg in arguments:
        if arg in COMMANDS or arg == "login":
            return arg
    return None
