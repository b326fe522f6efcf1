"""Prometheus metrics of one daemon (``smartsync_*``), served on the admin endpoint.

``SyncMetrics`` owns a ``CollectorRegistry`` of its own (never the process-wide one), so several
daemons in one process (tests) keep separate counts. What it counts comes from three places:

- every answered request, in ONE place: ``meter_site`` hooks the Site's ``log`` (called by
  ``Request.finish`` for every request, long-polls included) and its request factory (which
  stamps the start time and registers the request in ``InFlight``, web/inflight.py). Route
  labels are the Klein rule templates (``/v1/engagements/<eng>/commit``), so an engagement name
  never becomes a label; a path no rule matches counts as ``other``;
- the store, through ``MeteredStore`` (web/meteredstore.py): commits, conflicts, store errors;
- values read when scraped (``Sources``): parked long-polls, open connections, requests in
  flight, whether the daemon is draining, active sessions (read from the store by ``refresh``).

Sign-in failures and throttles are the answers of ``POST /v1/login`` (401 and 429).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.logger import Logger
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

import smartsyncd
from smartsyncd.core.errors import SyncError
from smartsyncd.storage.api import SessionRecord
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.inflight import InFlight
from smartsyncd.web.refusals import RecentRefusals

log = Logger(namespace="smartsyncd.web")

LOGIN_ROUTE = "/v1/login"
OTHER_ROUTE = "other"
# Request latency buckets (seconds): a JSON answer takes milliseconds, a large upload or a
# parked long-poll up to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ROUTE_CACHE = 4096  # (method, path) -> route; cleared when full
_ENGAGEMENTS = b"/v1/engagements/"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class ScrapedValues(TypedDict, total=False):
    """What ``refresh`` read before a scrape (and the free-space warning level, set once)."""

    active_sessions: int
    free_space: dict[str, tuple[int, int]]  # folder -> (free bytes, size bytes)
    maintenance: Mapping[str, object]  # DATA/maintenance.json
    free_warn_bytes: int


@dataclass
class Sources:
    """What the daemon reads when scraped; filled in once the site is built."""

    parked: Callable[[], int] | None = None
    connections: Callable[[], int] | None = None
    draining: Callable[[], bool] | None = None
    inflight: InFlight | None = None
    sessions: Callable[[], Awaitable[Sequence[SessionRecord]]] | None = None
    free_space: Callable[[], Awaitable[dict[str, tuple[int, int]]]] | None = None
    maintenance: Callable[[], Awaitable[Mapping[str, object]]] | None = None  # storage/maintenance.py
    values: ScrapedValues = field(default_factory=lambda: ScrapedValues())


class _ScrapeCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self._sources
        yield _gauge("smartsync_longpolls_parked", "Long-polls parked, waiting for a change",
                     s.parked() if s.parked else 0)
        yield _gauge("smartsync_open_connections", "Client connections open on the public listener",
                     s.connections() if s.connections else 0)
        yield _gauge("smartsync_draining", "1 while the daemon drains before it stops (SIGTERM)",
                     1 if s.draining and s.draining() else 0)
        if "active_sessions" in s.values:
            yield _gauge("smartsync_active_sessions", "Sessions signed in and not expired",
                         s.values["active_sessions"])
        inflight = GaugeMetricFamily(
            "smartsync_requests_in_flight", "Requests received and not yet answered, by route",
            labels=["route"],
        )
        uploads = 0
        if s.inflight is not None:
            for route, n in sorted(s.inflight.by_route().items()):
                inflight.add_metric([route], n)
            uploads = s.inflight.uploads()
        yield inflight
        yield _gauge("smartsync_uploads_in_progress", "Chunk uploads whose body is arriving", uploads)
        free = s.values.get("free_space")
        if free is not None:
            free_bytes = GaugeMetricFamily(
                "smartsync_store_free_bytes", "Free space of each storage folder", labels=["folder"]
            )
            total = GaugeMetricFamily(
                "smartsync_store_size_bytes", "Size of the file system of each storage folder",
                labels=["folder"],
            )
            for folder, (avail, size) in sorted(free.items()):
                free_bytes.add_metric([folder], avail)
                total.add_metric([folder], size)
            yield free_bytes
            yield total
        yield from _maintenance(s.values.get("maintenance") or {})
        if "free_warn_bytes" in s.values:
            yield _gauge("smartsync_store_free_warn_bytes", "Free space below which /healthz warns "
                         "([storage] warn_free_mb)", s.values["free_warn_bytes"])


def _maintenance(record: Mapping[str, object]) -> Iterator[Metric]:
    """The last ``smartsync-admin fsck`` and ``gc`` (DATA/maintenance.json), when there were."""
    try:
        fsck = record.get("fsck")
        if isinstance(fsck, dict):
            yield _gauge("smartsync_fsck_last_run_timestamp_seconds",
                         "When the last smartsync-admin fsck finished", _number(fsck, "finished_at"))
            yield _gauge("smartsync_fsck_last_problems", "Problems the last fsck found",
                         _number(fsck, "problems"))
        gc = record.get("gc")
        if isinstance(gc, dict) and gc:
            runs = list(gc.values())
            yield _gauge("smartsync_gc_last_run_timestamp_seconds",
                         "When the last smartsync-admin gc finished",
                         max(_number(r, "finished_at") for r in runs))
            for key, text in (("bytes_freed", "Bytes"), ("chunks_removed", "Chunks"),
                              ("packs_removed", "Pack files")):
                yield _gauge(f"smartsync_gc_last_{key}",
                             f"{text} the last gc of each engagement removed, summed",
                             sum(_number(r, key) for r in runs))
    except (KeyError, TypeError, ValueError):
        return  # a damaged record shows nothing rather than failing the scrape


def _number(entry: object, key: str) -> float:
    """``float(entry[key])``, raising what it raises for a damaged record (not a mapping, no
    such key, not a number)."""
    if not isinstance(entry, dict):
        raise TypeError(f"not an object: {entry!r}")
    value = entry[key]
    if not isinstance(value, int | float | str):
        raise TypeError(f"{key} is not a number: {value!r}")
    return float(value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class RequestStats(Collector):
    """Per-request counts kept in plain dicts on the reactor thread and turned into metric
    families when scraped: this runs for every request (10,000 long-poll answers after one
    commit), and prometheus_client's labelled children cost several times more per call
    (locks, per-bucket objects)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}  # per route: count per bucket, +Inf last
        self.sums: dict[str, float] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, duration: float, received: int,
                sent: int) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.buckets.get(route)
        if buckets is None:
            buckets = self.buckets[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[route] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, duration)] += 1  # "le": bound included
        self.sums[route] += duration
        if received:
            self.bytes_in[route] = self.bytes_in.get(route, 0) + received
        if sent:
            self.bytes_out[route] = self.bytes_out.get(route, 0) + sent

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "smartsync_requests", "HTTP requests answered, by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "smartsync_request_duration_seconds",
            "Time from a request's first line to its answer, by route", labels=["route"],
        )
        bounds = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        for route, counts in sorted(self.buckets.items()):
            cumulative = list(accumulate(counts))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)),
                               self.sums[route])
        yield latency
        for name, text, values in (
            ("smartsync_request_body_bytes",
             "Request body bytes received, by route (uploads: the chunk route)", self.bytes_in),
            ("smartsync_response_body_bytes",
             "Response body bytes sent, by route (pulls: the chunk fetch route)", self.bytes_out),
        ):
            family = CounterMetricFamily(name, text, labels=["route"])
            for route, n in sorted(values.items()):
                family.add_metric([route], n)
            yield family


