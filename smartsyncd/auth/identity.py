"""The result of a successful sign-in, and the interface every sign-in backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Identity:
    """A signed-in user.

    ``user`` is the canonical account name (local name, or the directory's sAMAccountName,
    lower-cased). ``groups`` are stable group ids as grants store them (AD objectSid strings
    such as ``S-1-5-21-...``; local group names). ``group_names`` maps ids to display names for
    logs and ``GET /v1/session``. ``principal`` is the backend-qualified id grants, sessions
    and blocks key on (``core.principals``: ``local:alice``, ``ad:S-1-5-21-...``); it defaults
    to ``<backend>:<user>``.
    """

    user: str
    groups: frozenset[str] = frozenset()
    backend: str = "local"
    group_names: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    principal: str = ""

    def __post_init__(self) -> None:
        if not self.principal:
            object.__setattr__(self, "principal", f"{self.backend}:{self.user}")


class SignInRefused(Exception):
    """A sign-in was refused. ``reason`` is for the server log only (never sent to clients);
    the client always sees one generic "sign-in failed"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownUser(SignInRefused):
    """This backend does not know the user at all: the next backend may try.

    Any other ``SignInRefused`` means the backend knows the user and refused (stop there)."""


class BackendUnavailable(Exception):
    """The backend could not decide (directory unreachable): try the next backend, or 503."""


class Authenticator(Protocol):
    """One sign-in backend (local accounts, LDAP/AD)."""

    name: str

    async def authenticate(self, user: str, password: str) -> Identity:
        """Return the identity or raise ``SignInRefused`` / ``BackendUnavailable``.

        Must refuse an empty password before contacting anything.
        """
        ...

    async def refresh(self, identity: Identity) -> Identity:
        """Re-read group membership for a long-lived session (raise ``SignInRefused`` if the
        account is gone or disabled)."""
        ...
