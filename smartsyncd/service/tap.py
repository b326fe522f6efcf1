"""``twistd smartsync``: command-line options and the service tree (wiring only).

The tree: the SIGHUP ``ReloadService`` (steps: reopen the JSON log, reload the TLS
certificate), an optional JSON log observer, the CPU thread pool (2 threads: chunk
verification, password hashing), and ``SmartsyncServer`` (store, web application, TLS
listener; with PostgreSQL metadata its child ``PgNotifyBridge``). They stop in reverse order,
one after the other (service/ordered.py): the server drains first. A start that fails stops the
reactor and makes twistd exit with status 1.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING, cast

from twisted.application.service import MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from smartsyncd.service.config import ServerConfig, default_config_file, load_config
from smartsyncd.service.hardening import private_umask
from smartsyncd.service.limits import raise_open_file_limit
from smartsyncd.service.logs import JsonLogService
from smartsyncd.service.ordered import OrderedMultiService
from smartsyncd.service.pools import ThreadPoolService
from smartsyncd.service.reload import ReloadService
from smartsyncd.service.server import SmartsyncServer

log = Logger(namespace="smartsyncd.service")

if TYPE_CHECKING:
    from smartsyncd.service.reactor import DaemonReactor


class Options(usage.Options):
    synopsis = "[--config FILE] [--data-dir DIR] [--listen ENDPOINT] [--port-file FILE]"
    longdesc = (
        "Run the smartsyncd sync server. With no options: data in ./data, SQLite metadata, a "
        "self-signed certificate made on first start, listening on ssl:8443. Command-line "
        "options override the config file (see conf/smartsync.ini)."
    )
    optParameters = [
        ["config", "c", None, "config file (ini; see conf/smartsync.ini; default "
         "/etc/smartsyncd/smartsync.ini when it exists and no --data-dir is given)"],
        ["data-dir", "d", None, "data folder (default: ./data)"],
        ["listen", "l", None, "Twisted endpoint string, TLS only (default: ssl:8443)"],
        ["port-file", None, None, "write the bound port number here once listening"],
    ]
    optFlags = [
        ["allow-root", None, "run as root (refused otherwise: use a service account, "
         "conf/systemd/smartsyncd.service)"],
    ]

    server_config: ServerConfig

    def postOptions(self) -> None:
        self.server_config = load_config(
            default_config_file(self["config"], self["data-dir"]),
            data_dir=self["data-dir"],
            listen=self["listen"],
        )
        if self["port-file"] is not None:
            self["port-file"] = os.path.abspath(self["port-file"])
        if running_as_root() and not self["allow-root"]:
            raise usage.UsageError(
                "refusing to run as root: the daemon faces the internet and holds the firm's "
                "files; run it as a service account (conf/systemd/smartsyncd.service), or pass "
                "--allow-root to do so anyway"
            )


def running_as_root() -> bool:
    """True when the effective user is root (never on systems without user ids)."""
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def _exit_after_shutdown(reactor: DaemonReactor, code: int = 1) -> None:
    """Stop the reactor; when twistd has cleaned up (pid file, logs), exit with ``code``.

    twistd always exits 0 after a normal reactor stop; a failed start must not look like a
    clean shutdown to systemd or a test harness.
    """

    def hard_exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not hide the exit code
                pass
        os._exit(code)

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:  # already stopping
            pass

    atexit.register(hard_exit)
    # twistd starts the services before it runs the reactor: a start that fails at once
    # (before its first wait) stops the reactor as soon as it runs; otherwise now.
    reactor.callWhenRunning(stop)


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor as global_reactor

    reactor = cast("DaemonReactor", global_reactor)
    private_umask()  # before twistd opens its log and anything is written (service/hardening.py)
    open_files = raise_open_file_limit()
    if open_files is not None and open_files[1] > open_files[0]:
        log.info("open-file limit raised from {before} to {after}", before=open_files[0], after=open_files[1])
    config = options.server_config
    top = OrderedMultiService()  # stopped last first: the server drains with the pool running
    reload = ReloadService(reactor)
    reload.setServiceParent(top)
    if config.json_log_file is not None:
        json_log = JsonLogService(config.json_log_file)
        json_log.setServiceParent(top)
        reload.add_step("json log", json_log.reopen_and_describe)
    cpu = ThreadPoolService(reactor, name="cpu", min_threads=0, max_threads=2)
    cpu.setServiceParent(top)
    server_class = SmartsyncServer
    if config.branch_central is not None:  # issue 18: a branch office (service/branch.py)
        from smartsyncd.service.branch import BranchServer

        server_class = BranchServer
    server = server_class(
        config,
        reactor,
        cpu.run_blocking,
        port_file=options["port-file"],
        on_fatal=lambda: _exit_after_shutdown(reactor),
    )
    server.setServiceParent(top)
    reload.add_step("tls certificate", server.reload_certificate)
    return top
