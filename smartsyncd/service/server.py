"""The service that opens the store, builds the web application and listens on TLS.

Start order (in ``startService``, after the reactor runs), one method per step: the check
that this Twisted still has the private names smartsyncd relies on (``runtime/twistedcompat``),
the data folder lock, the TLS certificate (made on first start), the store (async open:
migrations run in its own threads), the site (sign-in backends and sessions, the Klein
application), then the listening port (and the port file, written after the bind).
With PostgreSQL metadata a ``PgNotifyBridge`` (``service/pgnotify.py``) joins the tree as this
service's child when the site is built: commits made by other daemons wake this daemon's
long-polls; the assembly-deadline timer (``service/deadlines.py``) is a child too. With
``[admin] listen`` an ``AdminListener`` child (service/admin.py) serves the
metrics; it listens before the public listener does.

Stop order is the reverse: stop listening, then drain (web/inflight.py: wake the parked
long-polls, let the requests in flight finish within ``[server] drain_seconds``, close the
connections of those still running), stop the children (the bridge, the admin listener), then
close the store.

On SIGHUP, ``reload_certificate`` (a ``ReloadService`` step, ``service/tap.py``) puts the
certificate and key files, once they parse and match, into the listener's TLS context
(``service/tlsreload.py``); new connections present the new certificate.

A start that fails (store cannot open, port in use, bad certificate) logs one critical line
saying why and calls ``on_fatal`` (the daemon stops the reactor and exits non-zero) rather than
leaving a process that runs but serves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.lockfile import FilesystemLock

import smartsyncd
from smartsyncd.core.errors import SyncError
from smartsyncd.runtime import twistedcompat
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
from smartsyncd.storage.api import ServerStore
from smartsyncd.storage.durable import write_durably
from smartsyncd.web.inflight import InFlight
from smartsyncd.web.metrics import SyncMetrics
from smartsyncd.web.pool import RunBlocking

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
    from twisted.web.server import Site
    from werkzeug.routing import Map

    from smartsyncd.auth.sessions import Authenticator, SessionManager
    from smartsyncd.service.admin import AdminListener
    from smartsyncd.service.deadlines import DeadlineTimer
    from smartsyncd.service.pgnotify import PgNotifyBridge
    from smartsyncd.service.reactor import DaemonReactor
    from smartsyncd.web.app import SyncAPI
    from smartsyncd.web.notify import ChangeNotifier
    from smartsyncd.web.statushtml import BranchState
    from smartsyncd.web.usershaping import UserShaper

log = Logger(namespace="smartsyncd.service")

# An operator's problem (port taken, unreadable file, wrong Twisted): one line, no traceback.
_OPERATOR_ERRORS = (
    OSError, ValueError, CannotListenError, SyncError, twistedcompat.TwistedInternalsMissing,
)


class DaemonStore(ServerStore, Protocol):
    """The store the daemon opens: the API's ``ServerStore``, and ``close`` at shutdown."""

    async def close(self) -> None: ...


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
    config: ServerConfig, store: ServerStore, reactor: DaemonReactor, run_blocking: RunBlocking
) -> list[Authenticator]:
    """The sign-in backends in the configured order."""
    backends: list[Authenticator] = []
    for name in config.auth_backends:
        if name == "local":
            from smartsyncd.auth.local import LocalAuthenticator

            backends.append(LocalAuthenticator(store, run_blocking))
        elif name == "ldap":
            from smartsyncd.auth.ldap import LdapAuthenticator

            assert config.ldap is not None  # load_config refuses the ldap backend without [ldap]
            backends.append(LdapAuthenticator(config.ldap, reactor))
    return backends


def uses_postgres(config: ServerConfig) -> bool:
    url = config.database_url
    return url is not None and url.startswith(("postgresql://", "postgres://"))


