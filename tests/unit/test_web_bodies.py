"""Request input: JSON depth and type checks, per-endpoint size limits, and LimitedRequest's
global cap enforced on the raw HTTP connection (before the body is read)."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from smartsyncd.core.errors import BadRequest, TooLarge
from smartsyncd.web.bodies import (
    LimitedRequest,
    check_depth,
    expect_object,
    get_int,
    get_list,
    get_str,
    parse_json,
    read_body,
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_32_is_accepted_and_33_refused() -> None:
    assert parse_json(nested(32)) is not None
    with pytest.raises(BadRequest):
        parse_json(nested(33))
    obj = b'{"a":' * 32 + b"1" + b"}" * 32
    assert parse_json(obj) is not None
    with pytest.raises(BadRequest):
        parse_json(b'{"a":' * 33 + b"1" + b"}" * 33)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"p": "[[[[{{{{" * 100, "q": 'a\\"[[[[', "r": [[1]]}).encode()
    assert parse_json(text)["r"] == [[1]]


def test_very_deep_json_is_refused_without_recursion() -> None:
    with pytest.raises(BadRequest, match="nested deeper"):
        parse_json(b"[" * 1_000_000)
    with pytest.raises(BadRequest):
        check_depth(b'{"a":' * 100_000)


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1,]", b"\xff\xfe", b'{"a": NaN}', b'{"a": Infinity}', b"", b"1" * 5000],
)
def test_malformed_json_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json(body)


def test_typed_fields_name_the_field() -> None:
    obj = {"n": True, "s": 3, "l": "x", "ok": 5, "null": None}
    with pytest.raises(BadRequest) as e:
        get_int(obj, "n", "changes[0].base")
    assert e.value.details["field"] == "changes[0].base"
    with pytest.raises(BadRequest, match="'s' must be a string"):
        get_str(obj, "s")
    with pytest.raises(BadRequest, match="'missing' is missing"):
        get_str(obj, "missing")
    with pytest.raises(BadRequest):
        get_list(obj, "l")
    with pytest.raises(BadRequest):
        expect_object([1])
    assert get_int(obj, "ok", minimum=0) == 5
    assert get_int(obj, "null", nullable=True) is None
    with pytest.raises(BadRequest):
        get_int(obj, "ok", minimum=6)
    with pytest.raises(BadRequest):
        get_str({"b": "x" * 129}, "b", max_len=128)
    with pytest.raises(BadRequest):
        get_str({"b": ""}, "b", non_empty=True)
    with pytest.raises(TooLarge):
        get_list({"l": [1, 2, 3]}, "l", max_len=2)


class _Req:
    def __init__(self, data: bytes) -> None:
        self.content = BytesIO(data)


def test_read_body_enforces_the_endpoint_limit() -> None:
    assert read_body(_Req(b"x" * 10), 10) == b"x" * 10  # type: ignore[arg-type]
    with pytest.raises(TooLarge) as e:
        read_body(_Req(b"x" * 11), 10)  # type: ignore[arg-type]
    assert e.value.details["limit"] == 10
    assert e.value.status == 413


# -- LimitedRequest on a real HTTPChannel ----------------------------------------------------


class Echo(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request) -> bytes:  # type: ignore[no-untyped-def]
        data = request.content.read()
        self.bodies.append(data)
        return b"got %d" % len(data)


class SmallRequest(LimitedRequest):
    max_body = 1000


def connect(request_factory: type = LimitedRequest) -> tuple[Echo, StringTransport, object]:
    echo = Echo()
    site = Site(echo, timeout=None, reactor=Clock())  # no global reactor, no idle timer
    site.requestFactory = request_factory
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    proto.makeConnection(transport)
    return echo, transport, proto


def test_declared_length_over_the_cap_is_refused_before_the_body() -> None:
    echo, transport, proto = connect()
    proto.dataReceived(  # type: ignore[attr-defined]
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
        % (64 * 1024 * 1024 + 1)
    )
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in out
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "too_large" and body["limit"] == 64 * 1024 * 1024
    assert transport.disconnecting
    assert echo.bodies == []


def test_chunked_body_over_the_cap_is_refused() -> None:
    echo, transport, proto = connect(SmallRequest)
    proto.dataReceived(  # type: ignore[attr-defined]
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 600
    for _ in range(2):
        proto.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))  # type: ignore[attr-defined]
    proto.dataReceived(b"0\r\n\r\n")  # type: ignore[attr-defined]
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    assert echo.bodies == []


def test_body_under_the_cap_reaches_the_resource_and_no_server_header_is_sent() -> None:
    echo, transport, proto = connect(SmallRequest)
    proto.dataReceived(  # type: ignore[attr-defined]
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert echo.bodies == [b"abcde"]
    headers = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nserver:" not in headers  # issue 15: no Server header, no version
    assert b"twisted" not in headers
