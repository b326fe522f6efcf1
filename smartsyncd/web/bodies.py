"""Request input: size-limited bodies, strict JSON parsing, typed field and query access.

``LimitedRequest`` is the Site's request factory. It refuses a declared ``Content-Length`` over
the global cap with 413 before reading any of the body, counts the bytes of chunked bodies
against the same cap, and keeps bodies in memory (the cap bounds them; the default Request
spools bodies over 100 KB to a temp file, an extra disk write on the reactor thread). Each
endpoint then applies its own, smaller limit with ``read_body``.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from smartsyncd.core.errors import BadRequest, TooLarge
from smartsyncd.core.jsonscan import scan_depth
from smartsyncd.core.jsonvalue import JSONDict, JSONValue
from smartsyncd.web.admission import ClientAddresses

if TYPE_CHECKING:
    from smartsyncd.runtime.twistedcompat import GenericHTTPChannelProtocol

log = Logger(namespace="smartsyncd.web")

GLOBAL_BODY_CAP = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32



class LimitedRequest(Request):
    """A Request that never accepts a body over ``max_body`` bytes (413 and disconnect).

    ``max_body`` is the global cap until ``gotLength`` (web/upload.py) sets the route's limit.
    Until the request is ``authenticated``, its body bytes are also held against the client
    address's cap (``admission.ClientAddresses``; over it: 429 and disconnect).
    """

    max_body: int = GLOBAL_BODY_CAP

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._body_bytes = 0
        self._refused = False
        self._held = 0
        self.authenticated = False

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse()
            return
        if not self.authenticated and not self._hold(len(data)):
            return
        self.content.write(data)  # type: ignore[union-attr]

    @property
    def answered_early(self) -> bool:
        """Refused and answered before its body was read: it never reaches ``finish``."""
        return self._refused

    def mark_authenticated(self) -> None:
        """The request's session checked out: no deadline, no address cap for the rest."""
        self.authenticated = True
        mark = getattr(self.channel, "request_authenticated", None)
        if mark is not None:
            mark()

    def _hold(self, n: int) -> bool:
        addresses = client_addresses(self.channel)
        if addresses is None:
            return True
        if addresses.charge(client_host(self.channel), n):
            self._held += n
            return True
        limit = addresses.limits.unauthenticated_bytes_per_address
        self._answer_and_close(
            429,
            b"Too Many Requests",
            {
                "error": "rate_limited",
                "message": f"over {limit} bytes of requests before sign-in from this address",
                "limit": limit,
            },
        )
        return False

    def _release(self) -> None:
        if self._held:
            addresses = client_addresses(self.channel)
            if addresses is not None:
                addresses.release(client_host(self.channel), self._held)
            self._held = 0

    def finish(self) -> None:
        self._release()
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self._release()
        super().connectionLost(reason)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode("latin-1") if isinstance(name, str) else name).lower() == b"server":
            return  # no Server header: no version for scanners, and bytes on every answer
        super().setHeader(name, value)

    def process(self) -> None:
        if self._refused:
            return  # answered with 413 already; the connection is closing
        super().process()

    def _refuse(self, limit: int | None = None) -> None:
        limit = self.max_body if limit is None else limit
        peer = self.getClientAddress()
        log.info(
            "refused a request body over {limit} bytes from {address}",
            limit=limit,
            address=getattr(peer, "host", str(peer)),
        )
        self._answer_and_close(
            413,
            b"Request Entity Too Large",
            {"error": "too_large", "message": f"request body over the limit of {limit} bytes", "limit": limit},
        )

    def _answer_and_close(self, status: int, reason: bytes, answer: JSONDict) -> None:
        self._refused = True
        self.content = BytesIO()
        self._release()
        # No "100 Continue" after we said no (the channel sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps(answer).encode("utf-8")
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, reason, len(body))
        )
        transport: Any = self.channel.transport
        transport.write(head + body)
        self.channel.loseConnection()


