"""``BranchServer``: the daemon of a branch office (issue 18, docs/branch-offices.md).

The same service as ``SmartsyncServer`` (``service/server.py``) with these steps changed:

- the store is the hot standby of the central database, opened read-only, refused unless
  ``pg_is_in_recovery()`` (``storage/standby.open_standby_store``), with the chunk cache;
- instead of the PostgreSQL NOTIFY bridge (notifications do not reach a standby), a
  ``ReplicaWatcher`` (``web/branchreplay.py``) polls the standby's replay position and wakes
  the long-polls behind an engagement head that moved; it also answers the forwarded commits'
  waits and gives the replication lag;
- the site gets central in front (``web/branch.py``): its request factory streams writes to
  central, its root answers reads locally;
- the assembly-deadline timer does not run here (finalizing is a write: central does it);
- with ``[branch] credential_file``, a ``Prefetcher`` (``service/prefetch.py``) keeps the
  engagements the branch carries in its cache, woken by the replay watcher when a head moves;
  ``BranchPrefetch`` is its source: the carry list and heads from the standby, the chunks
  through the ``ChunkFiller`` users' fetches use, with the branch's credential;
- /healthz reports ``branch``: the link to central (probed every ``PROBE_INTERVAL_S``), the
  lag, the prefetch's state and the cache's size;
- with the credential, the users' read events are spooled (``storage/readspool.py``) and a
  ``ReadForwarder`` (``service/readforward.py``) sends them to central's audit trail;
- with ``[branch] cache_max_bytes``, a ``CacheTrimmer`` (``service/cachetrim.py``) keeps the
  cache under it, never trimming a carried engagement's head; the metric ``smartsync_branch_replication_lag_seconds`` gives the lag too, and the
  status page (``_branch_state``) shows both.

How the branch trusts central is configured like the client's trust: ``[branch]
central_fingerprint`` pins the leaf certificate, ``central_ca`` verifies the chain and host
name, neither uses the system's roots (``client/trust.py``'s policies).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from smartsyncd.auth.branchcred import header_value, read_credential, secret_hash
from smartsyncd.service.cachetrim import CacheTrimmer
from smartsyncd.service.prefetch import Prefetcher
from smartsyncd.service.readforward import ReadForwarder
from smartsyncd.service.server import DaemonStore, SmartsyncServer
from smartsyncd.storage.branches import CarriedEngagement, carried_engagements, head_chunks
from smartsyncd.storage.readspool import ReadSpool
from smartsyncd.web.branchreplay import ReplicaWatcher
from smartsyncd.web.central import CentralLink

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from twisted.web.server import Site

    from smartsyncd.service.config import ServerConfig
    from smartsyncd.storage.api import ServerStore
    from smartsyncd.web.app import SyncAPI
    from smartsyncd.web.branch import ChunkFiller
    from smartsyncd.web.notify import ChangeNotifier
    from smartsyncd.web.statushtml import BranchState

log = Logger(namespace="smartsyncd.branch")

PROBE_INTERVAL_S = 5.0


def central_trust(config: ServerConfig) -> IPolicyForHTTPS:
    """The TLS policy for central, as the client pins (``client/trust.py``)."""
    from smartsyncd.client.trust import PinnedPolicy, SystemTrustPolicy, ca_policy

    if config.branch_central_fingerprint:
        return cast(IPolicyForHTTPS, PinnedPolicy(config.branch_central_fingerprint))
    if config.branch_central_ca:
        return cast(IPolicyForHTTPS, ca_policy(config.branch_central_ca))
    return cast(IPolicyForHTTPS, SystemTrustPolicy())


class _LagCollector(Collector):
    def __init__(self, server: BranchServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        watcher, central = server.replica, server.central
        if watcher is not None and watcher.lag_seconds is not None:
            yield GaugeMetricFamily(
                "smartsync_branch_replication_lag_seconds",
                "How far the branch's standby is behind the central database (0 when it has"
                " replayed everything it received)", value=watcher.lag_seconds,
            )
        if central is not None:
            yield GaugeMetricFamily(
                "smartsync_branch_central_reachable", "1 while the central server answers",
                value=1 if central.reachable else 0,
            )


class BranchPrefetch:
    """The prefetch's source (``service/prefetch.PrefetchSource``) at a branch."""

    def __init__(self, store: Any, filler: ChunkFiller, secret: str) -> None:
        self._store = store  # storage/standby.BranchStore
        self._filler = filler
        self._hash = secret_hash(secret)
        self._headers = Headers({b"authorization": [header_value(secret)]})

    async def carried(self) -> list[CarriedEngagement]:
        found: list[CarriedEngagement] = await self._store.run_read(carried_engagements, self._hash)
        return found

    async def lacking(self, engagement: CarriedEngagement) -> tuple[int, list[str]]:
        head, refs = await self._store.run_read(head_chunks, engagement.id)
        return head, self._store.cache.lacking(engagement.id, [r.hash for r in refs])

    async def protected(self) -> tuple[set[int], set[tuple[int, str]]]:
        """What a cache trim must keep: the carried engagements and their heads' chunks."""
        carried = await self.carried()
        keep: set[tuple[int, str]] = set()
        for engagement in carried:
            _, refs = await self._store.run_read(head_chunks, engagement.id)
            keep.update((engagement.id, r.hash) for r in refs)
        return {e.id for e in carried}, keep

    async def fetch(self, engagement: CarriedEngagement, hashes: Sequence[str]) -> int:
        uri = f"/v1/engagements/{quote(engagement.name, safe='')}/chunks/fetch".encode("ascii")
        return await self._filler.fill_hashes(engagement.id, uri, self._headers, hashes)


