"""What one ``smartsync`` command runs with: its ``Output`` (text, JSON or nothing) and its
``Session`` (the user's settings, trust policies, credentials and signed-in ``ServerAPI``s),
and opening the sync copy a command names."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IPolicyForHTTPS

from smartsyncd.client import osfs, preconnect
from smartsyncd.client.backoff import RetryNotice
from smartsyncd.client.errors import (
    AuthError,
    ClientError,
    ServerRefused,
    TrustError,
    UsageError,
)
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.progress import RichProgress
from smartsyncd.client.tlsresume import ResumptionSlot, session_file, trust_identity
from smartsyncd.client.trust import PinnedPolicy, TrustPolicy, ca_policy, normalize_fingerprint
from smartsyncd.client.userconfig import UserConfig

if TYPE_CHECKING:
    from smartsyncd.client.engine import SyncCopy

PASSWORD_ENV = "SMARTSYNC_PASSWORD"


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

    def stamped(self, text: str) -> None:
        """A line for a person, with the local date and time: stderr, unless quiet (also
        with --json: stdout stays the result)."""
        if not self.quiet:
            self.stderr.write(f"{stamp(time.time())} {text.rstrip()}\n")
            self.stderr.flush()

    def retry(self, notice: RetryNotice) -> None:
        """A request that failed and will be tried again: what failed and when."""
        self.stamped(notice.describe(at=stamp(notice.retry_at, date=False)))

    def error(self, exc: BaseException, code: int) -> None:
        message = _one_line(str(exc)) or type(exc).__name__
        self.stderr.write(f"smartsync: error: {message}\n")
        self.stderr.flush()
        if self.json:
            # every refusal keeps the one kind it always had (its subclass is for callers)
            kind = exc.kind if isinstance(exc, ServerRefused) else type(exc).__name__
            self.stdout.write(
                json.dumps({"error": kind, "message": message, "exit_code": code}) + "\n"
            )
            self.stdout.flush()


def stamp(seconds: float, *, date: bool = True) -> str:
    """Local date and time of a Unix time: ``2026-12-05 13:05:01``."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(seconds))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def interactive() -> bool:
    """Whether a person is at a terminal to be asked (a password, a fingerprint)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


class Session:
    """Everything one command needs: settings, output, and a way to build a ServerAPI."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Output) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out
        self.config = UserConfig.load(args.config_dir)
        self.progress = RichProgress(quiet=out.quiet or out.json)  # stderr; rich only if drawn
        self._apis: list[ServerAPI] = []
        self._resumption: dict[tuple[str, str], ResumptionSlot] = {}  # (url, trust label)
        self._early: dict[str, ServerAPI] = {}  # by server: opened by ``open_early``
        # the copy a command opened and its server: a wipe order is obeyed for it alone
        self.opened: tuple[SyncCopy, ServerAPI] | None = None

    def explicit_fingerprint(self) -> str | None:
        value = self.args.trust_fingerprint
        return normalize_fingerprint(value) if value else None

    def _slot(self, url: str, label: str) -> ResumptionSlot:
        slot = self._resumption.get((url, label))
        if slot is None:
            slot = ResumptionSlot(
                session_file(self.config.directory, url), trust_identity(url, label)
            )
            slot.load()
            self._resumption[(url, label)] = slot
        return slot

    def forget_tls_session(self, url: str) -> None:
        """Sign-out: no kept TLS session for ``url`` (from any trust)."""
        key = self.config.server(url).url
        for (slot_url, _), slot in list(self._resumption.items()):
            if slot_url == key:
                slot.forget()
                del self._resumption[(slot_url, _)]
        osfs.unlink(session_file(self.config.directory, key), missing_ok=True)

    def policy(self, url: str) -> TrustPolicy:
        """The trust policy for ``url`` from the options or the saved settings."""
        entry = self.config.server(url)
        if self.args.ca_file:
            return ca_policy(self.args.ca_file)
        explicit = self.explicit_fingerprint()
        if explicit:
            return PinnedPolicy(explicit)
        if entry.ca_file:
            return ca_policy(entry.ca_file)
        if entry.fingerprint:
            return PinnedPolicy(entry.fingerprint)
        raise TrustError(
            f"{entry.url} is not trusted yet: run 'smartsync login {entry.url} --user NAME' "
            f"first (or pass --ca-file / --trust-fingerprint)"
        )

    def api(self, url: str, policy: TrustPolicy, *, with_token: bool = True) -> ServerAPI:
        """A ServerAPI for ``url``; its connections offer the TLS session kept from the last
        run (kept again at ``close`` only if the token is kept in the settings file)."""
        entry = self.config.server(url)
        if policy.resumption is None and entry.keychain is None:
            policy.resumption = self._slot(entry.url, policy.trust_label)
        api = ServerAPI(
            entry.url,
            reactor=self.reactor,
            policy=cast(IPolicyForHTTPS, policy),
            token=self.config.token(url) if with_token else None,
            relogin=self._relogin(entry.url) if with_token else None,
            max_attempts=self.args.attempts,
            bwlimit=self._bwlimit(entry.bwlimit),
            proxy=self.args.proxy,
        )
        api.on_retry = self.out.retry
        self._apis.append(api)
        return api

    def _bwlimit(self, configured: int | None) -> int | None:
        """Bytes per second from --bwlimit, else the settings file; None for no limit."""
        kbps = self.args.bwlimit if self.args.bwlimit is not None else configured
        return kbps * 1024 if kbps else None

    def open_early(self, url: str) -> bool:
        """Begin TLS on the connections begun at the start for ``url`` (issue 15), on the
        ServerAPI that ``signed_in_api(url)`` will then return (True); nothing if none was
        begun, or the server is not trusted yet (the command says so when it asks)."""
        try:
            key = self.config.server(url).url
            if key in self._early or not preconnect.pending(*_host_port(key)):
                return False
            api = self.api(url, self.policy(url), with_token=False)
        except (ClientError, OSError, ValueError):
            return False  # raised again, in the command's own order, when it asks
        self._early[key] = api
        return bool(api.open_early())

    async def signed_in_api(self, url: str, copy: SyncCopy | None = None) -> ServerAPI:
        """A ServerAPI for a server the user has signed in to (or can sign in to now); with
        ``copy``, every request (a sign-in too) names it, and a wipe order is for it."""
        policy = self.policy(url)
        key = self.config.server(url).url
        api = self._early.pop(key, None)
        if api is None:
            api = self.api(url, policy)
        else:  # what ``api`` would have given it (it was made without them)
            api.token = self.config.token(url)
            api.relogin = self._relogin(key)
        if copy is not None:
            api.copy_id = copy.copy_id
            self.opened = (copy, api)
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
        if entry.sso is not None:  # issue 19: sign in again silently with the Kerberos ticket
            return self._sso_relogin(url, entry.sso)
        user = entry.user
        if user is None or not (os.environ.get(PASSWORD_ENV) or interactive()):
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
                proxy=self.args.proxy,
            )
            fresh.copy_id = self._opened_copy_id()  # a sign-in is answered with a wipe order too
            self._apis.append(fresh)
            token = await fresh.login(user, password)
            self.config.set_token(url, user, token)
            self.config.save()
            return token

        return relogin

    def _sso_relogin(self, url: str, service: str) -> Callable[[], Awaitable[str]]:
        async def relogin() -> str:
            fresh = self.api(url, self.policy(url), with_token=False)
            fresh.copy_id = self._opened_copy_id()
            from smartsyncd.client.sso import sso_login  # issue 19: single sign-on

            user, token = await sso_login(fresh, service, self.reactor)
            self.config.set_token(url, user, token, sso=service)
            self.config.save()
            return token

        return relogin

    def _opened_copy_id(self) -> str | None:
        return None if self.opened is None else self.opened[0].copy_id

    async def close(self, *, keep_tls_sessions: bool = True, wait: bool = True) -> None:
        """Close the connections; keep each TLS session for the next run if
        ``keep_tls_sessions`` and the server's token is kept in the settings file. Without
        ``wait`` the server's answer to each close is not waited for (a round trip): for a
        process about to exit, whose close_notify is sent and whose exit closes the sockets."""
        closing = [Deferred.fromCoroutine(api.close()) for api in self._apis]
        for done in closing:
            if wait:
                await done
            else:
                done.addErrback(lambda _: None)
        if not keep_tls_sessions:
            return
        for (url, _), slot in self._resumption.items():
            entry = self.config.server(url)
            if entry.keychain is not None:  # the token is in the keychain: no ticket on disk
                slot.forget()
            elif entry.token is not None:  # kept with the token, as the issue asks
                slot.save()  # a small durable write, as config.json's


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def read_password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif interactive():
        password = getpass.getpass(f"Password for {args.user}: ")
    else:
        raise UsageError(
            f"no password: pass --password-stdin or set {PASSWORD_ENV} (no terminal to ask on)"
        )
    if not password:
        raise UsageError("the password is empty")
    return password


async def open_copy(session: Session, *, exclusive: bool = True) -> tuple[SyncCopy, ServerAPI]:
    """Open the copy: ``exclusive`` (sync, watch, restore) takes the copy lock, and a copy
    another process syncs is refused (``CopyInUse``, exit 2); read-only commands pass False."""
    from smartsyncd.client.engine import SyncCopy

    copy = SyncCopy.open(Path(session.args.directory), exclusive=exclusive)
    api = await session.signed_in_api(copy.server_url, copy)
    return copy, api
