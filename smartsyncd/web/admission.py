"""Admission before sign-in: what a client that has not shown a valid session may cost.

* ``route_body_limit``: the body limit of a request, decided from its request line when the
  headers are complete (``UploadRequest.gotLength``), before any of the body is read: 64 KiB
  for ``/v1/login``, 1 MiB for every other JSON route; a commit may go up to 64 MiB only once
  its bearer token resolved to a live session (the transport is paused meanwhile), a chunk
  upload only once it is authorized (web/upload.py). Over the limit: ``413`` JSON naming it.
* ``ClientAddresses``: per client address, the open connections (over the cap: closed at
  once) and the body bytes held for requests not yet authenticated (over the cap: ``429``).
* The channel's total deadline (``GuardedChannel`` in web/bodies.py): an unauthenticated
  request, headers and body, must arrive whole within ``request_deadline`` seconds of its first
  byte; the idle timeout that every byte restarts does not stop a client that drips.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from smartsyncd.web.limits import ClientLimits, Limits

_ENGAGEMENTS = b"/v1/engagements/"
_COMMIT = b"/commit"


def _path(uri: bytes) -> bytes:
    return unquote_to_bytes(uri.split(b"?", 1)[0])


def is_commit(method: bytes | None, uri: bytes | None) -> bool:
    """``POST /v1/engagements/<eng>/commit``: the one JSON route with a large body."""
    if method != b"POST" or not uri:
        return False
    path = _path(uri)
    if not (path.startswith(_ENGAGEMENTS) and path.endswith(_COMMIT)):
        return False
    name = path[len(_ENGAGEMENTS) : -len(_COMMIT)]
    return bool(name) and b"/" not in name


def route_body_limit(method: bytes | None, uri: bytes | None, limits: Limits) -> int:
    """The body limit of a request before its session is checked."""
    if uri and _path(uri) == b"/v1/login":
        return limits.login_json
    return min(limits.small_json, limits.json_body)


class ClientAddresses:
    """Open connections and unauthenticated body bytes per client address (one per Site)."""

    def __init__(self, limits: ClientLimits = ClientLimits()) -> None:
        self.limits = limits
        self._connections: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def connect(self, host: str) -> bool:
        """Count a new connection; False (not counted) when ``host`` is at its cap."""
        n = self._connections.get(host, 0)
        if n >= self.limits.connections_per_address:
            return False
        self._connections[host] = n + 1
        return True

    def disconnect(self, host: str) -> None:
        n = self._connections.get(host, 0) - 1
        if n > 0:
            self._connections[host] = n
        else:
            self._connections.pop(host, None)

    def charge(self, host: str, n: int) -> bool:
        """Hold ``n`` more unauthenticated bytes for ``host``; False (not held) over the cap."""
        held = self._bytes.get(host, 0) + n
        if held > self.limits.unauthenticated_bytes_per_address:
            return False
        self._bytes[host] = held
        return True

    def release(self, host: str, n: int) -> None:
        held = self._bytes.get(host, 0) - n
        if held > 0:
            self._bytes[host] = held
        else:
            self._bytes.pop(host, None)

    def open_connections(self) -> int:
        """Connections open now, every address together (metrics)."""
        return sum(self._connections.values())

    def held(self, host: str) -> tuple[int, int]:
        """(connections, unauthenticated bytes) of ``host`` now."""
        return self._connections.get(host, 0), self._bytes.get(host, 0)
