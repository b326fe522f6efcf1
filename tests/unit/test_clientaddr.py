"""Which address is the client: X-Forwarded-For is believed only from a trusted proxy."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.web.http_headers import Headers

from smartsyncd.web.clientaddr import client_address, parse_trusted_proxies


class Req:
    def __init__(self, peer: str, *forwarded: bytes) -> None:
        self._peer = IPv4Address("TCP", peer, 5000)
        self.requestHeaders = Headers()
        if forwarded:
            self.requestHeaders.setRawHeaders(b"x-forwarded-for", list(forwarded))

    def getClientAddress(self) -> IPv4Address:
        return self._peer


TRUSTED = parse_trusted_proxies("10.0.0.5, 192.168.7.0/24")


def test_only_a_trusted_peer_may_name_the_client() -> None:
    assert client_address(Req("10.0.0.5", b"203.0.113.9"), TRUSTED) == "203.0.113.9"
    assert client_address(Req("192.168.7.40", b"203.0.113.9"), TRUSTED) == "203.0.113.9"
    # anyone else's header is ignored
    assert client_address(Req("198.51.100.1", b"203.0.113.9"), TRUSTED) == "198.51.100.1"
    assert client_address(Req("10.0.0.5", b"203.0.113.9"), ()) == "10.0.0.5"


def test_the_entry_the_proxy_appended_wins_over_what_the_client_sent() -> None:
    req = Req("10.0.0.5", b"1.2.3.4, 5.6.7.8", b"203.0.113.9")
    assert client_address(req, TRUSTED) == "203.0.113.9"
    assert client_address(Req("10.0.0.5", b"1.2.3.4, 203.0.113.9"), TRUSTED) == "203.0.113.9"
    # garbage or nothing: the peer itself
    assert client_address(Req("10.0.0.5", b"not-an-ip"), TRUSTED) == "10.0.0.5"
    assert client_address(Req("10.0.0.5"), TRUSTED) == "10.0.0.5"


def test_bad_trusted_proxy_entries_are_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_trusted_proxies("10.0.0.1 10.0.0.300")
