"""Sign-in through several backends, bearer-token sessions, expiry, sliding and group refresh."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from webkit import in_memory

from smartsyncd.auth.identity import BackendUnavailable, Identity, SignInRefused, UnknownUser
from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.passwords import hash_password
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.sessions import SessionManager, hash_token
from smartsyncd.core.errors import AuthFailed, RateLimited, SessionExpired, Unavailable
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync

START = 1_795_000_000.0  # late 2026
ADDR = "192.0.2.10"


class RecordingBackend:
    """A scripted sign-in backend (stands in for a directory) that records every call."""

    def __init__(self, name: str, users: dict[str, tuple[str, set[str]]] | None = None) -> None:
        self.name = name
        self.users = users or {}
        self.calls: list[tuple[str, str]] = []
        self.unavailable = False
        self.refresh_error: Exception | None = None

    async def authenticate(self, user: str, password: str) -> Identity:
        self.calls.append(("authenticate", user))
        if self.unavailable:
            raise BackendUnavailable("directory unreachable")
        if not password:
            raise SignInRefused("empty password")
        if user not in self.users:
            raise UnknownUser("unknown user")
        if self.users[user][0] != password:
            raise SignInRefused("wrong password")
        return Identity(user=user, groups=frozenset(self.users[user][1]), backend=self.name)

    async def refresh(self, identity: Identity) -> Identity:
        self.calls.append(("refresh", identity.user))
        if self.refresh_error is not None:
            raise self.refresh_error
        return Identity(
            user=identity.user, groups=frozenset(self.users[identity.user][1]), backend=self.name
        )


async def sync_runner(f: Any, *args: Any) -> Any:
    return f(*args)


class Env:
    """A clock, a store (memory fake or real SQLite), a limiter and the manager under test."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.clock.advance(START)
        self.limiter = LoginRateLimiter(self.clock, per_user=3, per_address=10, window=300.0)
        self.store: Any = None
        self.manager: SessionManager

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    async def open(
        self,
        *backends: Any,
        lifetime: timedelta = timedelta(days=30),
        refresh_interval: timedelta = timedelta(minutes=15),
    ) -> Env:
        if self.kind == "memory":
            self.store = MemoryServerStore(now=self.now)
        else:
            self.store = open_sync_store(str(self.tmp_path), now=self.now)
        self.manager = SessionManager(
            self.store,
            list(backends),
            self.clock,
            self.limiter,
            lifetime=lifetime,
            refresh_interval=refresh_interval,
        )
        return self

    async def session_count(self) -> int:
        if self.kind == "memory":
            return len(self.store.sessions)
        row = await self.store.run_db(lambda m: m.one("SELECT COUNT(*) FROM sessions"))
        return int(row[0])

    async def stored_bytes(self) -> bytes:
        """Everything the store holds, as raw bytes (database file and WAL for SQLite)."""
        if self.kind == "memory":
            return repr(self.store.sessions).encode()
        return b"".join(p.read_bytes() for p in sorted(self.tmp_path.rglob("*")) if p.is_file())


@pytest.fixture(params=["memory", "sqlite"])
def make_env(request: Any, tmp_path: Any) -> Iterator[Any]:
    envs: list[Env] = []

    async def make(*backends: Any, **kw: Any) -> Env:
        env = await Env(request.param, tmp_path / str(len(envs))).open(*backends, **kw)
        envs.append(env)
        return env

    yield make
    for env in envs:
        if env.kind == "sqlite":
            run_sync(env.store.close())


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def logged(events: list[dict]) -> str:
    return "\n".join(formatEvent(e) + " " + repr(e) for e in events)


@in_memory
async def test_sign_in_stores_only_the_token_hash_and_resolves(make_env) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw-alice", {"S-1-5-21-1", "S-1-5-21-2"})})
    env = await make_env(ldap)
    token, record = await env.manager.sign_in("alice", "pw-alice", ADDR)
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert record.user == "alice" and record.backend == "ldap"
    assert record.groups == ("S-1-5-21-1", "S-1-5-21-2")
    assert record.created_at == record.refreshed_at == env.now()
    assert record.expires_at == env.now() + timedelta(days=30)
    assert len(record.id) == 16 and record.id not in token
    assert token.encode() not in await env.stored_bytes()
    assert await env.session_count() == 1
    assert await env.store.get_session(record.token_hash) == record
    assert await env.manager.resolve(token) == record


