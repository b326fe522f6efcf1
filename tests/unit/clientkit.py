"""The real client (``ServerAPI``, ``SyncCopy``) against the real server Site, in memory.

No reactor runs and no socket opens. The server is the web ``env`` of conftest.py (``make_site``
over ``SyncAPI``, a real SQLite store on synchronous pools, a ``Clock``); each ``ServerAPI``
speaks HTTP to that Site through treq's in-memory connections (``SiteClient``), and each
``SyncCopy`` gets the same Clock and runs its disk work at once in the caller instead of on a
thread. ``MemoryServer.run`` drives a coroutine to its end: it moves the bytes of every
connection until none move, runs the Clock's due calls, and only when nothing else can happen
moves the Clock to its next timer (a long poll, a poll interval, a retry's backoff). Time is the
Clock's, never the wall clock's, and a coroutine that waits for something that never comes (a
real thread, a socket) fails at once instead of hanging.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from webkit import PASSWORD, Env, SiteClient

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy
from smartsyncd.storage.api import Grant
from smartsyncd.testing.syncpool import run_sync

T = TypeVar("T")
ENG = "alpha"  # the engagement of ``env``: alice and bob are its editors
MAX_ROUNDS = 100_000  # pump/timer rounds before a coroutine counts as stuck
FINGERPRINT = "ab" * 32  # no TLS in memory: the policy is never asked


def run_blocking(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """The engine's thread hop, run at once in the caller."""
    return maybeDeferred(f, *args, **kwargs)


class MemoryServer:
    """The server of ``env`` with a second editor, bob, and the means to drive clients of it."""

    url = "https://sync.example"

    def __init__(self, env: Env, password_hash: str) -> None:
        self.env = env
        self.clock = env.clock
        self.clients: list[SiteClient] = []
        self.apis: list[ServerAPI] = []
        self._tokens: dict[str, str] = {}
        run_sync(env.store.add_user("bob", password_hash))
        run_sync(env.store.grant(Grant(ENG, "user", "local:bob", "bob", "editor")))

    async def api(self, user: str = "alice", kind: Any = ServerAPI) -> Any:
        """A signed-in ``kind`` (ServerAPI or a test's subclass of it) over its own client."""
        client = SiteClient(self.env.stub.site)
        self.clients.append(client)
        token = self._tokens.get(user)
        api = kind(
            self.url, reactor=self.clock, policy=PinnedPolicy(FINGERPRINT), http=client.http,
            run_in_thread=_in_caller, token=token,
        )
        if token is None:  # one real sign-in per user: each is a scrypt verification
            self._tokens[user] = await api.login(user, PASSWORD)
        self.apis.append(api)
        return api

    async def clone(self, api: ServerAPI, directory: Path, **kwargs: Any) -> SyncCopy:
        return await SyncCopy.clone(
            api, ENG, directory, clock=self.clock, run_blocking=run_blocking, **kwargs
        )

    def open(self, directory: Path, **kwargs: Any) -> SyncCopy:
        return SyncCopy.open(directory, clock=self.clock, run_blocking=run_blocking, **kwargs)

    async def wait_for(self, condition: Callable[[], bool], interval: float = 0.05) -> None:
        """Check ``condition`` every ``interval`` of Clock time (``run`` moves the Clock on)."""
        for _ in range(MAX_ROUNDS):
            if condition():
                return
            await deferLater(self.clock, interval, lambda: None)
        raise AssertionError("condition not reached")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Drive ``coro`` to its end (see the module docstring) and return or raise its result."""
        outcome: list[Any] = []
        Deferred.fromCoroutine(coro).addBoth(outcome.append)
        for _ in range(MAX_ROUNDS):
            self._settle()
            if outcome:
                break
            timers = self.clock.getDelayedCalls()
            assert timers, "the coroutine waits for something that never comes (a thread, a socket?)"
            self.clock.advance(max(0.0, min(t.getTime() for t in timers) - self.clock.seconds()))
        assert outcome, f"not finished after {MAX_ROUNDS} rounds"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        result: T = outcome[0]
        return result

    def _settle(self) -> None:
        """Move bytes and run due calls until neither happens (one connection's answer can
        wake a request waiting on another, as a commit wakes a long poll)."""
        for _ in range(MAX_ROUNDS):
            moved = False
            for client in self.clients:
                moved = client.pump() or moved
            due = any(t.getTime() <= self.clock.seconds() for t in self.clock.getDelayedCalls())
            if not (moved or due):
                return
            self.clock.advance(0)
        raise AssertionError("bytes keep moving: a request loops")

    def close(self) -> None:
        for api in self.apis:
            self.run(api.close())


async def _in_caller(fn: Callable[..., Any], *args: Any) -> Any:
    """The transport's thread hop for large bodies, run at once in the caller."""
    return fn(*args)


def files_of(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".smartsync" in dirnames:
            dirnames.remove(".smartsync")
        for name in filenames:
            full = Path(dirpath) / name
            out[str(full.relative_to(root))] = full.read_bytes()
    return out


class CountingAPI(ServerAPI):
    """Counts chunk uploads/fetches; optionally fails after ``fail_after`` upload requests."""

    fail_after: int | None = None

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.uploads = 0
        self.fetched: list[str] = []

    async def upload_chunks(self, eng: str, chunks: Any) -> int:
        if self.fail_after is not None and self.uploads >= self.fail_after:
            from smartsyncd.client.errors import NetworkError

            raise NetworkError("connection lost (injected)")
        self.uploads += 1
        return await super().upload_chunks(eng, chunks)

    async def fetch_chunks(self, eng: str, hashes: Any, stream: bool = False) -> dict[str, bytes]:
        hashes = list(hashes)
        self.fetched.extend(h if isinstance(h, str) else getattr(h, "hash", None) or h[0] for h in hashes)
        return await super().fetch_chunks(eng, hashes, stream)


async def counting_api(server: MemoryServer, user: str = "alice") -> CountingAPI:
    api: CountingAPI = await server.api(user, CountingAPI)
    return api


def driven(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test that takes the ``server`` fixture under ``server.run``."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        kwargs["server"].run(test(*args, **kwargs))

    return run
