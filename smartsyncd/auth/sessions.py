"""Sign-in, bearer-token sessions and their periodic group refresh.

A token is 256 random bits handed to the client once; the store keeps only its SHA-256. Sessions
slide forward on use, and every ``refresh_interval`` the owning backend re-reads the user's
groups (a removed or disabled account ends the session). Failed sign-ins always look the same to
the client (``AuthFailed("sign-in failed")``); the reason goes to the server log only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smartsyncd.auth.identity import (
    Authenticator,
    BackendUnavailable,
    Identity,
    SignInRefused,
    UnknownUser,
)
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.throttle import AccountThrottle
from smartsyncd.core.errors import AuthFailed, SessionExpired, Unavailable
from smartsyncd.core.principals import is_local
from smartsyncd.storage.api import ServerStore, SessionRecord

# Sliding the expiry writes to the store; doing it at most once a minute keeps reads cheap.
SLIDE_GRANULARITY = timedelta(minutes=1)
# After the directory could not be reached, wait this long before asking it again.
REFRESH_RETRY = timedelta(minutes=1)
_MAX_RETRY_ENTRIES = 100_000

# Longer names cannot be accounts (the store refuses them); refuse before asking any backend.
MAX_USER_NAME = 256

SESSION_EXPIRED_MESSAGE = "session expired or unknown; sign in again"


def _loggable(text: str) -> str:
    """A client-supplied name made safe for one log line: bounded, control characters escaped."""
    if len(text) > 100:
        text = text[:100] + "..."
    if text.isprintable():
        return text
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def hash_token(token: str) -> str:
    """The form a token is stored and looked up in: lowercase hex SHA-256 of its UTF-8."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionManager:
    """Signs users in through the configured backends and resolves bearer tokens to sessions."""

    log = Logger()

    def __init__(
        self,
        store: ServerStore,
        backends: Sequence[Authenticator],
        clock: IReactorTime,
        limiter: LoginRateLimiter,
        lifetime: timedelta = timedelta(days=30),
        refresh_interval: timedelta = timedelta(minutes=15),
        throttle: AccountThrottle | None = None,
        max_age: timedelta | None = None,
        password_sign_in: bool = True,
    ) -> None:
        self._store = store
        self._backends = tuple(backends)
        self._by_name = {b.name: b for b in self._backends}
        # zope interface methods confuse mypy without the mypy-zope plugin
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self._limiter = limiter
        self._throttle = throttle
        # absolute lifetime: use slides a session forward, never past created_at + max_age
        self._max_age = max_age
        self._lifetime = lifetime
        self._refresh_interval = refresh_interval
        # session id -> earliest next refresh attempt after the backend was unavailable
        self._retry_at: dict[str, datetime] = {}
        # [auth] password_sign_in = no: only single sign-on (Kerberos) opens sessions
        self.password_sign_in = password_sign_in

    @property
    def limiter(self) -> LoginRateLimiter:
        return self._limiter

    def backend(self, name: str) -> Authenticator | None:
        """The configured backend called ``name`` (None if it is not configured)."""
        return self._by_name.get(name)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._seconds(), tz=UTC)

    async def _refuse(
        self, user: str, address: str, reason: str, key: str | None = None
    ) -> AuthFailed:
        self._limiter.record_failure(user, address)
        if self._throttle is not None and key is not None:
            await self._throttle.record_failure(key)
        self.log.info(
            "sign-in refused for {user} from {address}: {reason}",
            user=_loggable(user),
            address=_loggable(address),
            reason=reason,
        )
        return AuthFailed("sign-in failed")

    async def sign_in(self, user: str, password: str, address: str) -> tuple[str, SessionRecord]:
        """Authenticate and open a session; returns the raw token (shown once) and the record.

        Raises ``RateLimited``, ``AuthFailed`` or ``Unavailable`` (no backend could decide).
        """
        if not self.password_sign_in:
            self.log.info(
                "sign-in refused for {user} from {address}: password sign-in is turned off"
                " ([auth] password_sign_in = no)", user=_loggable(user), address=_loggable(address),
            )
            raise AuthFailed(
                "password sign-in is turned off on this server: sign in with single sign-on"
                " (smartsync login URL --sso)"
            )
        self._limiter.check(user, address)
        if not user or not password:
            raise await self._refuse(user, address, "empty user name or password")
        if len(user) > MAX_USER_NAME or not user.isprintable():
            raise await self._refuse(user, address, "malformed user name")
        # Counted per resolved account in the database: every spelling, every daemon.
        key: str | None = None
        if self._throttle is not None:
            key = await self._throttle.key_for(user, self._backends)
            await self._throttle.check(key)

        identity: Identity | None = None
        backend_name = ""
        reasons: list[str] = []
        unavailable: list[str] = []
        for backend in self._backends:
            try:
                identity = await backend.authenticate(user, password)
            except UnknownUser as e:
                reasons.append(f"{backend.name}: {e.reason}")
                continue
            except SignInRefused as e:
                raise await self._refuse(user, address, f"{backend.name}: {e.reason}", key) from None
            except BackendUnavailable as e:
                self.log.warn(
                    "sign-in backend {backend} unavailable: {error}",
                    backend=backend.name,
                    error=str(e),
                )
                unavailable.append(backend.name)
                continue
            backend_name = backend.name
            break

        if identity is None:
            if unavailable:
                # A backend that could not be asked might know the user: "wrong password" would
                # be a lie, and counting it would lock users out after an outage.
                raise Unavailable("sign-in backend unavailable: " + ", ".join(unavailable))
            raise await self._refuse(
                user, address, "; ".join(reasons) or "no sign-in backend", key
            )

        if await self._store.principal_block(identity.principal) is not None:
            raise await self._refuse(user, address, "account disabled in smartsyncd", key)
        self._limiter.record_success(user, address)
        if self._throttle is not None and key is not None:
            await self._throttle.record_success(key)
        return await self.open_session(identity, backend_name, address)

    async def open_session(
        self, identity: Identity, backend_name: str, address: str
    ) -> tuple[str, SessionRecord]:
        """Open a session for an identity a backend (or Kerberos, auth/negotiate.py) vouched
        for; returns the raw token (shown once) and the record. Group refresh goes through
        ``backend_name``. A directory account first claims the grants kept under its name."""
        if not is_local(identity.principal):
            await self._claim(identity)
        now = self._now()
        token = secrets.token_urlsafe(32)
        record = SessionRecord(
            id=secrets.token_hex(8),
            token_hash=hash_token(token),
            user=identity.user,
            groups=tuple(sorted(identity.groups)),
            backend=backend_name,
            created_at=now,
            expires_at=now + self._lifetime,
            refreshed_at=now,
            principal=identity.principal,
        )
        await self._store.create_session(record)
        self.log.info(
            "sign-in {user} from {address} via {backend}",
            user=identity.user,
            address=_loggable(address),
            backend=backend_name,
            session=record.id,
        )
        return token, record

    async def resolve(self, token: str | None) -> SessionRecord:
        """The live session for a bearer token (refreshed and slid forward), or SessionExpired."""
        if not token:
            raise SessionExpired(SESSION_EXPIRED_MESSAGE)
        record = await self._store.get_session(hash_token(token))
        now = self._now()
        if record is None:
            raise SessionExpired(SESSION_EXPIRED_MESSAGE)
        if now >= record.expires_at or (
            self._max_age is not None and now >= record.created_at + self._max_age
        ):
            await self._store.delete_session(record.token_hash)
            self._retry_at.pop(record.id, None)
            raise SessionExpired(SESSION_EXPIRED_MESSAGE)

        updated = record
        if now - record.refreshed_at >= self._refresh_interval:
            updated = await self._refresh(record, now)
        slid = now + self._lifetime
        if self._max_age is not None:
            slid = min(slid, record.created_at + self._max_age)
        if slid - updated.expires_at >= SLIDE_GRANULARITY:
            updated = replace(updated, expires_at=slid)
        if updated != record:
            await self._store.update_session(updated)
        return updated

    async def _refresh(self, record: SessionRecord, now: datetime) -> SessionRecord:
        retry_at = self._retry_at.get(record.id)
        if retry_at is not None and now < retry_at:
            return record
        backend = self._by_name.get(record.backend)
        if backend is None:
            await self._end(record, f"backend {record.backend!r} is no longer configured")
        identity = Identity(
            user=record.user,
            groups=frozenset(record.groups),
            backend=record.backend,
            principal=record.principal,
        )
        try:
            fresh = await backend.refresh(identity)
        except SignInRefused as e:
            await self._end(record, e.reason)
        except BackendUnavailable as e:
            self.log.warn(
                "cannot refresh groups of {user} (session {session}) via {backend}: {error}; "
                "keeping the previous groups",
                user=record.user,
                session=record.id,
                backend=record.backend,
                error=str(e),
            )
            if len(self._retry_at) >= _MAX_RETRY_ENTRIES:
                self._retry_at.clear()
            self._retry_at[record.id] = now + REFRESH_RETRY
            return record
        self._retry_at.pop(record.id, None)
        if fresh.principal != record.principal:  # a session from before schema 5, or a rename
            if await self._store.principal_block(fresh.principal) is not None:
                await self._end(record, "account disabled in smartsyncd")
            if not is_local(fresh.principal):
                await self._claim(fresh)
        return replace(
            record,
            user=fresh.user,
            principal=fresh.principal,
            groups=tuple(sorted(fresh.groups)),
            refreshed_at=now,
        )

    async def _claim(self, identity: Identity) -> None:
        """Grants made by name to a directory account (before schema 5) become its id's."""
        claimed = await self._store.claim_name_grants(identity.principal, identity.user)
        if claimed:
            self.log.info(
                "{count} grant(s) by name {user} now belong to {principal}",
                count=claimed, user=identity.user, principal=identity.principal,
            )

    async def _end(self, record: SessionRecord, reason: str) -> NoReturn:
        """Delete the session and raise SessionExpired (the account is gone or disabled)."""
        await self._store.delete_session(record.token_hash)
        self._retry_at.pop(record.id, None)
        self.log.info(
            "session {session} of {user} ended: {reason}",
            session=record.id,
            user=record.user,
            reason=reason,
        )
        raise SessionExpired(SESSION_EXPIRED_MESSAGE)

    async def sign_out(self, token: str) -> None:
        """End the session of ``token`` (unknown tokens are ignored: sign-out is idempotent)."""
        if not token:
            return
        token_hash = hash_token(token)
        record = await self._store.get_session(token_hash)
        if record is None:
            return
        await self._store.delete_session(token_hash)
        self._retry_at.pop(record.id, None)
        self.log.info("sign-out {user} (session {session})", user=record.user, session=record.id)