@in_memory
async def test_tokens_are_unique_per_sign_in(make_env) -> None:
    env = await make_env(RecordingBackend("ldap", {"alice": ("pw", set())}))
    t1, r1 = await env.manager.sign_in("alice", "pw", ADDR)
    t2, r2 = await env.manager.sign_in("alice", "pw", ADDR)
    assert t1 != t2 and r1.id != r2.id and await env.session_count() == 2


@in_memory
async def test_wrong_password_and_unknown_user_fail_the_same_way(make_env) -> None:
    env = await make_env(RecordingBackend("ldap", {"alice": ("pw", set())}))
    with pytest.raises(AuthFailed) as wrong:
        await env.manager.sign_in("alice", "nope", ADDR)
    with pytest.raises(AuthFailed) as unknown:
        await env.manager.sign_in("nobody", "nope", ADDR)
    assert (
        wrong.value.to_json()
        == unknown.value.to_json()
        == {"error": "auth_failed", "message": "sign-in failed"}
    )
    assert await env.session_count() == 0


@in_memory
async def test_empty_password_or_user_refused_before_any_backend(make_env) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", set())})
    env = await make_env(ldap)
    for user, password in (("alice", ""), ("", "pw"), ("", "")):
        with pytest.raises(AuthFailed):
            await env.manager.sign_in(user, password, ADDR)
    assert ldap.calls == []


@in_memory
async def test_unknown_user_falls_through_to_the_next_backend(make_env) -> None:
    env_store_user = "alice"
    ldap = RecordingBackend("ldap", {"dana": ("pw-dana", {"S-1-5-21-9"})})
    env = await make_env()
    local = LocalAuthenticator(env.store, sync_runner)
    env.manager = SessionManager(env.store, [local, ldap], env.clock, env.limiter)
    await env.store.add_user(env_store_user, hash_password("pw-alice"))

    _token, rec = await env.manager.sign_in("dana", "pw-dana", ADDR)
    assert (rec.user, rec.backend, rec.groups) == ("dana", "ldap", ("S-1-5-21-9",))
    assert ldap.calls == [("authenticate", "dana")]

    _token, rec = await env.manager.sign_in("alice", "pw-alice", ADDR)
    assert (rec.user, rec.backend, rec.groups) == ("alice", "local", ())
    assert ldap.calls == [("authenticate", "dana")]  # local decided

    with pytest.raises(AuthFailed):
        await env.manager.sign_in("alice", "pw-dana", ADDR)  # local knows alice: no fallthrough
    assert ldap.calls == [("authenticate", "dana")]


@in_memory
async def test_refusal_by_a_backend_that_knows_the_user_stops(make_env) -> None:
    first = RecordingBackend("ldap", {"alice": ("old-pw", set())})
    second = RecordingBackend("ldap2", {"alice": ("pw", set())})
    env = await make_env(first, second)
    with pytest.raises(AuthFailed):
        await env.manager.sign_in("alice", "pw", ADDR)
    assert second.calls == []


@in_memory
async def test_unavailable_backend_lets_the_next_try(make_env) -> None:
    first = RecordingBackend("dc1", {"alice": ("pw", {"g"})})
    second = RecordingBackend("dc2", {"alice": ("pw", {"g"})})
    first.unavailable = True
    env = await make_env(first, second)
    _token, rec = await env.manager.sign_in("alice", "pw", ADDR)
    assert rec.backend == "dc2"


@in_memory
async def test_all_backends_unavailable_is_unavailable_not_a_failure(make_env) -> None:
    a, b = RecordingBackend("dc1"), RecordingBackend("dc2")
    a.unavailable = b.unavailable = True
    env = await make_env(a, b)
    for _ in range(5):  # more than per_user: outages must not lock anyone out
        with pytest.raises(Unavailable):
            await env.manager.sign_in("alice", "pw", ADDR)
    assert len(a.calls) == len(b.calls) == 5
    # unknown to one backend and the other unreachable: still "cannot decide"
    a.unavailable = False
    with pytest.raises(Unavailable):
        await env.manager.sign_in("alice", "pw", ADDR)


