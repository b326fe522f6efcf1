"""The Twisted compatibility module (smartsyncd/runtime/twistedcompat.py): every private name
smartsyncd relies on exists in the installed Twisted, and a missing one is named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.http import HTTPChannel, Request

from smartsyncd.runtime import twistedcompat
from smartsyncd.runtime.twistedcompat import Private, TwistedInternalsMissing


def test_the_installed_twisted_has_every_private_name_listed() -> None:
    assert twistedcompat.missing() == []
    twistedcompat.require()


def test_a_missing_method_fails_require_naming_it_and_its_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(HTTPChannel, "_send100Continue")
    with pytest.raises(TwistedInternalsMissing) as raised:
        twistedcompat.require()
    message = str(raised.value)
    assert "twisted.web.http.HTTPChannel._send100Continue (used by web/upload.py)" in message
    assert "_respondToBadRequestAndDisconnect" not in message  # only what is gone


def test_an_instance_attribute_is_looked_for_where_it_is_set() -> None:
    assert twistedcompat.missing(
        (
            Private("twisted.web.http:Request", "notifications", "x", set_in="__init__"),
            Private("twisted.web.http:Request", "no_such_attribute", "y", set_in="__init__"),
            Private("twisted.web", "_newclient", "z"),
            Private("twisted.web", "_no_such_module", "w"),
            Private("twisted.no_such_module:Thing", "name", "v"),
        )
    ) == [
        Private("twisted.web.http:Request", "no_such_attribute", "y", set_in="__init__"),
        Private("twisted.web", "_no_such_module", "w"),
        Private("twisted.no_such_module:Thing", "name", "v"),
    ]
    assert hasattr(Request, "sentLength")


def test_a_missing_module_or_class_fails_only_where_it_is_used() -> None:
    gone = twistedcompat._module("twisted.web._no_such_module")
    with pytest.raises(TwistedInternalsMissing, match="twisted.web._no_such_module"):
        gone.ResponseFailed  # noqa: B018 - the attribute access is the test
    with pytest.raises(TwistedInternalsMissing, match="twisted.web.http._NoSuchChannel"):
        twistedcompat._attribute("twisted.web.http", "_NoSuchChannel")()


def test_the_endpoint_context_is_the_one_every_connection_uses(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from smartsyncd.service.tls import ensure_self_signed, tls_endpoint_string

    info = ensure_self_signed(
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), now=datetime.now(UTC)
    )
    ssl_endpoint = serverFromString(
        reactor, tls_endpoint_string("ssl:0:interface=127.0.0.1", info.cert_path, info.key_path)
    )
    context = twistedcompat.endpoint_tls_context(ssl_endpoint)
    assert context is not None
    assert twistedcompat.endpoint_tls_context(ssl_endpoint) is context
    assert twistedcompat.endpoint_tls_context(serverFromString(reactor, "tcp:0")) is None
