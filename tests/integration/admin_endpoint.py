"""Helpers for tests of the admin endpoint (``[admin] listen``) of a real daemon.

The admin port is chosen by the kernel (``tcp:0``); the daemon logs it when it listens
(service/admin.py), before the public listener is up, so it is in the log once the daemon is
ready. Scrapes use the stdlib client and are parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemon import Daemon

ADMIN_CONFIG = "[admin]\nlisten = tcp:0:interface=127.0.0.1\n"
_LISTENING = re.compile(r"admin endpoint listening on \S+ \(127\.0\.0\.1:(\d+)\)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def admin_port(d: Daemon) -> int:
    match = _LISTENING.search(d.log_text())
    assert match is not None, "no admin endpoint in the log:\n" + d.log_text()
    return int(match.group(1))


def scrape_text(port: int) -> tuple[str, str]:
    """``(content type, body)`` of ``GET /metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.headers.get("Content-Type", ""), answer.read().decode("utf-8")


def scrape(port: int) -> Samples:
    """Every sample, keyed by (sample name, sorted labels)."""
    _, text = scrape_text(port)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent: a counter not yet moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def wait_for_metric(port: int, condition: Callable[[Samples], bool], what: str,
                    deadline_s: float = 20.0) -> Samples:
    """Scrape until ``condition`` holds (a bounded poll, not a fixed wait)."""
    deadline = time.monotonic() + deadline_s
    while True:
        samples = scrape(port)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


def exposed_names(port: int) -> set[str]:
    """Every sample name the endpoint declares (a labelled counter that has not moved yet has
    no sample, but its family is declared)."""
    _, text = scrape_text(port)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names
