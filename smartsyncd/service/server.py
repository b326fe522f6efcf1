"""The service that opens the store, builds the web application and listens on TLS.

Start order (in ``startService``, after the reactor runs): TLS certificate (made on first
start), store (async open: migrations run in its own threads), sign-in backends and sessions,
the Klein application, then the listening port (and the port file, written after the bind).
With PostgreSQL metadata a ``PgNotifyBridge`` (``service/pgnotify.py``) also starts: commits
made by other daemons wake this daemon's long-polls.
Stop order is the reverse: stop listening, stop the bridge, then close the store.

A start that fails (store cannot open, port in use, bad certificate) logs one critical line
saying why and calls ``on_fatal`` (the daemon stops the reactor and exits non-zero) rather than
leaving a process that runs but serves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.lockfile import FilesystemLock

import smartsyncd
from smartsyncd.core.errors import SyncError
from smartsyncd.runtime.tlsbatching import batching_tls_endpoint
from smartsyncd.service.config import ServerConfig
from smartsyncd.service.folderlock import lock_data_folder
from smartsyncd.service.hardening import readable_by_others, tighten_data_dir
from smartsyncd.service.tls import (
    CertificateInfo,
    endpoint_tls_files,
    ensure_self_signed,
    load_certificate,
    restrict_ciphers,
    tls_endpoint_string,
)
from smartsyncd.storage.durable import write_durably

RunBlocking = Callable[..., Awaitable[Any]]

log = Logger(namespace="smartsyncd.service")


def describe_database(config: ServerConfig) -> str:
    """The metadata backend for the log, with any password in a URL masked."""
    if config.database_url is None:
        return f"SQLite {os.path.join(config.data_dir, 'metadata.sqlite3')}"
    parts = urlsplit(config.database_url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    return config.database_url


def build_backends(
    config: ServerConfig, store: Any, reactor: Any, run_blocking: RunBlocking
) -> list[Any]:
    """The sign-in backends in the configured order."""
    backends: list[Any] = []
    for name in config.auth_backends:
        if name == "local":
            from smartsyncd.auth.local import LocalAuthenticator

            backends.append(LocalAuthenticator(store, run_blocking))
        elif name == "ldap":
            from smartsyncd.auth.ldap import LdapAuthenticator

            backends.append(LdapAuthenticator(config.ldap, reactor))
    return backends


class SmartsyncServer(Service):
    """Owns the store and the listening port for the lifetime of the daemon."""

    def __init__(
        self,
        config: ServerConfig,
        reactor: Any,
        run_blocking: RunBlocking,
        *,
        port_file: str | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._port_file = port_file
        self._on_fatal = on_fatal
        self.store: Any = None
        self.port: Any = None  # IListeningPort once listening
        self.certificate: CertificateInfo | None = None
        self.started: Deferred[None] | None = None
        self.notify_bridge: Any = None  # PgNotifyBridge when the metadata is in PostgreSQL
        self._stopping = False
        self.folder_lock: FilesystemLock | None = None
        self.setName("smartsyncd")

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._reactor.seconds(), UTC)

    async def _start(self) -> None:
        config = self.config
        log.info(
            "smartsyncd {version} starting; data folder {data_dir}; metadata: {database}",
            version=smartsyncd.__version__,
            data_dir=config.data_dir,
            database=describe_database(config),
        )
        self.folder_lock = await self._run_blocking(lock_data_folder, config.data_dir)
        if await self._run_blocking(tighten_data_dir, config.data_dir):
            log.warn("the data folder {data_dir} was open to other accounts; it is now 0700",
                     data_dir=config.data_dir)
        listen_files = endpoint_tls_files(config.listen)
        if listen_files is not None:
            info = await self._run_blocking(load_certificate, *listen_files)
        elif config.self_signed:
            info = await self._run_blocking(
                ensure_self_signed, config.cert_path, config.key_path, now=self._now()
            )
            if info.created:
                log.info(
                    "created a self-signed TLS certificate {cert_path}", cert_path=info.cert_path
                )
        else:
            info = await self._run_blocking(load_certificate, config.cert_path, config.key_path)
        self.certificate = info
        secrets = [("TLS private key", info.key_path)]
        if config.ldap is not None:
            secrets.append(("LDAP bind password file", config.ldap.bind_password_file))
        for what, path, mode in await self._run_blocking(readable_by_others, secrets):
            log.warn(
                "the {what} {path} is readable by other accounts (mode {mode}): chmod 600 it",
                what=what, path=path, mode=f"{mode:04o}",
            )
        log.info(
            "TLS certificate SHA-256 fingerprint: {fingerprint}",
            fingerprint=info.fingerprint,
            cert_path=info.cert_path,
        )

        from smartsyncd.storage.sqlite import open_server_store

        self.store = await open_server_store(
            config.data_dir,
            reactor=self._reactor,
            database_url=config.database_url,
            storage_path=config.storage_path,
            now=self._now,
        )
        if self._stopping:
            return

        from smartsyncd.auth.ratelimit import LoginRateLimiter
        from smartsyncd.auth.sessions import SessionManager
        from smartsyncd.auth.throttle import AccountThrottle
        from smartsyncd.web.app import SyncAPI, make_site
        from smartsyncd.web.limits import ClientLimits
        from smartsyncd.web.notify import ChangeNotifier

        window = config.login_failure_window_minutes * 60.0
        limiter = LoginRateLimiter(
            self._reactor,
            per_user=config.login_failures_per_user,
            per_address=config.login_failures_per_address,
        )
        throttle = AccountThrottle(
            self.store, self._reactor, limit=config.login_failures_per_user, window=window
        )
        sessions = SessionManager(
            self.store,
            build_backends(config, self.store, self._reactor, self._run_blocking),
            self._reactor,
            limiter,
            lifetime=timedelta(days=config.session_lifetime_days),
            # group membership is the directory's: local accounts have none to re-read
            refresh_interval=timedelta(
                minutes=config.ldap.refresh_interval if config.ldap else 15.0
            ),
            throttle=throttle,
            max_age=timedelta(days=config.session_max_days),
        )
        notifier = ChangeNotifier(self._reactor)
        if config.database_url is not None and config.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            # Commits on the other daemons wake the long-polls waiting here.
            from smartsyncd.service.pgnotify import PgNotifyBridge

            self.notify_bridge = PgNotifyBridge(config.database_url, notifier.notify, self._reactor)
            self.notify_bridge.startService()
        api = SyncAPI(self.store, sessions, notifier, self._reactor, self._run_blocking)
        clients = ClientLimits(
            connections_per_address=config.connections_per_address,
            unauthenticated_bytes_per_address=config.unauthenticated_bytes_per_address,
            request_deadline=config.request_deadline,
        )
        site = make_site(
            api,
            timeout=config.request_timeout,
            clients=clients,
            trusted_proxies=config.trusted_proxies,
        )
        endpoint = batching_tls_endpoint(
            self._reactor, tls_endpoint_string(config.listen, info.cert_path, info.key_path)
        )
        restrict_ciphers(endpoint)
        self.port = await endpoint.listen(site)
        if self._stopping:
            return
        host = self.port.getHost()
        if self._port_file is not None:
            await self._run_blocking(
                write_durably, self._port_file, f"{host.port}\n".encode(), mode=0o644
            )
        log.info(
            "smartsyncd {version} listening on {endpoint}",
            version=smartsyncd.__version__,
            endpoint=f"{config.listen} ({host.host}:{host.port})",
            port=host.port,
        )

    def _start_failed(self, failure: Failure) -> None:
        if self._stopping:
            log.info("start interrupted by shutdown: {why}", why=failure.getErrorMessage())
            return
        if failure.check(OSError, ValueError, CannotListenError, SyncError):
            # An operator's problem (port taken, unreadable file): one line, no traceback.
            log.critical("smartsyncd could not start: {why}", why=_reason(failure))
        else:
            log.failure("smartsyncd could not start: {why}", failure, why=_reason(failure))
        if self._on_fatal is not None:
            self._on_fatal()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.started is not None:
            # Let an unfinished start reach a point where its resources are known.
            await self.started
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        if self._port_file is not None:
            try:
                os.unlink(self._port_file)
            except FileNotFoundError:
                pass
        if self.notify_bridge is not None:
            bridge, self.notify_bridge = self.notify_bridge, None
            await bridge.stopService()
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()
        if self.folder_lock is not None:
            lock, self.folder_lock = self.folder_lock, None
            # One unlink, here on the reactor: the thread pools stop beside this service.
            lock.unlock()
        log.info("smartsyncd stopped")


def _reason(failure: Failure) -> str:
    """One readable line: the exception type and message."""
    error = failure.value
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return f"{type(error).__name__}: {message}"
