"""Choosing the proxy for a server (client/proxy.py): explicit setting, the system's, bypass."""

from __future__ import annotations

import pytest

from smartsyncd.client.errors import UsageError
from smartsyncd.client.proxy import ProxySetting, parse_proxy, proxy_for

URL = "https://files.firm.example:8443"


def test_explicit_setting_wins_and_direct_turns_it_off() -> None:
    system = {"https": "http://sys-proxy:8080"}
    chosen = proxy_for(URL, "http://mine:3128", system=lambda: system, bypass=lambda h: False)
    assert chosen == ProxySetting("mine", 3128)
    assert proxy_for(URL, "direct", system=lambda: system, bypass=lambda h: False) is None


def test_the_system_setting_and_its_bypass_list() -> None:
    system = {"https": "sys-proxy:8080"}
    assert proxy_for(URL, system=lambda: system, bypass=lambda h: False) == ProxySetting(
        "sys-proxy", 8080)
    assert proxy_for(URL, system=lambda: system, bypass=lambda h: h == "files.firm.example") is None
    assert proxy_for(URL, system=dict, bypass=lambda h: False) is None


def test_credentials_become_basic_auth_and_stay_out_of_repr() -> None:
    setting = parse_proxy("http://ann%40firm:s3cr%3At@proxy.firm:3128")
    assert setting.authorization == b"Basic YW5uQGZpcm06czNjcjp0"  # ann@firm:s3cr:t
    assert "s3cr" not in repr(setting) and "YW5u" not in repr(setting)
    assert setting.describe() == "http://proxy.firm:3128"


@pytest.mark.parametrize("bad", ["https://proxy:3128", "socks5://proxy:1080", "http://proxy:port",
                                 "http://"])
def test_unsupported_proxies_are_a_clear_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_proxy(bad)


def test_default_port_is_curls() -> None:
    assert parse_proxy("proxy.firm").port == 1080


class _Recorder:
    """The protocol that asked for the tunnel: records what arrives through it."""

    def __init__(self) -> None:
        self.data = b""
        self.transport = None

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        pass


def _tunnel(answer: bytes, *, auth: bytes | None = None):
    from twisted.internet.defer import succeed
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import StringTransport

    from smartsyncd.client.proxy import ConnectTunnelEndpoint

    transport = StringTransport()
    recorder = _Recorder()

    class Via:
        def connect(self, factory):
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(transport)
            protocol.dataReceived(answer)
            return succeed(protocol)

    endpoint = ConnectTunnelEndpoint(Via(), ProxySetting("proxy", 3128, auth), "files", 8443)
    factory = Factory.forProtocol(lambda: recorder)  # type: ignore[arg-type,return-value]
    results: list = []
    endpoint.connect(factory).addBoth(results.append)
    return transport, recorder, results


def test_a_200_answer_hands_the_stream_on_with_any_bytes_after_it() -> None:
    transport, recorder, results = _tunnel(
        b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n\x16\x03\x01early",
        auth=b"Basic abc")
    assert transport.value() == (b"CONNECT files:8443 HTTP/1.1\r\nHost: files:8443\r\n"
                                 b"Proxy-Authorization: Basic abc\r\n\r\n")
    assert results == [recorder] and recorder.data == b"\x16\x03\x01early"


@pytest.mark.parametrize("answer", [b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                                    b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.0 502 Bad\r\n\r\n"])
def test_a_refusal_fails_the_connection_naming_the_answer(answer: bytes) -> None:
    from smartsyncd.client.proxy import ProxyRefused

    transport, recorder, results = _tunnel(answer)
    assert results[0].check(ProxyRefused)
    assert answer.split(b"\r\n")[0].decode() in str(results[0].value)
    assert transport.disconnecting and recorder.data == b""


def test_an_endless_answer_is_cut_off() -> None:
    from smartsyncd.client.proxy import MAX_PROXY_ANSWER, ProxyRefused

    transport, _recorder, results = _tunnel(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_PROXY_ANSWER)
    assert results[0].check(ProxyRefused) and transport.disconnecting
