"""``POST /v1/login`` with ``Authorization: Negotiate <token>``: single sign-on (RFC 4559).

``negotiate_login`` is called first by the login route: it returns None when the request has no
Negotiate header (a password sign-in), else signs in through ``auth.negotiate.NegotiateSignIn``
and sets the mutual-authentication reply in ``WWW-Authenticate``. A refusal is a 401 JSON with
``WWW-Authenticate: Negotiate`` (the reason is in the server log only).
"""

from __future__ import annotations

import base64

from twisted.web.server import Request

from smartsyncd.auth.negotiate import NegotiateSignIn
from smartsyncd.core.errors import AuthFailed
from smartsyncd.storage.api import SessionRecord
from smartsyncd.web.clientaddr import client_address

_SCHEME = b"negotiate"


def negotiate_value(request: Request) -> str | None:
    """The token text of an ``Authorization: Negotiate ...`` header (None for any other)."""
    raw = request.requestHeaders.getRawHeaders(b"authorization")
    if not raw:
        return None
    scheme, _, rest = raw[0].partition(b" ")
    if scheme.lower() != _SCHEME:
        return None
    return rest.decode("latin-1")


async def negotiate_login(
    request: Request, sso: NegotiateSignIn | None
) -> tuple[str, SessionRecord] | None:
    """Sign in with the request's Negotiate token; None when it carries none."""
    text = negotiate_value(request)
    if text is None:
        return None
    if sso is None:
        raise AuthFailed("single sign-on (Kerberos) is not configured on this server")
    try:
        token, record, reply = await sso.sign_in(text, client_address(request))
    except AuthFailed:
        request.setHeader(b"www-authenticate", b"Negotiate")
        raise
    if reply:
        request.setHeader(b"www-authenticate", b"Negotiate " + base64.b64encode(reply))
    return token, record