@in_memory
async def test_rate_limited_after_failures_and_reset_after_window(make_env) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", set())})
    env = await make_env(ldap)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await env.manager.sign_in("alice", "bad", ADDR)
    calls = len(ldap.calls)
    with pytest.raises(RateLimited) as info:
        await env.manager.sign_in("alice", "pw", "198.51.100.1")  # even the right password
    assert info.value.to_json()["retry_after"] == 300
    assert len(ldap.calls) == calls  # the backend (directory) was not asked
    env.clock.advance(300)
    _token, rec = await env.manager.sign_in("alice", "pw", ADDR)
    assert rec.user == "alice"


@in_memory
async def test_missing_unknown_and_ended_tokens_are_session_expired(make_env) -> None:
    env = await make_env(RecordingBackend("ldap", {"alice": ("pw", set())}))
    for token in (None, "", "not-a-token"):
        with pytest.raises(SessionExpired) as info:
            await env.manager.resolve(token)
        assert info.value.to_json() == {
            "error": "session_expired",
            "message": "session expired or unknown; sign in again",
        }
    token, _rec = await env.manager.sign_in("alice", "pw", ADDR)
    await env.manager.sign_out(token)
    assert await env.session_count() == 0
    with pytest.raises(SessionExpired):
        await env.manager.resolve(token)
    await env.manager.sign_out(token)  # idempotent
    await env.manager.sign_out("never-issued")


@in_memory
async def test_session_expires_without_use_and_slides_with_use(make_env) -> None:
    env = await make_env(
        RecordingBackend("ldap", {"alice": ("pw", set())}),
        lifetime=timedelta(hours=1),
        refresh_interval=timedelta(days=1),
    )
    token, rec = await env.manager.sign_in("alice", "pw", ADDR)

    env.clock.advance(30)  # under a minute: no write
    assert (await env.manager.resolve(token)).expires_at == rec.expires_at
    assert (await env.store.get_session(rec.token_hash)).expires_at == rec.expires_at

    env.clock.advance(50 * 60)
    slid = await env.manager.resolve(token)
    assert slid.expires_at == env.now() + timedelta(hours=1)
    assert (await env.store.get_session(rec.token_hash)).expires_at == slid.expires_at

    env.clock.advance(3600 - 1)
    await env.manager.resolve(token)  # still alive: the slide kept it
    env.clock.advance(3600)
    with pytest.raises(SessionExpired):
        await env.manager.resolve(token)
    assert await env.session_count() == 0  # the expired session was removed


@in_memory
async def test_refresh_interval_rereads_groups_and_a_refusal_ends_the_session(make_env) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", {"S-old"})})
    env = await make_env(ldap, refresh_interval=timedelta(minutes=15))
    token, rec = await env.manager.sign_in("alice", "pw", ADDR)
    ldap.users["alice"] = ("pw", {"S-new", "S-other"})

    env.clock.advance(14 * 60)
    assert (await env.manager.resolve(token)).groups == ("S-old",)
    assert ("refresh", "alice") not in ldap.calls

    env.clock.advance(60)
    fresh = await env.manager.resolve(token)
    assert fresh.groups == ("S-new", "S-other")
    assert fresh.refreshed_at == env.now()
    assert (await env.store.get_session(rec.token_hash)).groups == ("S-new", "S-other")
    assert ldap.calls.count(("refresh", "alice")) == 1

    env.clock.advance(60)  # within the interval again: no directory traffic
    await env.manager.resolve(token)
    assert ldap.calls.count(("refresh", "alice")) == 1

    ldap.refresh_error = SignInRefused("account disabled in the directory")
    env.clock.advance(15 * 60)
    with pytest.raises(SessionExpired):
        await env.manager.resolve(token)
    assert await env.session_count() == 0


