"""Fixtures shared by the unit test modules: the web ``env`` (tests/unit/webkit.py)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from webkit import LIMITS, PASSWORD, START, Env, SiteClient

from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.passwords import hash_password
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.storage.api import Grant
from smartsyncd.testing.syncpool import open_sync_sqlite_store, run_sync
from smartsyncd.web.app import SyncAPI, make_site
from smartsyncd.web.notify import ChangeNotifier


def run_now(f: Any, *args: Any, **kwargs: Any) -> Deferred:
    return maybeDeferred(f, *args, **kwargs)


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)  # scrypt: most of a test's time, so hashed once per run


async def _fill(store: Any) -> int:
    pw = _password_hash()
    for name in ("alice", "rita", "eve"):
        await store.add_user(name, pw)
    alpha = await store.create_engagement("alpha", "Alpha Ltd 2026")
    await store.create_engagement("beta", "Beta Inc")
    await store.grant(Grant("alpha", "user", "local:alice", "alice", "editor"))
    await store.grant(Grant("alpha", "user", "local:rita", "rita", "reader"))
    await store.grant(Grant("beta", "user", "local:eve", "eve", "admin"))
    return int(alpha.id)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """SyncAPI behind the real Site of ``make_site``, on a real SQLite store with synchronous
    pools, local accounts alice (editor of alpha), rita (reader of alpha), eve (admin of beta),
    and a Clock at START; no reactor runs."""
    clock = Clock()
    clock.advance(START)
    store = open_sync_sqlite_store(str(tmp_path))
    alpha = run_sync(_fill(store))
    offloaded: list[str] = []

    def run_blocking(f: Any, *args: Any, **kwargs: Any) -> Deferred:
        offloaded.append(getattr(f, "__name__", repr(f)))
        return maybeDeferred(f, *args, **kwargs)

    sessions = SessionManager(store, [LocalAuthenticator(store, run_now)], clock, LoginRateLimiter(clock))
    notifier = ChangeNotifier(clock)
    api = SyncAPI(store, sessions, notifier, clock, run_blocking, limits=LIMITS)
    try:
        yield Env(api, SiteClient(make_site(api)), clock, notifier, store, alpha, offloaded)
    finally:
        run_sync(store.close())
