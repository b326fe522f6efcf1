"""The request counting of web/metrics.py: route templates (never an engagement name), the
latency buckets' "le" bounds, and the text a scrape parses back to the same counts."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from webkit import Env

from smartsyncd.web.metrics import OTHER_ROUTE, RouteOf, SyncMetrics


def test_routes_are_templates_whatever_the_engagement(env: Env) -> None:
    route = RouteOf(env.api.app.url_map)  # the real application's routes
    assert route(b"POST", b"/v1/engagements/alpha/commit") == "/v1/engagements/<eng>/commit"
    assert route(b"POST", b"/v1/engagements/b%C3%A9ta/commit") == "/v1/engagements/<eng>/commit"
    assert route(b"POST", b"/v1/engagements/x/copies/c1/report") == (
        "/v1/engagements/<eng>/copies/<copy>/report"
    )
    assert route(b"GET", b"/v1/engagements") == "/v1/engagements"
    assert route(b"GET", b"/healthz") == "/healthz"
    assert route(b"GET", b"/v1/engagements/") == OTHER_ROUTE
    assert route(b"GET", b"/no/such/thing") == OTHER_ROUTE
    assert route(b"DELETE", b"/v1/engagements/alpha/commit") == OTHER_ROUTE  # 405
    for i in range(5000):  # many engagements: one cache entry per route shape
        route(b"GET", b"/v1/engagements/e%d/changes" % i)
    assert len(route._cache) < 20


def test_counts_and_latency_buckets_parse_back() -> None:
    metrics = SyncMetrics(lambda: 1000.0)
    for duration in (0.005, 0.0051, 3.0, 500.0):
        metrics.observe_request("/v1/login", "POST", 401, duration, 40, 90)
    metrics.observe_request("/v1/login", "POST", 429, 0.001, 40, 90)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    login = {"route": "/v1/login"}
    assert get("smartsync_requests_total", method="POST", status="401", **login) == 4
    assert get("smartsync_request_duration_seconds_bucket", le="0.005", **login) == 2  # 0.001, 0.005
    assert get("smartsync_request_duration_seconds_bucket", le="0.01", **login) == 3
    assert get("smartsync_request_duration_seconds_bucket", le="5.0", **login) == 4
    assert get("smartsync_request_duration_seconds_bucket", le="+Inf", **login) == 5
    assert get("smartsync_request_duration_seconds_count", **login) == 5
    assert get("smartsync_request_body_bytes_total", **login) == 200
    assert get("smartsync_response_body_bytes_total", **login) == 450
    assert get("smartsync_signin_failures_total") == 4
    assert get("smartsync_signin_throttled_total") == 1
