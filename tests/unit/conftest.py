"""Fixtures shared by the unit test modules: the web ``env`` (tests/unit/webkit.py) and the
client's ``server`` (tests/unit/clientkit.py), both in memory with a Clock; and the guard that
keeps this tier free of a running reactor.

The guard has two parts. pytest-twisted runs every test inside its reactor greenlet (it
schedules the call with ``reactor.callLater`` and switches to the reactor), so a test that
waits for real I/O simply waits, and passes. Here ``pytest_pyfunc_call`` calls each unit test
in the caller instead, before pytest-twisted can: an ``async def`` test (or one returning a
Deferred) must have finished when the call returns, everything it awaited having fired while it
drove its Clock and in-memory pumps. A test that awaits a socket, a thread or
``reactor.callLater`` fails at once with ``ReactorNeeded`` instead of hanging; so does a
pytest-twisted async fixture. The reactor never runs during a unit test. Second, the autouse
``no_global_reactor`` fixture fails a test that leaves a delayed call, reader or writer on the
global reactor, or starts its thread pool: fire-and-forget work that would have run later on a
real reactor. This is robust because it does not depend on which Twisted APIs a test or the
code under it calls: anything that needs the reactor either never completes or leaves state
behind. Tests that need the real reactor (TLS and sockets themselves, real threads, inotify,
PostgreSQL notifications) live in tests/integration, where pytest-twisted still drives them.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clientkit import MemoryServer
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
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


# --- the unit tier runs with no reactor -------------------------------------------------------


class ReactorNeeded(Exception):
    """A unit test waited for something only a running reactor delivers."""


def settle(result: object, what: str) -> object:
    """The value of a test's (or fixture's) result, which must not wait for the reactor."""
    if inspect.iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    if not isinstance(result, Deferred):
        return result
    outcome: list[object] = []
    result.addBoth(outcome.append)
    if not outcome:
        result.cancel()
        raise ReactorNeeded(
            f"{what} waits for something only a running reactor delivers (a socket, a thread,"
            " reactor.callLater): drive it with a Clock, the in-memory Site and synchronous pools,"
            " or move it to tests/integration"
        )
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool:
    """Call a unit test here, never in pytest-twisted's reactor greenlet."""
    test = pyfuncitem.obj
    hypothesis = getattr(test, "hypothesis", None)
    if hypothesis is not None and not getattr(hypothesis.inner_test, "_settles", False):
        inner = hypothesis.inner_test

        @functools.wraps(inner)
        def settled(*args: Any, **kwargs: Any) -> None:
            settle(inner(*args, **kwargs), f"an example of {pyfuncitem.name}")

        settled._settles = True  # type: ignore[attr-defined]
        hypothesis.inner_test = settled
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    settle(test(**kwargs), pyfuncitem.nodeid)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest) -> None:
    """Refuse pytest-twisted's async fixtures: they run in the reactor greenlet."""
    if getattr(fixturedef.func, "_pytest_twisted_mark", None) is not None:
        raise ReactorNeeded(f"fixture {fixturedef.argname} is a pytest-twisted async fixture")


def _reactor_state() -> tuple[set[Any], set[Any], set[Any], bool]:
    pool = getattr(reactor, "threadpool", None)
    return (
        set(reactor.getDelayedCalls()),
        set(reactor.getReaders()),
        set(reactor.getWriters()),
        bool(pool is not None and pool.started),
    )


@pytest.fixture(autouse=True)
def no_global_reactor() -> Iterator[None]:
    """Fail a test that leaves delayed calls, readers or writers on the global reactor, or
    that started its thread pool (work handed to the reactor that this tier never runs)."""
    before = _reactor_state()
    yield
    after = _reactor_state()
    left = [sorted(map(repr, now - then)) for now, then in zip(after[:3], before[:3], strict=True)]
    for call in after[0] - before[0]:
        if call.active():
            call.cancel()
    if any(left) or after[3] > before[3]:
        pytest.fail(
            f"left on the global reactor: delayed calls {left[0]}, readers {left[1]},"
            f" writers {left[2]}; thread pool started: {after[3] > before[3]}"
        )
