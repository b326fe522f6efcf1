"""Single sign-on for the client: ``POST /v1/login`` with ``Authorization: Negotiate`` (RFC 4559).

The token comes from pyspnego with the Kerberos mechanism: SSPI on Windows (the logged-on user,
no password), GSSAPI on Linux and macOS (the ticket ``kinit`` or the login session left in the
credential cache). Getting a service ticket may ask the KDC, so the token is made in a thread.
The server's reply token (``WWW-Authenticate: Negotiate ...``) is checked: mutual
authentication proves the answer came from the holder of the service's key.

One request, on the ServerAPI's TLS trust policy and cookie jar (a load balancer's sticky cookie
set here keeps the session's later requests on the same daemon).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from smartsyncd.client.errors import AuthError, NetworkError, ProtocolError, UsageError
from smartsyncd.client.proxy import tunnels_through
from smartsyncd.runtime.tlsbatching import BatchingEndpointFactory

if TYPE_CHECKING:
    from smartsyncd.client.reactor import ClientReactor
    from smartsyncd.client.transport import HTTPRequester, Transport

log = Logger()

NO_TICKET_HELP = (
    "no usable Kerberos ticket: on Linux or macOS run 'kinit yourname@REALM' (or sign in to the"
    " computer with your domain account); on Windows log on to the domain (a local account has"
    " no ticket)"
)
EXPIRED_TICKET_HELP = (
    "your Kerberos ticket has expired: on Linux or macOS run 'kinit yourname@REALM' again (or"
    " sign out of the computer and in again with your domain account); on Windows lock and"
    " unlock the computer, or log on to the domain again"
)
# KRB5KRB_AP_ERR_TKT_EXPIRED (-1765328352, MIT and Heimdal alike) as GSSAPI's unsigned minor status
_KRB5_TICKET_EXPIRED = 0x96C73A20
_MAX_ANSWER = 64 * 1024


def sso_service(url: str, override: str | None = None) -> str:
    """The Kerberos service the server is reached as: ``HTTP@<host of the URL>`` unless given
    (``HTTP@sync.firm.example``; the SPN ``HTTP/sync.firm.example`` in AD)."""
    if override:
        return override
    host = urlsplit(url).hostname
    if not host:
        raise AuthError(f"cannot tell the server's host name from {url!r}")
    return f"HTTP@{host}"


class _Initiator:
    """One pyspnego client context (blocking calls; run them in a thread)."""

    def __init__(self, service: str) -> None:
        try:
            import spnego
        except ImportError:
            raise UsageError(
                "single sign-on needs pyspnego: pip install 'smartsyncd[sso]'"
            ) from None

        name, _, host = service.partition("@")
        self._context = spnego.client(hostname=host, service=name, protocol="kerberos")

    def first(self) -> bytes:
        token = self._context.step()
        if not token:
            raise AuthError("single sign-on: the Kerberos library produced no token")
        return cast(bytes, token)

    def finish(self, reply: bytes) -> None:
        self._context.step(reply)
        if not self._context.complete:
            raise AuthError("single sign-on: the server's reply did not complete the exchange")


def _ticket_error(service: str, exc: Exception) -> AuthError:
    """What to do about a token pyspnego could not make: an expired ticket says so."""
    base = getattr(exc, "base_error", None)
    # the code, or the library's text for it where a mechglue renumbers codes (macOS untested)
    if getattr(base, "min_code", None) == _KRB5_TICKET_EXPIRED or "): Ticket expired" in str(base):
        return AuthError(f"single sign-on to {service} failed: {EXPIRED_TICKET_HELP}")
    return AuthError(f"single sign-on to {service} failed: {NO_TICKET_HELP} ({exc})")


async def sso_login(api: Transport, service: str, reactor: ClientReactor) -> tuple[str, str]:
    """Sign ``api`` (a ``client.http.ServerAPI``) in with the user's Kerberos ticket.

    Sets ``api.token`` and returns ``(user, token)``. Raises ``AuthError`` with what to do when
    there is no ticket or the server refuses it.
    """
    from spnego.exceptions import SpnegoError

    try:
        initiator = await deferToThread(_Initiator, service)
        token = await deferToThread(initiator.first)
    except SpnegoError as exc:
        raise _ticket_error(service, exc) from None
    proxy = api.proxy  # the API's CONNECT proxy (client/proxy.py), if any
    agent = Agent.usingEndpointFactory(
        reactor,
        BatchingEndpointFactory(
            reactor, api.policy,
            connect_via=tunnels_through(reactor, proxy) if proxy is not None else None,
        ),
    )
    http = cast("HTTPRequester", HTTPClient(agent, cookiejar=api.cookies))
    headers = Headers({
        b"Authorization": [b"Negotiate " + base64.b64encode(token)],
        b"Accept": [b"application/json"],
    })
    url = api.base_url + "/v1/login"
    try:
        response = await http.request(
            "POST", url, headers=headers, allow_redirects=False, reactor=reactor
        )
        body = await response.content()
    except Exception as exc:
        raise NetworkError(f"cannot reach {api.base_url}: {exc}", retryable=True) from exc
    data = _answer(body)
    if response.code == 401:
        message = data.get("message") if isinstance(data.get("message"), str) else ""
        raise AuthError(
            f"single sign-on refused by {api.base_url}: {message or 'ticket not accepted'}"
            " (the server's log says why)"
        )
    if response.code != 200:
        raise NetworkError(
            f"{api.base_url} answered HTTP {response.code} to single sign-on"
            f"{': ' + str(data.get('message')) if data.get('message') else ''}",
            retryable=response.code in (502, 503, 504),
        )
    reply = _reply_token(response.headers.getRawHeaders(b"www-authenticate") or [])
    if reply is None:
        raise AuthError(f"{api.base_url} did not prove its identity (no mutual authentication)")
    try:
        await deferToThread(initiator.finish, reply)
    except SpnegoError as exc:
        raise AuthError(f"{api.base_url} failed mutual authentication: {exc}") from None
    user, session = data.get("user"), data.get("token")
    if not isinstance(user, str) or not isinstance(session, str) or not session:
        raise ProtocolError("single sign-on answer has no user or token")
    api.token = session
    log.info("signed in to {url} as {user} with single sign-on", url=api.base_url, user=user)
    return user, session


def _answer(body: bytes) -> dict[str, object]:
    if len(body) > _MAX_ANSWER:
        raise ProtocolError("single sign-on answer is too large")
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reply_token(values: Sequence[bytes]) -> bytes | None:
    for value in values:
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() == b"negotiate" and rest.strip():
            try:
                return base64.b64decode(rest.strip(), validate=True)
            except ValueError:
                raise ProtocolError("the server's Negotiate reply is not base64") from None
    return None
