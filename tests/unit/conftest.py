"""Fixtures shared by the unit test modules: the web ``env`` (tests/unit/webkit.py) and the
client's ``server`` (tests/unit/clientkit.py), both in memory with a Clock."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clientkit import MemoryServer
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
from smartsyncd.web.limits import Limits
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


@contextmanager
def _site_env(data_dir: Path, limits: Limits, start: float = START) -> Iterator[Env]:
    clock = Clock()
    clock.advance(start)
    store = open_sync_sqlite_store(str(data_dir))
    alpha = run_sync(_fill(store))
    offloaded: list[str] = []

    def run_blocking(f: Any, *args: Any, **kwargs: Any) -> Deferred:
        offloaded.append(getattr(f, "__name__", repr(f)))
        return maybeDeferred(f, *args, **kwargs)

    sessions = SessionManager(store, [LocalAuthenticator(store, run_now)], clock, LoginRateLimiter(clock))
    notifier = ChangeNotifier(clock)
    api = SyncAPI(store, sessions, notifier, clock, run_blocking, limits=limits)
    try:
        yield Env(api, SiteClient(make_site(api)), clock, notifier, store, alpha, offloaded)
    finally:
        run_sync(store.close())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """SyncAPI behind the real Site of ``make_site``, on a real SQLite store with synchronous
    pools, local accounts alice (editor of alpha), rita (reader of alpha), eve (admin of beta),
    and a Clock at START; small body limits (``LIMITS``); no reactor runs."""
    with _site_env(tmp_path, LIMITS) as made:
        yield made


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MemoryServer]:
    """An ``env`` with the server's default limits, as the real client sees it in memory
    (tests/unit/clientkit.py), with bob as a second editor of alpha. Its Clock starts at the
    wall clock's time, read once: the client compares it with the mtimes of the files the
    test writes (a file written within a second of its scan is re-read next time)."""
    with _site_env(tmp_path / "server", Limits(), start=time.time()) as made:
        srv = MemoryServer(made, _password_hash())
        try:
            yield srv
        finally:
            srv.close()

