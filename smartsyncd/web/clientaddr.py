"""The client's address as smartsyncd reports and rate-limits it, behind a trusted proxy or not.

Behind HAProxy every connection comes from the proxy, so the peer address alone would put the
whole firm in one rate-limit bucket. When the peer is one of ``[server] trusted_proxies``
(addresses or networks), the client is the last ``X-Forwarded-For`` entry, the one that proxy
appended (``option forwardfor``); entries before it are whatever the client sent and are not
believed. From any other peer the header is ignored. One proxy hop: list the proxy that connects
to smartsyncd.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.server import Request
from zope.interface import provider

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``10.0.0.5, 10.1.0.0/24`` -> networks; ValueError naming a bad entry."""
    found: list[Network] = []
    for part in text.replace(",", " ").split():
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {part!r}") from None
    return tuple(found)


def _trusted(host: str, trusted: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)


def client_address(request: Request, trusted: Iterable[Network] | None = None) -> str:
    """The client's IP as text: the peer, or what a trusted proxy says the peer was."""
    if trusted is None:
        trusted = getattr(getattr(request, "site", None), "trusted_proxies", ())
    peer = str(getattr(request.getClientAddress(), "host", "unknown"))
    if not trusted or not _trusted(peer, trusted):
        return peer
    headers = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
    if not headers:
        return peer
    last = headers[-1].split(b",")[-1].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


class _ReportedRequest:
    """The request as the access log sees it: its client address is ``client_address``."""

    def __init__(self, request: Request, trusted: tuple[Network, ...]) -> None:
        self._request = request
        self._trusted = trusted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def getClientAddress(self) -> IPv4Address | IPv6Address:
        host = client_address(self._request, self._trusted)
        port = getattr(self._request.getClientAddress(), "port", 0)
        if ":" in host:
            return IPv6Address("TCP", host, port)
        return IPv4Address("TCP", host, port)


def access_log_formatter(trusted: tuple[Network, ...]) -> IAccessLogFormatter:
    """Twisted's combined log format, with the client address from ``client_address``."""

    @provider(IAccessLogFormatter)
    def formatter(timestamp: str, request: Request) -> str:
        return str(combinedLogFormatter(timestamp, _ReportedRequest(request, trusted)))

    return formatter