async def _nothing_carried() -> tuple[set[int], set[tuple[int, str]]]:
    return set(), set()


class BranchServer(SmartsyncServer):
    """A branch office's daemon (see the module docstring)."""

    def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.replica: ReplicaWatcher | None = None
        self.central: CentralLink | None = None
        self._probe: LoopingCall | None = None
        self.prefetch: Prefetcher | None = None
        self.trimmer: CacheTrimmer | None = None
        self.read_forwarder: ReadForwarder | None = None
        self._secret: str | None = None
        self.metrics.registry.register(_LagCollector(self))

    async def _open_store(self) -> DaemonStore:
        from smartsyncd.storage.standby import open_standby_store

        config = self.config
        assert config.database_url is not None  # load_config requires it with [branch]
        log.info("branch office of {central}", central=config.branch_central)
        if config.branch_credential_file is not None:  # refuse to start on a bad one
            self._secret = await self._run_blocking(read_credential, config.branch_credential_file)
        store = await open_standby_store(
            config.database_url, data_dir=config.data_dir, reactor=self._reactor,
            storage_path=config.storage_path, now=self._now,
        )
        if self._secret is not None:  # read events wait here for central (storage/readspool.py)
            store.spool = spool = ReadSpool(os.path.join(config.data_dir, "read-spool"))
            waiting = await self._run_blocking(spool.prepare)
            log.info("{n} batch(es) of read events wait for central", n=waiting)
        return cast(DaemonStore, store)

    def _start_notify_bridge(self, notifier: ChangeNotifier) -> None:
        assert self.store is not None

        def moved(engagement_id: int, head: int) -> None:
            notifier.notify(engagement_id, head)
            if self.prefetch is not None:
                self.prefetch.wake()

        self.replica = ReplicaWatcher(cast(Any, self.store), moved, self._reactor)
        self.replica.start()

    def _start_deadline_timer(self, store: ServerStore) -> None:
        """Finalizing at a deadline is a write: the central daemons do it."""

    def _adapt_site(self, site: Site, api: SyncAPI) -> None:
        from smartsyncd.web.branch import Branch, BranchRoot, branch_request_factory

        config = self.config
        assert config.branch_central is not None and self.replica is not None
        self.central = central = CentralLink(
            self._reactor, config.branch_central, central_trust(config),
            timeout=config.request_timeout,
        )
        branch = Branch(
            central=central, authorizer=api.authorizer, replica=self.replica, store=self.store,
            run_blocking=self._run_blocking, limits=api.limits, clock=self._reactor,
            commit_wait=config.branch_commit_wait_seconds,
        )
        api.authorizer.branch_gate = None  # a branch credential is for central only
        root = BranchRoot(branch, site.resource)
        site.resource = root
        source = None if self._secret is None else BranchPrefetch(self.store, root.filler, self._secret)
        if source is not None:
            rate = config.branch_prefetch_kbps
            self.prefetch = Prefetcher(source, self._reactor, rate=None if rate is None else rate * 1024.0)
            self.prefetch.setServiceParent(self)
        if self._secret is not None and cast(Any, self.store).spool is not None:
            self.read_forwarder = ReadForwarder(
                cast(Any, self.store).spool, central, header_value(self._secret), self._reactor,
                self._run_blocking,
            )
            self.read_forwarder.setServiceParent(self)
        if config.branch_cache_max_bytes is not None:
            self.trimmer = CacheTrimmer(
                self.store, config.branch_cache_max_bytes, self._reactor,
                source.protected if source is not None else _nothing_carried,
            )
            root.filler.on_cached = self.trimmer.poke
            self.trimmer.setServiceParent(self)
        site.requestFactory = branch_request_factory(branch)  # type: ignore[assignment]
        probe = LoopingCall(lambda: Deferred.fromCoroutine(central.probe()))
        probe.clock = self._reactor
        self._probe = probe
        probe.start(PROBE_INTERVAL_S, now=True)

    def _branch_state(self) -> BranchState:
        from smartsyncd.web.statushtml import BranchState

        central, watcher = self.central, self.replica
        return BranchState(
            central_reachable=central is not None and central.reachable,
            lag_seconds=watcher.lag_seconds if watcher is not None else None,
        )

    async def _extra_health(self, disk: Awaitable[dict[str, object]]) -> dict[str, object]:
        checks = dict(await disk)
        central, watcher = self.central, self.replica
        reachable = central is not None and central.reachable
        checks["branch"] = {
            "central": "reachable" if reachable else "unreachable",
            "replication_lag_seconds": watcher.lag_seconds if watcher is not None else None,
            "prefetch": None if self.prefetch is None else self.prefetch.report(),
            "cache_bytes": cast(Any, self.store).cache.total_bytes,
            "read_events": None if self.read_forwarder is None else self.read_forwarder.state,
            "cache_max_bytes": self.config.branch_cache_max_bytes,
        }
        if not reachable:
            warnings = list(cast(list[str], checks.get("warnings") or []))
            warnings.append("branch: central unreachable (reads work, writes wait)")
            checks["warnings"] = warnings
        return checks

    async def _stop(self) -> None:
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        await super()._stop()
        if self.replica is not None:
            await self.replica.stop()
        if self.central is not None:
            await self.central.close()
