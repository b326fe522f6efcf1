"""/healthz's shared check (web/health.py) with a Clock, and the storage probe under
concurrent calls (each call its own probe file)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from smartsyncd.storage.packs import PackStore
from smartsyncd.web.health import HealthCache


def test_concurrent_calls_share_one_check_and_the_result_is_kept_briefly() -> None:
    clock = Clock()
    pending: list[Deferred[dict[str, str]]] = []

    def check() -> Deferred[dict[str, str]]:
        d: Deferred[dict[str, str]] = Deferred()
        pending.append(d)
        return d

    cache = HealthCache(check, clock, ttl=1.0)
    answers: list[Any] = []
    for _ in range(5):
        Deferred.fromCoroutine(cache.get()).addCallback(answers.append)
    assert len(pending) == 1 and answers == []
    pending[0].callback({"database": "ok", "storage": "ok"})
    assert answers == [{"database": "ok", "storage": "ok"}] * 5
    clock.advance(0.9)
    Deferred.fromCoroutine(cache.get()).addCallback(answers.append)
    assert len(pending) == 1 and len(answers) == 6  # cached
    clock.advance(0.2)
    Deferred.fromCoroutine(cache.get()).addCallback(answers.append)
    assert len(pending) == 2 and len(answers) == 6  # a new check
    pending[1].errback(RuntimeError("disk gone"))
    assert answers[-1] == {"database": "error", "storage": "error"}


def test_concurrent_storage_probes_do_not_fail_each_other(tmp_path: Path) -> None:
    store = PackStore(str(tmp_path))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: store.probe(), range(400)))
    assert results == [None] * 400
    assert [p.name for p in tmp_path.iterdir()] == []


def test_health_answer_is_ok_warning_or_error() -> None:
    from smartsyncd.web.health import health_answer

    ok = {"database": "ok", "storage": "ok", "disk": {"chunks": {"low": False}}, "warnings": []}
    assert health_answer(ok) == ({"status": "ok", **ok}, 200)
    low = {**ok, "warnings": ["the chunks folder has 3 MiB free"]}
    assert health_answer(low) == ({"status": "warning", **low}, 200)
    sick = {**low, "storage": "error"}
    assert health_answer(sick) == ({"status": "error", **sick}, 503)
