"""Typed calls of an engagement's admins (issue 17; docs/protocol.md "Engagement admin").

``EngagementAdmin`` speaks for one engagement over an existing connection (a ``ServerAPI``:
its transport retries, signs in again and maps refusals): break a check-out, list and abandon
sync copies, finalize and reopen, list, give and take away roles. Answers are parsed strictly
into the dataclasses below; a refusal is its typed ``ServerRefused`` (``Forbidden`` for a member
whose role is not ``admin``, with ``required``; ``LastAdmin``; ``UnsyncedCopies``; ``NotFound``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import quote

from smartsyncd.client.errors import ProtocolError
from smartsyncd.client.transport import Transport
from smartsyncd.client.wire import FinalizedInfo, JSONObject, LockInfo, field, obj

GrantKind = Literal["user", "group"]


@dataclass(frozen=True)
class CopyInfo:
    """A sync copy as the server knows it (times are ISO 8601 UTC text)."""

    copy: str
    user: str
    host: str
    registered_at: str
    last_contact: str
    unsynced: int
    unsynced_since: str | None
    abandoned_at: str | None
    abandoned_by: str | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class GrantInfo:
    """A role on the engagement: ``principal`` is the server's id (``local:alice``,
    ``ad:S-1-...``, a group's id), ``name`` what people see."""

    kind: GrantKind
    principal: str
    name: str
    role: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FinalizeAnswer:
    """The sign-off, and the copies that held unsynced work when it was forced."""

    finalized: FinalizedInfo
    unsynced_copies: tuple[CopyInfo, ...]


class EngagementAdmin:
    """The admin calls for ``engagement`` over ``api`` (a signed-in ``ServerAPI``)."""

    def __init__(self, api: Transport, engagement: str) -> None:
        self._api = api
        self.engagement = engagement

    def _url(self, *rest: str) -> str:
        return "/v1/engagements/" + "/".join(quote(p, safe="") for p in (self.engagement, *rest))

    async def _post(self, what: str, *rest: str, body: JSONObject | None = None) -> JSONObject:
        return obj(await self._api._json("POST", self._url(*rest), body=body or {}), what)

    async def break_lock(self, path: str, reason: str) -> LockInfo:
        """End another user's check-out of ``path`` (audited with ``reason``)."""
        data = await self._post("lock break", "locks", "break", body={"path": path, "reason": reason})
        return parse_lock(data.get("lock"))

    async def copies(self) -> list[CopyInfo]:
        data = obj(await self._api._json("GET", self._url("copies")), "copies")
        return [parse_copy(item) for item in field(data, "copies", list, "copies")]

    async def abandon_copy(self, copy_id: str, wipe: bool = False) -> CopyInfo:
        """Revoke a copy for good (a lost laptop): its session ends, its commits are refused;
        ``wipe`` also orders it wiped at its next contact with the server."""
        body: JSONObject = {"wipe": True} if wipe else {}
        answer = await self._post("abandon", "copies", copy_id, "abandon", body=body)
        return parse_copy(answer.get("copy"))

    async def finalize(self, reason: str, force: bool = False) -> FinalizeAnswer:
        """Sign the engagement off (read-only); ``UnsyncedCopies`` unless ``force``."""
        data = await self._post("finalize", "finalize", body={"reason": reason, "force": force})
        info = obj(data.get("finalized"), "finalize")
        pending = field(data, "unsynced_copies", list, "finalize")
        return FinalizeAnswer(_finalized(info), tuple(parse_copy(c) for c in pending))

    async def reopen(self, reason: str) -> None:
        data = await self._post("reopen", "reopen", body={"reason": reason})
        if data.get("finalized") is not None:
            raise ProtocolError("reopen answer: the engagement is still finalized")

    async def grants(self) -> list[GrantInfo]:
        data = obj(await self._api._json("GET", self._url("grants")), "grants")
        return [parse_grant(item) for item in field(data, "grants", list, "grants")]

    async def grant(self, kind: GrantKind, name: str, role: str) -> GrantInfo:
        """Give the user or group ``name`` ``role`` (replacing a role it had)."""
        data = await self._post("grant", "grants", body={kind: name, "role": role})
        return parse_grant(data.get("grant"))

    async def revoke(self, kind: GrantKind, name: str) -> list[GrantInfo]:
        """Take the user's or group's role away; the grants removed (``NotFound`` if none)."""
        data = await self._post("revoke", "grants", "revoke", body={kind: name})
        return [parse_grant(item) for item in field(data, "revoked", list, "revoke")]

    async def ignore_rules(self) -> tuple[str | None, str | None]:
        """The engagement-wide ignore rules and their digest (``None`` both when none)."""
        data = obj(await self._api._json("GET", self._url("ignore")), "ignore rules")
        return _text_or_none(data, "rules"), _text_or_none(data, "digest")

    async def set_ignore_rules(self, text: str | None) -> str | None:
        """Set (``text``) or clear (``None``) the rules; the new digest. A bad pattern is
        refused by the server naming its line (``BadRequest``)."""
        data = await self._post("ignore rules", "ignore", body={"rules": text})
        return _text_or_none(data, "digest")


def parse_lock(value: object) -> LockInfo:
    data = obj(value, "lock")
    return LockInfo(
        path=field(data, "path", str, "lock"), holder=field(data, "holder", str, "lock", True),
        since=field(data, "since", str, "lock", True),
        expires_at=field(data, "expires_at", str, "lock", True),
    )


def parse_copy(value: object) -> CopyInfo:
    data = obj(value, "copy")

    def text(key: str) -> str:
        return str(field(data, key, str, "copy"))

    def maybe(key: str) -> str | None:
        found = field(data, key, str, "copy", True)
        return None if found is None else str(found)

    return CopyInfo(
        copy=text("copy"), user=text("user"), host=text("host"),
        registered_at=text("registered_at"), last_contact=text("last_contact"),
        unsynced=int(field(data, "unsynced", int, "copy")), unsynced_since=maybe("unsynced_since"),
        abandoned_at=maybe("abandoned_at"), abandoned_by=maybe("abandoned_by"),
    )


def parse_grant(value: object) -> GrantInfo:
    data = obj(value, "grant")
    kind = field(data, "kind", str, "grant")
    if kind not in ("user", "group"):
        raise ProtocolError(f"grant: kind {kind!r} is neither 'user' nor 'group'")
    return GrantInfo(
        kind="user" if kind == "user" else "group", principal=field(data, "principal", str, "grant"),
        name=field(data, "name", str, "grant"), role=field(data, "role", str, "grant"),
    )


def _finalized(info: JSONObject) -> FinalizedInfo:
    def maybe(key: str) -> str | None:
        found = field(info, key, str, "finalize", True)
        return None if found is None else str(found)

    return FinalizedInfo(maybe("at"), maybe("by"), maybe("reason"))


def _text_or_none(data: JSONObject, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"ignore rules answer: {key!r} is not text")
    return value