class SyncMetrics:
    """The daemon's metrics; ``render`` gives the Prometheus text format."""

    def __init__(self, seconds: Callable[[], float]) -> None:
        self.seconds = seconds
        self.registry = CollectorRegistry()
        self.sources = Sources()
        self.refusals = RecentRefusals()  # the status page's "recent refusals and errors"
        r = self.registry
        self.request_stats = RequestStats()
        r.register(self.request_stats)
        self.signin_failures = Counter(
            "smartsync_signin_failures", "Sign-ins refused for a wrong name or password", registry=r
        )
        self.signin_throttled = Counter(
            "smartsync_signin_throttled", "Sign-ins refused because of too many failures",
            registry=r,
        )
        self.commits = Counter(
            "smartsync_commits", "Commits: written, replayed (a batch seen before) or empty",
            ["outcome"], registry=r,
        )
        self.committed_files = Counter(
            "smartsync_committed_files", "Change records written by commits", registry=r
        )
        self.conflicts = Counter(
            "smartsync_conflicts", "Edits kept as conflict copies", registry=r
        )
        self.store_errors = Counter(
            "smartsync_store_errors", "Store operations that failed: unavailable (database or "
            "chunk folder), full (no space), internal", ["operation", "error"], registry=r,
        )
        self.user_throttled = Counter(
            "smartsync_user_throttled_seconds", "Time connections were held back by the per-user"
            " bandwidth limit ([limits] per_user_kbps), summed over connections", registry=r,
        )
        self.drains = Counter(
            "smartsync_drain_cut_requests", "Requests still running when the drain time ran out "
            "(their connections were closed)", registry=r,
        )
        info = Gauge("smartsync_info", "The daemon's version", ["version"], registry=r)
        info.labels(smartsyncd.__version__).set(1)
        started = Gauge("smartsync_start_time_seconds", "When the daemon started (Unix time)",
                        registry=r)
        started.set(seconds())
        r.register(_ScrapeCollector(self.sources))

    def observe_request(self, route: str, method: str, status: int, duration: float,
                        received: int, sent: int) -> None:
        """Count one answered request."""
        self.request_stats.observe(route, method, status, duration, received, sent)
        if route == LOGIN_ROUTE:
            if status == 401:
                self.signin_failures.inc()
            elif status == 429:
                self.signin_throttled.inc()

    async def refresh(self) -> None:
        """Read what needs the store before a scrape (active sessions, free space)."""
        s = self.sources
        now = datetime.fromtimestamp(self.seconds(), UTC)
        if s.sessions is not None:
            try:
                sessions = await s.sessions()
            except Exception:  # noqa: BLE001 - a scrape must answer; the store error is counted
                s.values.pop("active_sessions", None)
            else:
                s.values["active_sessions"] = sum(1 for x in sessions if x.expires_at > now)
        if s.free_space is not None:
            try:
                s.values["free_space"] = await s.free_space()
            except OSError:
                s.values.pop("free_space", None)
        if s.maintenance is not None:
            s.values["maintenance"] = await s.maintenance()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


