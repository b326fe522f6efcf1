"""Sign-in against local accounts kept in the server store (scrypt password hashes).

Password work runs through ``run_blocking`` (a thread pool in the service). An unknown user
costs the same scrypt work as a known one, so response time does not reveal which names exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from smartsyncd.auth.identity import Identity, SignInRefused, UnknownUser
from smartsyncd.auth.passwords import hash_password, needs_rehash, verify_password
from smartsyncd.storage.api import ServerStore

RunBlocking = Callable[..., Awaitable[Any]]

_dummy_hash: str | None = None


def _dummy_verify(password: str) -> bool:
    """Spend one verification's worth of work against a throwaway hash (timing equaliser)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password("smartsyncd-dummy-password")
    verify_password(password, _dummy_hash)
    return False


class LocalAuthenticator:
    """The ``local`` backend: users and password hashes from ``ServerStore``; no groups."""

    name = "local"
    log = Logger()

    def __init__(self, store: ServerStore, run_blocking: RunBlocking) -> None:
        self._store = store
        self._run_blocking = run_blocking

    async def authenticate(self, user: str, password: str) -> Identity:
        if not password:
            raise SignInRefused("empty password")
        if not user:
            raise UnknownUser("empty user name")
        if len(user) > 256 or not user.isprintable():
            # Such a name cannot be stored; do not hand it to SQL either.
            await self._run_blocking(_dummy_verify, password)
            raise UnknownUser("malformed user name")
        record = await self._store.get_user(user)
        if record is None:
            await self._run_blocking(_dummy_verify, password)
            raise UnknownUser("unknown user")
        if record.password_hash is None:
            # The account exists but may not sign in locally (e.g. a directory user): let the
            # next backend decide.
            await self._run_blocking(_dummy_verify, password)
            raise UnknownUser("no local password")
        ok = await self._run_blocking(verify_password, password, record.password_hash)
        if record.disabled:
            raise SignInRefused("account disabled")
        if not ok:
            raise SignInRefused("wrong password")
        if needs_rehash(record.password_hash):
            await self._upgrade(record.name, record.password_hash, password)
        return Identity(user=record.name, groups=frozenset(), backend=self.name)

    async def _upgrade(self, name: str, old_hash: str, password: str) -> None:
        """Store a hash at today's scrypt cost (only if the hash was not changed meanwhile)."""
        new_hash = await self._run_blocking(hash_password, password)
        if await self._store.upgrade_password_hash(name, old_hash, new_hash):
            self.log.info("password hash of {user} upgraded to the current scrypt cost", user=name)

    async def throttle_key(self, user: str) -> str | None:
        """``local:<name>`` for an account that signs in here, else None (not ours)."""
        if not user or len(user) > 256 or not user.isprintable():
            return None
        record = await self._store.get_user(user)
        if record is None or record.password_hash is None:
            return None
        return "local:" + record.name

    async def refresh(self, identity: Identity) -> Identity:
        record = await self._store.get_user(identity.user)
        if record is None:
            raise SignInRefused("account removed")
        if record.disabled:
            raise SignInRefused("account disabled")
        return identity