@in_memory
async def test_refresh_with_directory_down_keeps_old_groups_and_retries_later(
    make_env, events
) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", {"S-old"})})
    env = await make_env(ldap, refresh_interval=timedelta(minutes=15))
    token, rec = await env.manager.sign_in("alice", "pw", ADDR)
    ldap.users["alice"] = ("pw", {"S-new"})
    ldap.refresh_error = BackendUnavailable("dc1 timed out")

    env.clock.advance(16 * 60)
    kept = await env.manager.resolve(token)
    assert kept.groups == ("S-old",)
    assert kept.refreshed_at == rec.refreshed_at
    assert any("keeping the previous groups" in formatEvent(e) for e in events)

    env.clock.advance(30)  # back-off: the directory is not asked on every request
    await env.manager.resolve(token)
    assert ldap.calls.count(("refresh", "alice")) == 1

    ldap.refresh_error = None
    env.clock.advance(31)
    assert (await env.manager.resolve(token)).groups == ("S-new",)
    assert ldap.calls.count(("refresh", "alice")) == 2


@in_memory
async def test_session_of_a_backend_no_longer_configured_ends(make_env) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", set())})
    env = await make_env(ldap)
    token, _rec = await env.manager.sign_in("alice", "pw", ADDR)
    other = SessionManager(env.store, [RecordingBackend("local")], env.clock, env.limiter)
    env.clock.advance(16 * 60)
    with pytest.raises(SessionExpired):
        await other.resolve(token)


@in_memory
async def test_no_password_or_token_in_any_logged_event(make_env, events) -> None:
    secret_ok, secret_bad = "Ok-Pa55word-7731", "Bad-Guess-4410"
    ldap = RecordingBackend("ldap", {"alice": (secret_ok, {"g"})})
    env = await make_env(ldap)
    token, _ = await env.manager.sign_in("alice", secret_ok, ADDR)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await env.manager.sign_in("alice", secret_bad, ADDR)
    with pytest.raises(RateLimited):
        await env.manager.sign_in("alice", secret_bad, ADDR)
    with pytest.raises(AuthFailed):
        await env.manager.sign_in("ghost", secret_bad, "192.0.2.99")
    ldap.unavailable = True
    with pytest.raises(Unavailable):
        await env.manager.sign_in("bob", secret_bad, "192.0.2.98")
    env.clock.advance(20 * 60)
    ldap.refresh_error = SignInRefused("gone")
    with pytest.raises(SessionExpired):
        await env.manager.resolve(token)

    text = logged(events)
    assert "sign-in alice from 192.0.2.10 via ldap" in text
    assert "sign-in refused for alice from 192.0.2.10: ldap: wrong password" in text
    assert "sign-in refused for ghost from 192.0.2.99: ldap: unknown user" in text
    for secret in (secret_ok, secret_bad, token, hash_token(token)):
        assert secret not in text


@in_memory
async def test_malformed_user_names_refused_before_any_backend_and_logged_safely(
    make_env, events
) -> None:
    ldap = RecordingBackend("ldap", {"alice": ("pw", set())})
    env = await make_env(ldap)
    for name in ("a" * 257, "alice\nsign-in root from 10.0.0.1 via local"):
        with pytest.raises(AuthFailed):
            await env.manager.sign_in(name, "pw", ADDR)
    assert ldap.calls == []
    lines = [formatEvent(e) for e in events]
    assert not any("\n" in line for line in lines)
    assert all(len(line) < 300 for line in lines)
    assert any("alice\\nsign-in root" in line for line in lines)


@in_memory
async def test_use_never_slides_a_session_past_its_absolute_lifetime(make_env) -> None:
    env = await make_env(
        RecordingBackend("ldap", {"alice": ("pw", set())}),
        lifetime=timedelta(hours=1),
        refresh_interval=timedelta(days=1),
    )
    env.manager = SessionManager(
        env.store, [RecordingBackend("ldap", {"alice": ("pw", set())})], env.clock, env.limiter,
        lifetime=timedelta(hours=1), refresh_interval=timedelta(days=1),
        max_age=timedelta(hours=3),
    )
    token, rec = await env.manager.sign_in("alice", "pw", ADDR)
    for _ in range(5):  # used every 50 minutes: the sliding hour alone would never end it
        env.clock.advance(50 * 60)
        if env.now() >= rec.created_at + timedelta(hours=3):
            break
        slid = await env.manager.resolve(token)
        assert slid.expires_at <= rec.created_at + timedelta(hours=3)
    with pytest.raises(SessionExpired):
        await env.manager.resolve(token)