class RouteOf:
    """``(method, path) -> route template`` from the application's werkzeug ``Map``."""

    def __init__(self, url_map: Map) -> None:
        self._adapter = url_map.bind("localhost")
        self._cache: dict[tuple[bytes, bytes], str] = {}

    def __call__(self, method: bytes, path: bytes) -> str:
        # The engagement's segment is a variable of every route under it: with it replaced,
        # the cache holds one entry per route shape, however many engagements there are.
        if path.startswith(_ENGAGEMENTS):
            parts = path.split(b"/", 4)
            if len(parts) > 3 and parts[3]:
                parts[3] = b"x"  # any name the engagement converter accepts
                path = b"/".join(parts)
        key = (method, path)
        route = self._cache.get(key)
        if route is not None:
            return route
        try:
            rule, _ = self._adapter.match(
                path.decode("utf-8", "replace"), method=method.decode("ascii", "replace"),
                return_rule=True,
            )
            # the label names the variable, not its URL converter: /v1/engagements/<eng>/...
            route = _CONVERTER.sub(r"<\1>", str(rule.rule))
        except (HTTPException, SyncError):  # no route, or a segment its converter refuses
            route = OTHER_ROUTE
        if len(self._cache) >= _ROUTE_CACHE:
            self._cache.clear()
        self._cache[key] = route
        return route


def meter_site(site: Any, metrics: SyncMetrics, route_of: Callable[[bytes, bytes], str],
               inflight: InFlight) -> None:
    """Count every request ``site`` answers (the one place requests are counted; see the
    module docstring) and track the ones in flight for the drain."""
    seconds = metrics.seconds
    make_request = site.requestFactory
    site_log = site.log

    def request_factory(*args: object, **kwargs: object) -> Request:
        request = make_request(*args, **kwargs)
        request.smartsync_started = seconds()
        inflight.add(request)
        return request

    def log_request(request: Request) -> None:
        inflight.finished(request)
        try:
            started = getattr(request, "smartsync_started", None)
            method = request.method.decode("ascii", "replace")
            path = getattr(request, "path", None) or getattr(request.channel, "_path", b"") or b""
            if request.code >= 400:
                metrics.refusals.add(seconds(), method[:10], path, request.code,
                                     client_address(request))
            metrics.observe_request(
                route_of(request.method, path.split(b"?", 1)[0]),
                method if method in _METHODS else "other",  # labels stay a bounded set
                request.code,
                0.0 if started is None else max(0.0, seconds() - started),
                getattr(request, "_body_bytes", 0),  # web/bodies.py LimitedRequest counts it
                request.sentLength,
            )
        except Exception:  # noqa: BLE001 - counting must never break an answer
            log.failure("counting a request failed")
        site_log(request)

    # On the instance: the factory and Site.log are what twisted.web calls for every request
    # (HTTPChannel copies requestFactory when it is built, Request.finish calls site.log).
    site.requestFactory = request_factory
    site.log = log_request
