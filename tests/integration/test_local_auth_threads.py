"""Local sign-in with the password verification on the reactor's real thread pool and a real
SQLite store on its own pools (moved from tests/unit, which runs no reactor: issue 13)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool

from smartsyncd.auth.identity import SignInRefused
from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.passwords import hash_password
from smartsyncd.storage.sqlite import open_server_store
from smartsyncd.testing.memory_store import MemoryServerStore

pytestmark = pytest.mark.integration


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite"])
async def store(request: Any, tmp_path: Any) -> Any:
    if request.param == "memory":
        yield MemoryServerStore()
        return
    real = await open_server_store(str(tmp_path), reactor=reactor)
    yield real
    await real.close()


@pytest_twisted.ensureDeferred
async def test_verification_runs_in_a_real_thread_pool(store: Any) -> None:
    await store.add_user("alice", hash_password("s3cret-Pass"))
    run = functools.partial(deferToThreadPool, reactor, reactor.getThreadPool())
    auth = LocalAuthenticator(store, run)
    assert (await auth.authenticate("alice", "s3cret-Pass")).user == "alice"
    with pytest.raises(SignInRefused):
        await auth.authenticate("alice", "nope")
