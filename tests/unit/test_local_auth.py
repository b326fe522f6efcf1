"""Local accounts: password checks, refusals, and that unknown users cost a verification too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from webkit import in_memory

from smartsyncd.auth import local as local_mod
from smartsyncd.auth.identity import Identity, SignInRefused, UnknownUser
from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.passwords import hash_password
from smartsyncd.storage.api import UserRecord
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.testing.syncpool import open_sync_store, run_sync


class CountingRunner:
    """Runs blocking functions inline and records which ran (stands in for the thread pool)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, f: Any, *args: Any) -> Any:
        self.calls.append(f.__name__)
        return f(*args)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: Any, tmp_path: Any) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryServerStore()
        return
    real = open_sync_store(str(tmp_path))
    yield real
    run_sync(real.close())


async def set_disabled(store: Any, name: str) -> None:
    """The store API has no 'disable' call (admin tooling edits the row); do the same here."""
    if isinstance(store, MemoryServerStore):
        rec = store.users[name]
        store.users[name] = UserRecord(rec.name, rec.password_hash, rec.created_at, disabled=True)
        return
    await store.run_db(
        lambda m: m.write(
            lambda: m.execute("UPDATE users SET disabled = 1 WHERE name = ?", (name,))
        )
    )


async def remove_user(store: Any, name: str) -> None:
    if isinstance(store, MemoryServerStore):
        del store.users[name]
        return
    await store.run_db(
        lambda m: m.write(lambda: m.execute("DELETE FROM users WHERE name = ?", (name,)))
    )


async def add(store: Any, name: str, password: str | None, disabled: bool = False) -> None:
    await store.add_user(name, hash_password(password) if password is not None else None)
    if disabled:
        await set_disabled(store, name)


class UnreachableStore:
    """Fails the test if anything asks it for a user."""

    async def get_user(self, name: str) -> None:
        raise AssertionError(f"the store was asked for {name!r}")


@in_memory
async def test_right_password_signs_in_without_groups(store: Any) -> None:
    await add(store, "alice", "s3cret-Pass")
    auth = LocalAuthenticator(store, CountingRunner())
    identity = await auth.authenticate("alice", "s3cret-Pass")
    assert identity == Identity(user="alice", groups=frozenset(), backend="local")
    assert auth.name == "local"


@in_memory
async def test_wrong_password_is_refused_not_unknown(store: Any) -> None:
    await add(store, "alice", "s3cret-Pass")
    auth = LocalAuthenticator(store, CountingRunner())
    with pytest.raises(SignInRefused) as info:
        await auth.authenticate("alice", "wrong")
    assert not isinstance(info.value, UnknownUser)
    assert info.value.reason == "wrong password"


@in_memory
async def test_empty_password_refused_before_the_store_is_asked() -> None:
    runner = CountingRunner()
    auth = LocalAuthenticator(UnreachableStore(), runner)  # type: ignore[arg-type]
    with pytest.raises(SignInRefused) as info:
        await auth.authenticate("alice", "")
    assert info.value.reason == "empty password"
    assert runner.calls == []


@in_memory
async def test_unknown_user_runs_a_dummy_verification(store: Any) -> None:
    runner = CountingRunner()
    auth = LocalAuthenticator(store, runner)
    with pytest.raises(UnknownUser) as info:
        await auth.authenticate("mallory", "guess")
    assert info.value.reason == "unknown user"
    assert runner.calls == ["_dummy_verify"]
    assert local_mod._dummy_hash is not None and local_mod._dummy_hash.startswith("scrypt$")


@in_memory
async def test_disabled_account_refused_even_with_right_password(store: Any) -> None:
    await add(store, "bob", "pw-of-bob", disabled=True)
    runner = CountingRunner()
    auth = LocalAuthenticator(store, runner)
    with pytest.raises(SignInRefused) as info:
        await auth.authenticate("bob", "pw-of-bob")
    assert not isinstance(info.value, UnknownUser)
    assert info.value.reason == "account disabled"
    assert runner.calls == ["verify_password"]  # same work as any other attempt


@in_memory
async def test_account_without_password_cannot_sign_in_locally(store: Any) -> None:
    await add(store, "dirk", None)
    auth = LocalAuthenticator(store, CountingRunner())
    with pytest.raises(UnknownUser) as info:  # a directory backend may still know dirk
        await auth.authenticate("dirk", "anything")
    assert info.value.reason == "no local password"


@in_memory
async def test_refresh_keeps_identity_until_account_is_disabled_or_removed(
    store: Any,
) -> None:
    await add(store, "alice", "s3cret-Pass")
    auth = LocalAuthenticator(store, CountingRunner())
    identity = await auth.authenticate("alice", "s3cret-Pass")
    assert await auth.refresh(identity) == identity
    await set_disabled(store, "alice")
    with pytest.raises(SignInRefused):
        await auth.refresh(identity)
    await remove_user(store, "alice")
    with pytest.raises(SignInRefused):
        await auth.refresh(identity)


@in_memory
async def test_malformed_user_names_never_reach_the_store() -> None:
    auth = LocalAuthenticator(UnreachableStore(), CountingRunner())  # type: ignore[arg-type]
    for name in ("a" * 257, "alice\nroot", "\ud800"):
        with pytest.raises(UnknownUser):
            await auth.authenticate(name, "pw")