def client_addresses(channel: object) -> ClientAddresses | None:
    """The Site's per-address book (``make_site`` sets it), if any."""
    return getattr(getattr(channel, "site", None), "client_addresses", None)


def client_host(channel: object) -> str:
    peer = getattr(channel, "transport", None)
    peer = peer.getPeer() if peer is not None else None
    return str(getattr(peer, "host", peer))


class GuardedChannel(HTTPChannel):
    """An HTTPChannel that ignores everything after it refused a request with 400, caps the
    connections per client address, and gives each unauthenticated request a total deadline.

    Twisted's channel answers a bad request line, an over-long line or a bad version with 400
    and closes, but keeps parsing the lines that arrived in the same packet: an empty line then
    reaches ``allHeadersReceived`` with no request line parsed (``AttributeError: _version``),
    one unhandled error with a traceback in the log per such packet (found by the API fuzz
    test: ``GET / HTTP/2``, an empty line, then a 20 KB line).

    The deadline (``ClientLimits.request_deadline``) runs from the connection (TLS handshake
    included) or from the first byte of each later request until its last body byte, or until
    the request is authenticated (a commit or chunk upload whose session checked out); when it
    passes, 408 and close. The idle timeout, which every byte restarts, stays as it was.
    """

    _refused = False
    _host: str | None = None
    _deadline: IDelayedCall | None = None
    _awaiting_request = False
    _abort_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        addresses = client_addresses(self)
        if addresses is None:
            return
        host = client_host(self)
        if not addresses.connect(host):
            log.info("refused a connection from {address}: too many open", address=host)
            self._refused = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._host = host
        self._arm(addresses.limits.request_deadline)

    def _arm(self, seconds: float) -> None:
        self._cancel_deadline()
        self._deadline = self.callLater(seconds, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def request_authenticated(self) -> None:
        self._cancel_deadline()

    def _deadline_passed(self) -> None:
        self._deadline = None
        addresses = client_addresses(self)
        seconds = addresses.limits.request_deadline if addresses else 0
        log.info(
            "closed a connection from {address}: request not received within {seconds} s",
            address=self._host,
            seconds=seconds,
        )
        self._refused = True
        for request in self.requests:
            if isinstance(request, LimitedRequest):
                request._refused = True
                request._release()
        body = json.dumps(
            {"error": "timeout", "message": f"request not received within {seconds} seconds"}
        ).encode("utf-8")
        head = (
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        transport: Any = self.transport
        transport.write(head + body)
        self.setTimeout(None)  # the abort below takes over from the idle timeout
        self.loseConnection()
        # a client that does not read its answer does not hold the connection either
        self._abort_call = self.callLater(15, self.transport.abortConnection)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_request and not self._refused:
            self._awaiting_request = False
            addresses = client_addresses(self)
            if addresses is not None:
                self._arm(addresses.limits.request_deadline)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        self._awaiting_request = True
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._host is not None:
            addresses = client_addresses(self)
            if addresses is not None:
                addresses.disconnect(self._host)
            self._host = None
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refused = True
        super()._respondToBadRequestAndDisconnect()

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)


def guarded_channel_factory() -> GenericHTTPChannelProtocol:
    """``Site.protocol`` (set on the instance, so called without arguments): Twisted's
    HTTP/1.1-or-2 wrapper around a ``GuardedChannel``."""
    from smartsyncd.runtime.twistedcompat import (
        GenericHTTPChannelProtocol as _GenericHTTPChannelProtocol,
    )

    return _GenericHTTPChannelProtocol(GuardedChannel())


def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ``TooLarge`` (413, ``limit``) when it is over ``limit`` bytes."""
    content = request.content
    if content is None:
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        raise TooLarge(f"request body over the limit of {limit} bytes", limit=limit)
    content.seek(0)
    data = content.read()
    return bytes(data)


def check_depth(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``max_depth`` before the recursive parser sees it.

    ``core.jsonscan.scan_depth``: a few linear byte passes in C, no regular expression (the
    one this replaced backtracked: a ``"`` then 24,000 ``\\"`` took 8 s of the reactor).
    """
    if scan_depth(body, max_depth).depth is None:
        raise BadRequest(f"malformed JSON or JSON nested deeper than {max_depth} levels")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> JSONValue:
    """Parse a UTF-8 JSON body strictly (no NaN/Infinity, depth-limited); BadRequest if not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    check_depth(body, max_depth)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"malformed JSON: {e}") from None


def read_json(request: Request, limit: int) -> JSONValue:
    """Read a body under ``limit`` and parse it as JSON."""
    return parse_json(read_body(request, limit))


# -- typed access to decoded JSON ----------------------------------------------------------


def _bad_field(field: str, expected: str) -> BadRequest:
    return BadRequest(f"field {field!r} must be {expected}", field=field)


def expect_object(value: object, field: str = "body") -> JSONDict:
    if not isinstance(value, dict):
        raise _bad_field(field, "a JSON object")
    return value


def get_str(
    obj: JSONDict,
    key: str,
    field: str | None = None,
    *,
    max_len: int | None = None,
    non_empty: bool = False,
) -> str:
    name = field or key
    value = obj.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} is missing", field=name) if value is None else _bad_field(
            name, "a string"
        )
    if non_empty and not value:
        raise _bad_field(name, "a non-empty string")
    if max_len is not None and len(value) > max_len:
        raise _bad_field(name, f"a string of at most {max_len} characters")
    if not value.isascii() and not _is_unicode(value):
        raise _bad_field(name, "valid Unicode (it has a lone surrogate)")
    return value


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# integers are stored as 64-bit signed values: larger ones are refused at the edge
INT64_MAX = 2**63 - 1


def get_int(
    obj: JSONDict,
    key: str,
    field: str | None = None,
    *,
    minimum: int | None = None,
    nullable: bool = False,
    required: bool = True,
) -> int | None:
    name = field or key
    if key not in obj:
        if required:
            raise BadRequest(f"field {name!r} is missing", field=name)
        return None
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad_field(name, "an integer or null" if nullable else "an integer")
    if minimum is not None and value < minimum:
        raise _bad_field(name, f"an integer >= {minimum}")
    if not -INT64_MAX <= value <= INT64_MAX:
        raise _bad_field(name, f"an integer of at most {INT64_MAX}")
    return value


def get_list(obj: JSONDict, key: str, field: str | None = None, *, max_len: int | None = None) -> list[JSONValue]:
    name = field or key
    value = obj.get(key)
    if not isinstance(value, list):
        raise BadRequest(f"field {name!r} is missing", field=name) if value is None else _bad_field(
            name, "a list"
        )
    if max_len is not None and len(value) > max_len:
        raise TooLarge(f"field {name!r} has more than {max_len} entries", field=name, limit=max_len)
    return value


# -- query arguments -----------------------------------------------------------------------


def _query_value(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    try:
        return bytes(values[-1]).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"query argument {name!r} is not UTF-8", field=name) from None


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = _query_value(request, name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest(f"query argument {name!r} must be an integer", field=name)
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise BadRequest(f"query argument {name!r} must be {bound}", field=name)
    return value


def asks_folders(request: Request) -> bool:
    """``folders=1``: the client takes folder entries (docs/protocol.md, "Folder entries");
    ``0`` or absent: it is shown none."""
    return query_int(request, "folders", 0, 0, 1) == 1


def query_float(request: Request, name: str, default: float, minimum: float, maximum: float) -> float:
    raw = _query_value(request, name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", raw):
        raise BadRequest(f"query argument {name!r} must be a number", field=name)
    value = float(raw)
    if not minimum <= value <= maximum:
        raise BadRequest(f"query argument {name!r} must be between {minimum} and {maximum}", field=name)
    return value


def query_str(request: Request, name: str) -> str | None:
    return _query_value(request, name)
