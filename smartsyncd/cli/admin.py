"""``smartsync-admin``: manage the server's metadata directly (users, engagements, grants, fsck).

It opens the same store as the daemon (same config file parsing and defaults, so
``--config``/``--data-dir`` find the same data) and can run while the daemon runs: SQLite in
WAL mode lets both write; PostgreSQL serves every daemon and this tool alike. ``db upgrade``
creates the schema or applies pending migrations (what every daemon also does when it starts). Exit codes: 0 ok, 1 failure (unknown name, duplicate, damage found by
fsck), 2 usage. A user mistake gets one line on stderr, never a traceback.

Passwords are read before the reactor starts (``--password-stdin``, else two ``getpass``
prompts) and hashed in a thread.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from twisted.python.usage import UsageError

from smartsyncd.cli.admin_parser import PROG, build_parser
from smartsyncd.cli.context import AdminError
from smartsyncd.core.errors import SyncError
from smartsyncd.service.config import ServerConfig, default_config_file, load_config
from smartsyncd.storage.api import EngagementRecord

ENGAGEMENT_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")


def check_engagement_name(name: str) -> str:
    if not ENGAGEMENT_NAME.fullmatch(name):
        raise AdminError(
            f"invalid engagement name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
            "and do not start with '.'",
            code=2,
        )
    return name


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise AdminError(
            f"invalid user name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ @ - "
            "starting with a letter, digit or _",
            code=2,
        )
    return name


def read_password(from_stdin: bool, stdin: TextIO | None = None) -> str:
    """The new password: one line from stdin, or typed twice at a prompt. Empty is refused."""
    if from_stdin:
        line = (stdin or sys.stdin).readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = getpass.getpass("New password: ")
        if password and getpass.getpass("Repeat the password: ") != password:
            raise AdminError("the passwords do not match; nothing changed")
    if not password:
        raise AdminError("empty password refused; nothing changed")
    return password


def _check_args(args: argparse.Namespace) -> None:
    """Validate names before anything is opened (exit 2 on a bad one)."""
    if args.command == "engagement" and args.action == "create":
        check_engagement_name(args.name)
    if args.command == "user" and args.action == "add":
        check_user_name(args.name)


def _needs_existing_data(args: argparse.Namespace) -> bool:
    return not (
        (args.command == "user" and args.action == "add")
        or (args.command == "engagement" and args.action == "create")
        or args.command == "db"
    )



class Admin:
    """The commands, against an open store (``out`` receives the normal output)."""

    def __init__(self, store: Any, config: ServerConfig, reactor: Any, out: TextIO) -> None:
        self.store = store
        self.config = config
        self.reactor = reactor
        self.out = out
        self._ldap: Any = None

    def say(self, line: str) -> None:
        self.out.write(line + "\n")

    def _directory(self) -> Any:
        if self.config.ldap is None:
            return None
        if self._ldap is None:
            from smartsyncd.auth.ldap import LdapAuthenticator

            self._ldap = LdapAuthenticator(self.config.ldap, self.reactor)
        return self._ldap

    async def run(self, args: argparse.Namespace, password: str | None) -> int:
        from smartsyncd.cli import admin_branch, admin_ignore, admin_volumes
        from smartsyncd.cli.admin_json import run_json, wants_json

        if admin_branch.handles(args):
            return await admin_branch.run_branch(self, args)
        if admin_ignore.handles(args):
            return await admin_ignore.run_ignore(self, args)
        if admin_volumes.handles(args):
            return await admin_volumes.run_volumes(self, args, self.config.warn_free_mb << 20)
        if wants_json(args):
            return await run_json(self, args)
        if args.command == "user":
            if args.action == "add":
                return await self.user_add(args.name, password or "")
            if args.action == "passwd":
                return await self.user_passwd(args.name, password or "")
            if args.action in ("disable", "enable", "remove"):
                from smartsyncd.cli.admin_sessions import user_state

                return await user_state(self, args.action, args.name)
            return await self.user_list()
        if args.command == "engagement":
            if args.action == "create":
                return await self.engagement_create(args.name, args.title, args.volume)
            if args.action in ("set", "dispose"):
                from smartsyncd.cli.admin_lifecycle import run_lifecycle

                return await run_lifecycle(self, args)
            if args.action in ("finalize", "reopen", "retention", "status"):
                from smartsyncd.cli.admin_workflow import engagement_action

                return await engagement_action(self, args)
            return await self.engagement_list()
        if args.command in ("legal-hold", "quota", "root-key"):
            from smartsyncd.cli.admin_lifecycle import run_lifecycle

            return await run_lifecycle(self, args)
        if args.command in ("lock", "copies", "audit", "gc"):
            from smartsyncd.cli.admin_workflow import run_workflow

            return await run_workflow(self, args)
        if args.command == "sessions":
            from smartsyncd.cli.admin_sessions import sessions_action

            return await sessions_action(self, args)
        if args.command == "grant":
            return await self.grant(args.engagement, args.user, args.group, args.role)
        if args.command == "revoke":
            return await self.revoke(args.engagement, args.user, args.group)
        if args.command == "grants":
            return await self.grants(args.engagement)
        if args.command == "db":
            if args.action == "new-generation":
                from smartsyncd.cli.admin_backup import new_generation

                return await new_generation(self.store, self.out)
            return await self.db_upgrade()
        return await self.fsck()

    async def _hash(self, password: str) -> str:
        from twisted.internet.threads import deferToThread

        from smartsyncd.auth.passwords import hash_password

        result: str = await deferToThread(hash_password, password)
        return result

    async def user_add(self, name: str, password: str) -> int:
        if await self.store.get_user(name) is not None:
            raise AdminError(
                f"user {name!r} already exists (change the password with: user passwd)"
            )
        await self._refuse_directory_name(name)
        await self.store.add_user(name, await self._hash(password))
        self.say(f"added user {name}")
        return 0

    async def _refuse_directory_name(self, name: str) -> None:
        """A local account named like a directory account would share its user grants."""
        directory, ldap = self._directory(), self.config.ldap
        if directory is None or ldap is None:  # both or neither (_directory)
            return
        if ldap.bind_dn is None:
            self.say(f"warning: no [ldap] bind_dn, so {name!r} was not checked in the directory")
            return
        from smartsyncd.auth.identity import BackendUnavailable, SignInRefused, UnknownUser

        try:
            await directory.lookup_user(name)
        except UnknownUser:
            return
        except (BackendUnavailable, SignInRefused) as e:
            raise AdminError(
                f"cannot check that {name!r} is not a directory account ({e}); nothing changed"
            ) from None
        raise AdminError(
            f"{name!r} is an account in the directory: a local user of that name would share "
            "its grants; nothing changed"
        )

    async def user_passwd(self, name: str, password: str) -> int:
        if await self.store.get_user(name) is None:
            raise AdminError(f"unknown user {name!r}")
        await self.store.set_password(name, await self._hash(password))
        self.say(f"password of {name} changed; their open sessions are ended")
        return 0

    async def user_list(self) -> int:
        users = await self.store.list_users()
        for u in sorted(users, key=lambda u: u.name):
            state = "disabled" if u.disabled else ("active" if u.password_hash else "no password")
            self.say(f"{u.name}\t{state}\tcreated {u.created_at:%Y-%m-%d %H:%M}")
        blocks = await self.store.list_principal_blocks()
        for b in blocks:  # directory accounts refused here (user disable|remove)
            self.say(f"{b.display_name}\t{b.state}\t{b.principal}\tsince {b.since:%Y-%m-%d %H:%M}")
        if not users and not blocks:
            self.say("(no users)")
        return 0

    async def engagement_create(self, name: str, title: str | None, volume: str | None = None) -> int:
        from smartsyncd.cli.admin_volumes import pick_volume

        if await self.store.get_engagement(name) is not None:
            raise AdminError(f"engagement {name!r} already exists")
        placed = await pick_volume(self, volume)
        await self.store.create_engagement(name, title if title is not None else name, placed)  # type: ignore[call-arg]
        self.say(f"created engagement {name} on volume {placed}")
        return 0

    async def engagement_list(self) -> int:
        engagements = await self.store.list_engagements()
        for e in sorted(engagements, key=lambda e: e.name):
            self.say(f"{e.name}\thead {e.head}\t{e.title}")
        if not engagements:
            self.say("(no engagements)")
        return 0

    async def engagement(self, name: str) -> EngagementRecord:
        record = await self.store.get_engagement(name)
        if record is None:
            raise AdminError(f"unknown engagement {name!r}")
        return record

    def _resolver(self) -> Any:
        from smartsyncd.auth.grantees import GranteeResolver

        return GranteeResolver(self.store, self._directory())

    async def user_principal(self, name: str) -> tuple[str, str]:
        """(principal id, display name) of a user given on the command line
        (``auth.grantees.GranteeResolver.user``: the daemon's ``POST .../grants`` resolves alike)."""
        from smartsyncd.auth.grantees import NoSuchUser

        try:
            found: tuple[str, str] = await self._resolver().user(name)
        except NoSuchUser:
            raise AdminError(f"unknown user {name!r} (add it with: {PROG} user add {name})") from None
        except SyncError as e:
            raise AdminError(e.message) from None
        return found

    async def grant(self, engagement: str, user: str | None, group: str | None, role: str) -> int:
        await self.engagement(engagement)
        if user is not None:
            principal, display = await self.user_principal(user)
            from smartsyncd.storage.api import Grant

            record = Grant(engagement, "user", principal, display, role)  # type: ignore[arg-type]
        else:
            assert group is not None
            try:
                record = await self._resolver().grant(engagement, "group", group, role)
            except SyncError as e:
                raise AdminError(e.message) from None
        await self.store.grant(record)
        self.say(f"granted {role} on {engagement} to {record.kind} {_shown(record)}")
        return 0

    async def revoke(self, engagement: str, user: str | None, group: str | None) -> int:
        from smartsyncd.auth.grantees import matching_grants

        await self.engagement(engagement)
        if user is not None:
            kind, wanted = "user", user
        else:
            assert group is not None
            kind, wanted = "group", group
        matches = matching_grants(await self.store.list_grants(engagement), kind, wanted)  # type: ignore[arg-type]
        if not matches:
            raise AdminError(f"{kind} {wanted!r} has no grant on {engagement!r}")
        for g in matches:
            await self.store.revoke(engagement, g.kind, g.principal)
            self.say(f"revoked {g.role} on {engagement} from {kind} {_shown(g)}")
        return 0

    async def grants(self, engagement: str | None) -> int:
        if engagement is not None:
            await self.engagement(engagement)
        rows = await self.store.list_grants(engagement)
        for g in sorted(rows, key=lambda g: (g.engagement, g.kind, g.display_name)):
            self.say(f"{g.engagement}\t{g.kind}\t{_shown(g)}\t{g.role}")
        if not rows:
            self.say("(no grants)")
        return 0

    async def db_upgrade(self) -> int:
        # Opening the store already migrated it (under the database's migration lock).
        from smartsyncd.service.server import describe_database
        from smartsyncd.storage.schema import LATEST_VERSION, current_version

        version = await self.store.run_db(lambda meta: current_version(meta.conn, meta.dialect))
        self.say(
            f"database schema at version {version} (this smartsyncd: {LATEST_VERSION}); "
            f"{describe_database(self.config)}"
        )
        from smartsyncd.cli.admin_sessions import claim_name_grants

        await claim_name_grants(self)
        return 0

    async def fsck(self) -> int:
        problems = await self.store.fsck()
        for p in problems:
            self.say(f"{p.engagement}: {p.kind}: {p.detail}")
        if problems:
            self.say(f"fsck: {len(problems)} problem(s) found")
            return 1
        self.say("fsck: no problems found")
        return 0


def _shown(g: Any) -> str:
    """A grant's principal for people: the name, and the id when it is more than the name."""
    if g.principal in (g.display_name, "local:" + g.display_name):
        return str(g.display_name)
    return f"{g.display_name} ({g.principal})"


def _describe(error: BaseException) -> str:
    if isinstance(error, SyncError):
        return error.message
    reason = getattr(error, "reason", None)
    return str(reason or error) or type(error).__name__


async def run_admin(
    reactor: Any,
    args: argparse.Namespace,
    config: ServerConfig,
    password: str | None,
    out: TextIO,
) -> int:
    """Open the store, run one command, close the store; returns the exit status."""
    from smartsyncd.storage.sqlite import open_server_store

    if args.command in ("backup", "restore"):  # they open the store themselves (or not)
        from smartsyncd.cli.admin_backup import run_backup

        return await run_backup(reactor, args, config, out)

    if (
        config.database_url is None
        and _needs_existing_data(args)
        and not os.path.exists(os.path.join(config.data_dir, "metadata.sqlite3"))
    ):
        raise AdminError(
            f"no server data in {config.data_dir} (check --data-dir/--config, or create a "
            "user or engagement first)"
        )
    try:
        store = await open_server_store(
            config.data_dir,
            reactor=reactor,
            database_url=config.database_url,
            storage_path=config.storage_path,
            volumes=dict(config.volumes),
        )
    except Exception as e:  # noqa: BLE001 - reported as one line: where and why
        raise AdminError(
            f"cannot open the server data in {config.data_dir}: {_describe(e)}"
        ) from None
    store.firm_min_retention_days = config.min_retention_days  # issue 20: the firm's minimum
    try:
        from twisted.internet.threads import deferToThread

        from smartsyncd.storage.maintenance import RecordingStore

        # fsck and gc outcomes go to DATA/maintenance.json for the daemon's metrics
        recording = RecordingStore(store, config.data_dir, _utc_now, deferToThread)
        return await Admin(recording, config, reactor, out).run(args, password)
    except SyncError as e:
        raise AdminError(e.message) from None
    finally:
        await store.close()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _reader_went_away() -> NoReturn:
    """Stdout's reader closed the pipe (``| head``): exit as a SIGPIPE'd tool would, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush has nowhere to fail
    raise SystemExit(128 + 13)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point (``smartsync-admin``)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a usage error
    if args.command == "engagement" and args.action == "add":
        args.action = "create"  # the alias
    try:
        config = load_config(default_config_file(args.config, args.data_dir), data_dir=args.data_dir)
        _check_args(args)
        password = None
        if args.command == "user" and args.action in ("add", "passwd"):
            password = read_password(args.password_stdin)
    except UsageError as e:
        _fail(str(e), 2)
    except AdminError as e:
        _fail(e.message, e.code)
    except (KeyboardInterrupt, EOFError):
        _fail("interrupted; nothing changed", 1)

    from twisted.internet.defer import Deferred
    from twisted.internet.task import react
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and errors from the store or the directory go to stderr; info stays quiet.
    stderr_observer: Any = textFileLogObserver(sys.stderr)
    warnings_only: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer: Any = FilteringLogObserver(stderr_observer, [warnings_only])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    async def run(reactor: Any) -> None:
        try:
            code = await run_admin(reactor, args, config, password, sys.stdout)
            sys.stdout.flush()
        except AdminError as e:
            _fail(e.message, e.code)
        except BrokenPipeError:
            _reader_went_away()
        if code:
            raise SystemExit(code)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