class SmartsyncServer(MultiService):
    """Owns the store and the listening port for the lifetime of the daemon; its child
    services (the PostgreSQL notification bridge) start and stop with it."""

    def __init__(
        self,
        config: ServerConfig,
        reactor: DaemonReactor,
        run_blocking: RunBlocking,
        *,
        port_file: str | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._run_blocking = run_blocking
        self._port_file = port_file
        self._on_fatal = on_fatal
        self.store: DaemonStore | None = None
        self.endpoint: IStreamServerEndpoint | None = None
        self.shaper: UserShaper | None = None  # with [limits] per_user_kbps
        self.port: IListeningPort | None = None
        self.certificate: CertificateInfo | None = None
        self.started: Deferred[None] | None = None
        self.notify_bridge: PgNotifyBridge | None = None  # when the metadata is in PostgreSQL
        self.deadline_timer: DeadlineTimer | None = None
        self.api: SyncAPI | None = None
        self._stopping = False
        self.folder_lock: FilesystemLock | None = None
        self.metrics = SyncMetrics(reactor.seconds)
        self.inflight = InFlight()
        self.notifier: ChangeNotifier | None = None
        self.admin: AdminListener | None = None
        self.sessions: SessionManager | None = None
        self.metered_store: ServerStore | None = None
        self.setName("smartsyncd")

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._reactor.seconds(), UTC)

    async def _start(self) -> None:
        log.info(
            "smartsyncd {version} starting; data folder {data_dir}; metadata: {database}",
            version=smartsyncd.__version__,
            data_dir=self.config.data_dir,
            database=describe_database(self.config),
        )
        twistedcompat.require()
        await self._lock_data_folder()
        self.certificate = await self._load_certificate()
        self.store = await self._open_store()
        if self._stopping:
            return
        if self.config.kerberos is not None:  # issue 19: refuse to start with a bad keytab
            from smartsyncd.auth.negotiate import check_keytab

            log.info("single sign-on: {what}", what=await self._run_blocking(
                check_keytab, self.config.kerberos))
        site = self._build_site(self.store)
        self._start_deadline_timer(self.store)
        await self._listen_admin(self.certificate)
        if self._stopping:
            return
        await self._listen(site, self.certificate)

    # -- start steps ------------------------------------------------------------------------

    async def _lock_data_folder(self) -> None:
        data_dir = self.config.data_dir
        self.folder_lock = await self._run_blocking(lock_data_folder, data_dir)
        if await self._run_blocking(tighten_data_dir, data_dir):
            log.warn("the data folder {data_dir} was open to other accounts; it is now 0700",
                     data_dir=data_dir)

    async def _load_certificate(self) -> CertificateInfo:
        """The listener's certificate: named in the endpoint string, the configured files, or
        the self-signed pair (made on first start); warns about secrets others can read."""
        config = self.config
        listen_files = endpoint_tls_files(config.listen)
        info: CertificateInfo
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
        secrets: list[tuple[str, str | None]] = [("TLS private key", info.key_path)]
        if config.ldap is not None:
            secrets.append(("LDAP bind password file", config.ldap.bind_password_file))
        if config.kerberos is not None:  # issue 19
            secrets.append(("Kerberos keytab", config.kerberos.keytab))
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
        return info

    async def _open_store(self) -> DaemonStore:
        from smartsyncd.storage.sqlite import open_server_store

        config = self.config
        return await open_server_store(
            config.data_dir,
            reactor=self._reactor,
            database_url=config.database_url,
            storage_path=config.storage_path,
            volumes=dict(config.volumes),
            now=self._now,
        )

    def _build_sessions(self, store: ServerStore) -> SessionManager:
        from smartsyncd.auth.ratelimit import LoginRateLimiter
        from smartsyncd.auth.sessions import SessionManager
        from smartsyncd.auth.throttle import AccountThrottle

        config = self.config
        window = config.login_failure_window_minutes * 60.0
        limiter = LoginRateLimiter(
            self._reactor,
            per_user=config.login_failures_per_user,
            per_address=config.login_failures_per_address,
            user_window=window,  # the configured window holds here too, not a fixed 5 minutes
        )
        throttle = AccountThrottle(
            store, self._reactor, limit=config.login_failures_per_user, window=window
        )
        return SessionManager(
            store,
            build_backends(config, store, self._reactor, self._run_blocking),
            self._reactor,
            limiter,
            lifetime=timedelta(days=config.session_lifetime_days),
            # group membership is the directory's: local accounts have none to re-read
            refresh_interval=timedelta(
                minutes=config.ldap.refresh_interval if config.ldap else 15.0
            ),
            throttle=throttle,
            max_age=timedelta(days=config.session_max_days),
            password_sign_in=config.password_sign_in,
        )

    def _start_notify_bridge(self, notifier: ChangeNotifier) -> None:
        """With PostgreSQL metadata: commits on the other daemons wake the long-polls waiting
        here. The bridge is a child service: this service's stop stops it."""
        if self.config.database_url is None or not uses_postgres(self.config):
            return
        from smartsyncd.service.pgnotify import PgNotifyBridge

        bridge = PgNotifyBridge(self.config.database_url, notifier.notify, self._reactor)
        self.notify_bridge = bridge
        bridge.setServiceParent(self)  # started at once: this service is running

    def _start_deadline_timer(self, store: ServerStore) -> None:
        """The assembly-deadline timer (``service/deadlines.py``), a child service: re-armed
        from the stored deadlines at every start; several daemons finalize each one once."""
        from smartsyncd.service.deadlines import DeadlineTimer
        from smartsyncd.storage.lifecycle_store import lifecycle_of

        lifecycle = lifecycle_of(store)
        lifecycle.firm_min_retention_days = self.config.min_retention_days
        timer = DeadlineTimer(lifecycle, self._reactor, self.config.deadline_check_seconds)
        self.deadline_timer = timer
        timer.setServiceParent(self)

    def _build_site(self, daemon_store: ServerStore) -> Site:
        from smartsyncd.auth.grantees import Directory
        from smartsyncd.web.app import SyncAPI, make_site
        from smartsyncd.web.diskspace import disk_report
        from smartsyncd.web.limits import ClientLimits
        from smartsyncd.web.meteredstore import MeteredStore
        from smartsyncd.web.notify import ChangeNotifier

        config = self.config
        store = cast(ServerStore, MeteredStore(daemon_store, self.metrics))
        self.metered_store = store
        self.sessions = sessions = self._build_sessions(store)
        self.notifier = notifier = ChangeNotifier(self._reactor)
        self._start_notify_bridge(notifier)
        folders = self.storage_folders()
        warn = config.warn_free_mb << 20
        api = SyncAPI(
            store, sessions, notifier, self._reactor, self._run_blocking,
            disk=lambda: self._extra_health(self._run_blocking(disk_report, folders, warn)),
            directory=cast("Directory | None", sessions.backend("ldap")),  # grants by name
        )
        self.api = api
        if config.kerberos is not None:  # issue 19: single sign-on
            from smartsyncd.auth.negotiate import NegotiateSignIn

            directory = sessions.backend("ldap")
            assert directory is not None  # load_config requires ldap with [kerberos]
            api.sso = NegotiateSignIn(config.kerberos, sessions, directory, self._run_blocking)
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
        self._adapt_site(site, api)
        self._meter(site, api.app.url_map, store, notifier)
        if config.per_user_kbps is not None:  # [limits] per_user_kbps: web/usershaping.py
            from smartsyncd.web.usershaping import UserShaper

            shaper = UserShaper(
                config.per_user_kbps * 1024, self._reactor, self.metrics.user_throttled.inc
            )
            api.authorizer.on_session = lambda request, session: shaper.bind(
                request, session.principal
            )
            self.shaper = shaper
        return site

    def _branch_state(self) -> BranchState | None:
        """For the status page: a branch office's link and lag (service/branch.py); None here."""
        return None

    async def _extra_health(self, disk: Awaitable[dict[str, object]]) -> dict[str, object]:
        """/healthz's checks beyond the store's: the free space (a branch adds its link)."""
        return await disk

    def _adapt_site(self, site: Site, api: SyncAPI) -> None:
        """A hook before the site is metered (service/branch.py puts central in front)."""

    def _meter(self, site: Site, url_map: Map, store: ServerStore, notifier: ChangeNotifier) -> None:
        """Count the site's requests, track those in flight (the drain), and tell the metrics
        where to read the values they show when scraped (web/metrics.py)."""
        from smartsyncd.storage.maintenance import read_record
        from smartsyncd.web.diskspace import free_space
        from smartsyncd.web.metrics import RouteOf, meter_site

        route_of = RouteOf(url_map)
        self.inflight = inflight = InFlight(route_of)
        meter_site(site, self.metrics, route_of, inflight)
        folders = self.storage_folders()
        sources = self.metrics.sources
        sources.parked = notifier.total_waiting
        sources.connections = getattr(site, "client_addresses").open_connections  # noqa: B009
        sources.draining = lambda: inflight.draining
        sources.inflight = inflight
        sources.sessions = store.list_sessions
        sources.free_space = lambda: self._run_blocking(free_space, folders)
        sources.values["free_warn_bytes"] = self.config.warn_free_mb << 20
        sources.maintenance = lambda: self._run_blocking(read_record, self.config.data_dir)

    def storage_folders(self) -> dict[str, str]:
        """The folders whose free space /healthz and the metrics report: ``chunks`` is the
        default volume, ``volume:NAME`` each of ``[storage] volumes``."""
        config = self.config
        return {
            "data": config.data_dir,
            "chunks": config.storage_path or os.path.join(config.data_dir, "chunks"),
            **{f"volume:{name}": path for name, path in config.volumes},
        }

    async def _listen_admin(self, info: CertificateInfo) -> None:
        """With ``[admin] listen``: the admin endpoint (service/admin.py), as a child."""
        if self.config.admin_listen is None:
            return
        from smartsyncd.service.admin import AdminListener, status_page, status_sources
        from smartsyncd.web.adminsite import make_admin_site
        from smartsyncd.web.diskspace import free_space

        assert self.sessions is not None and self.metered_store is not None
        folders = self.storage_folders()
        sources = status_sources(
            self.config, self.metrics, lambda: self.inflight,
            lambda: self._run_blocking(free_space, folders), list(folders), self._branch_state,
        )
        page = status_page(self.config, self.metered_store, self.sessions, self._reactor, sources)
        admin = AdminListener(
            self._reactor, self.config.admin_listen,
            make_admin_site(self.metrics, self._reactor, page), info.cert_path, info.key_path,
        )
        self.admin = admin
        admin.setServiceParent(self)  # started at once: this service is running
        assert admin.listening is not None
        await admin.listening

    async def _listen(self, site: Site, info: CertificateInfo) -> None:
        config = self.config
        endpoint = batching_tls_endpoint(
            self._reactor,
            tls_endpoint_string(config.listen, info.cert_path, info.key_path),
            proxy_protocol=config.proxy_protocol,
        )
        restrict_ciphers(endpoint)
        self.endpoint = endpoint
        factory: Any = site
        if self.shaper is not None:
            from smartsyncd.web.usershaping import UserShapingFactory

            factory = UserShapingFactory(site, self.shaper)
        self.port = port = await endpoint.listen(factory)
        if self._stopping:
            return
        host: Any = port.getHost()
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

    async def _drain(self) -> None:
        """Answer the parked long-polls, let the requests in flight finish (web/inflight.py)."""
        if self.notifier is None:
            return  # the site was never built: nothing was served
        seconds = self.config.drain_seconds
        self.notifier.closing = True
        woken = self.notifier.wake_all()
        live = len(self.inflight.live())
        log.info(
            "draining: {requests} requests in flight ({woken} parked long-polls answered), "
            "up to {seconds} s",
            requests=live, woken=woken, seconds=seconds,
        )
        cut = await self.inflight.drain(self._reactor, seconds)
        if cut:
            self.metrics.drains.inc(cut)
            log.warn(
                "drain time ({seconds} s) ran out: closed {cut} connections with a request "
                "still running (their clients resend it)",
                seconds=seconds, cut=cut,
            )
        else:
            log.info("drained: every request in flight was answered")

    def _start_failed(self, failure: Failure) -> None:
        if self._stopping:
            log.info("start interrupted by shutdown: {why}", why=failure.getErrorMessage())
            return
        if failure.check(*_OPERATOR_ERRORS):
            log.critical("smartsyncd could not start: {why}", why=_reason(failure))
        else:
            log.failure("smartsyncd could not start: {why}", failure, why=_reason(failure))
        if self._on_fatal is not None:
            self._on_fatal()

    # -- SIGHUP ---------------------------------------------------------------------------

    async def reload_certificate(self) -> str:
        """Put the certificate and key files into the listener's TLS context (a reload step).

        Raises (and the listener keeps its certificate) when they do not parse or match."""
        from smartsyncd.service.tlsreload import reload_listener_certificate

        if self.certificate is None or self.endpoint is None:
            return "not listening yet: nothing to reload"
        info, changed = await reload_listener_certificate(
            self.endpoint, self.certificate, self._run_blocking
        )
        self.certificate = info
        if not changed:
            return f"unchanged; SHA-256 fingerprint {info.fingerprint}"
        log.info(
            "TLS certificate SHA-256 fingerprint: {fingerprint}",
            fingerprint=info.fingerprint,
            cert_path=info.cert_path,
        )
        return f"loaded {info.cert_path}; SHA-256 fingerprint {info.fingerprint}"

    # -- stop -----------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.started is not None:
            # Let an unfinished start reach a point where its resources are known.
            await self.started
        if self.port is not None:
            port, self.port = self.port, None
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        if self._port_file is not None:
            try:
                os.unlink(self._port_file)
            except FileNotFoundError:
                pass
        await self._drain()
        await super().stopService()  # the children, in reverse order: admin, timer, the bridge
        if self.api is not None:  # read events still buffered (web/readaudit.py)
            api, self.api = self.api, None
            await api.read_audit.flush()
        if self.notify_bridge is not None:
            bridge, self.notify_bridge = self.notify_bridge, None
            bridge.disownServiceParent()  # a next start adds a new one
        if self.admin is not None:
            admin, self.admin = self.admin, None
            admin.disownServiceParent()
        if self.deadline_timer is not None:
            timer, self.deadline_timer = self.deadline_timer, None
            timer.disownServiceParent()
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
