"""The answer to a large chunk fetch (web/pull.py): joined on a pool thread, framed with
Content-Length (a chunked answer would be joined once more with its size line), and still the
records asked for, in the order asked."""

from __future__ import annotations

import json
import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from webkit import Env, chunk_of, in_memory

from smartsyncd.core import chunkstream
from smartsyncd.web import pull
from smartsyncd.web.app import make_site

INLINE_ANSWER = 256 * 1024  # the test limits' answer cap (600,000 B) is under the real threshold


@in_memory
async def test_a_large_fetch_answer_is_framed_by_its_length(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pull, "INLINE_ANSWER", INLINE_ANSWER)
    token = await env.login("alice")
    datas = [os.urandom(60_000) for _ in range(INLINE_ANSWER // 60_000 + 1)]
    pairs = [chunk_of(d) for d in datas]
    for start in range(0, len(pairs), 8):  # each upload under the test limits' body cap
        r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token,
                           data=chunkstream.encode_records(p[1] for p in pairs[start:start + 8]))
        assert r.status == 200
    hashes = [ref.hash for ref, _ in pairs]
    asked = hashes[::-1] + hashes[:1]  # reversed, and one twice
    # straight to the site's protocol, to see the framing the client's parser hides
    proto = make_site(env.api).buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    proto.makeConnection(transport)
    request = json.dumps({"chunks": asked}).encode()
    proto.dataReceived(
        b"POST /v1/engagements/alpha/chunks/fetch HTTP/1.1\r\nHost: a\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (token.encode(), len(request), request))
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) > INLINE_ANSWER
    assert b"\r\ncontent-length: %d" % len(body) in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert [rec[0] for rec in chunkstream.decode_records(body)] == asked
    raw = chunkstream.decode_to_raw(body)
    assert [raw[h] for h in hashes] == datas
