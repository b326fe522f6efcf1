"""A TCP proxy on loopback that counts the bytes each way: wire bytes including TLS and HTTP."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTCP
from twisted.protocols import portforward


class Counter:
    def __init__(self) -> None:
        self.up = 0  # client -> server
        self.down = 0  # server -> client

    @property
    def total(self) -> int:
        return self.up + self.down

    def reset(self) -> None:
        self.up = self.down = 0


class _CountingServerSide(portforward.ProxyServer):
    def dataReceived(self, data: bytes) -> None:
        self.factory.counter.up += len(data)
        super().dataReceived(data)


class _CountingClientSide(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        self.factory.counter.down += len(data)
        super().dataReceived(data)


class _CountingClientFactory(portforward.ProxyClientFactory):
    protocol = _CountingClientSide


def listen_counting_proxy(reactor: IReactorTCP, target_port: int) -> tuple[int, Counter]:
    """Listen on a free loopback port forwarding to 127.0.0.1:target_port; returns (port, counter)."""
    counter = Counter()
    factory = portforward.ProxyFactory("127.0.0.1", target_port)
    factory.protocol = _CountingServerSide
    factory.counter = counter  # type: ignore[attr-defined]

    class _ServerSide(_CountingServerSide):
        clientProtocolFactory = type(
            "_F", (_CountingClientFactory,), {"counter": counter}
        )

    factory.protocol = _ServerSide
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port.getHost().port, counter
