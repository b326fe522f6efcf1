"""Single sign-on pieces that need no KDC: [kerberos] settings, token and principal checks,
password sign-in turned off. The Kerberos exchange itself is tested against Samba's KDC in
tests/integration/test_kerberos_sso.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.web.test.requesthelper import DummyRequest

from smartsyncd.auth.identity import BackendUnavailable
from smartsyncd.auth.kerberosconfig import KerberosConfig
from smartsyncd.auth.negotiate import (
    MAX_TOKEN_CHARS,
    TicketRefused,
    _gss_reason,
    accept_token,
    check_keytab,
    decode_token,
    split_principal,
)
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.client.sso import _reply_token, _ticket_error, sso_service
from smartsyncd.client.userconfig import UserConfig
from smartsyncd.core.errors import AuthFailed
from smartsyncd.service.config import load_config
from smartsyncd.testing.memory_store import MemoryServerStore
from smartsyncd.web.negotiate import negotiate_value

LDAP = (
    "[ldap]\nurls = ldaps://dc1.firm.example\nbase_dn = DC=firm,DC=example\n"
    "bind_dn = CN=svc,DC=firm,DC=example\nbind_password_file = bind.secret\n"
    "upn_suffix = firm.example\n"
)


def _conf(tmp_path: Path, text: str) -> str:
    (tmp_path / "bind.secret").write_text("pw\n")
    path = tmp_path / "s.ini"
    path.write_text(text)
    return str(path)


def test_kerberos_section_is_parsed_with_the_realm_from_the_upn_suffix(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        "[auth]\nbackends = ldap\npassword_sign_in = no\n" + LDAP
        + "[kerberos]\nkeytab = http.keytab\nservice = HTTP@sync.firm.example\n"
        "replay_cache = replay.rc\n",
    )
    config = load_config(conf, cwd=str(tmp_path))
    assert config.password_sign_in is False
    assert config.kerberos == KerberosConfig(
        keytab=str(tmp_path / "http.keytab"),
        realm="FIRM.EXAMPLE",
        service="HTTP@sync.firm.example",
        replay_cache="file2:" + str(tmp_path / "replay.rc"),
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[auth]\nbackends = local\n[kerberos]\nkeytab = k\n", r"needs \[ldap\] with bind_dn"),
        ("[auth]\nbackends = local\n" + LDAP + "[kerberos]\nkeytab = k\n", "'ldap' in"),
        ("[auth]\nbackends = ldap\n" + LDAP + "[kerberos]\nservice = HTTP@x\n", "keytab"),
        ("[auth]\nbackends = ldap\n" + LDAP + "[kerberos]\nkeytab = k\nservice = HTTP/x\n",
         "host-based"),
        ("[auth]\nbackends = ldap\n" + LDAP + "[kerberos]\nkeytab = k\nkdc = x\n", "unknown"),
        ("[auth]\npassword_sign_in = no\n", "nobody could sign in"),
    ],
)
def test_bad_kerberos_settings_stop_the_daemon(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config(_conf(tmp_path, text), cwd=str(tmp_path))


@pytest.mark.parametrize(
    "principal, account",
    [("dora@FIRM.EXAMPLE", "dora"), ("Dora.Smith@FIRM.EXAMPLE", "Dora.Smith")],
)
def test_user_principals_of_the_realm_map_to_accounts(principal: str, account: str) -> None:
    assert split_principal(principal, "FIRM.EXAMPLE") == account


@pytest.mark.parametrize(
    "principal, reason",
    [
        ("dora@OTHER.EXAMPLE", "from realm 'OTHER.EXAMPLE'"),
        ("dora@firm.example", "from realm"),  # realms are case-sensitive
        ("dora", "no realm"),
        ("HTTP/localhost@FIRM.EXAMPLE", "not a user principal"),
        ("WS01$@FIRM.EXAMPLE", "computer account"),
        ("a\\@b@FIRM.EXAMPLE", "not a user principal"),
    ],
)
def test_other_principals_are_refused(principal: str, reason: str) -> None:
    with pytest.raises(TicketRefused, match=reason):
        split_principal(principal, "FIRM.EXAMPLE")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("not base64!", "not base64"),
        ("A" * (MAX_TOKEN_CHARS + 4), "longer than"),
    ],
)
def test_malformed_tokens_are_refused_before_gssapi(text: str, reason: str) -> None:
    with pytest.raises(TicketRefused, match=reason):
        decode_token(text)


def test_token_is_decoded() -> None:
    assert decode_token(" " + base64.b64encode(b"\x60\x82token").decode() + " ") == b"\x60\x82token"


def test_gssapi_errors_become_one_readable_reason() -> None:
    replay = (
        "Major (851968): Unspecified GSS failure.  Minor code may provide more information, "
        "Minor (100005): Request is a replay"
    )
    assert _gss_reason(Exception(replay)) == "Request is a replay"
    garbage = "Major (589824): Invalid token was supplied, Minor (2529638919): Unknown error"
    assert _gss_reason(Exception(garbage)) == "not a valid token (Invalid token was supplied)"


def test_an_expired_ticket_is_named_by_its_code_or_the_librarys_text() -> None:
    from gssapi.exceptions import GSSError

    # raw Kerberos tokens keep the krb5 code; through SPNEGO MIT renumbers it (100005)
    by_code = GSSError(851968, 0x96C73A20)  # KRB5KRB_AP_ERR_TKT_EXPIRED
    by_text = Exception(
        "Major (851968): Unspecified GSS failure.  Minor code may provide more information, "
        "Minor (100005): Ticket expired"
    )
    for error in (by_code, by_text):
        reason = _gss_reason(error)
        assert reason.startswith("ticket expired (KRB5KRB_AP_ERR_TKT_EXPIRED)")
        assert "kinit" in reason


def test_client_says_an_expired_ticket_expired_and_a_missing_one_is_missing() -> None:
    from gssapi.exceptions import GSSError
    from spnego.exceptions import SpnegoError

    expired = _ticket_error("HTTP@sync", SpnegoError(base_error=GSSError(851968, 0x96C73A20)))
    assert "Kerberos ticket has expired" in str(expired) and "kinit" in str(expired)
    assert "log on to the domain" in str(expired)
    missing = _ticket_error("HTTP@sync", SpnegoError(base_error=GSSError(458752, 2529639053)))
    assert "no usable Kerberos ticket" in str(missing) and "expired" not in str(missing)


def test_a_missing_keytab_is_the_servers_fault_not_the_users(tmp_path: Path) -> None:
    config = KerberosConfig(keytab=str(tmp_path / "none.keytab"), realm="FIRM.EXAMPLE")
    with pytest.raises(ValueError, match="does not exist"):
        check_keytab(config)
    (tmp_path / "empty.keytab").write_bytes(b"\x05\x02")  # a keytab with no keys
    with pytest.raises(ValueError, match="cannot use keytab"):
        check_keytab(KerberosConfig(
            keytab=str(tmp_path / "empty.keytab"), realm="FIRM.EXAMPLE", service="HTTP@x"
        ))
    with pytest.raises(BackendUnavailable, match="cannot use keytab"):
        accept_token(
            KerberosConfig(
                keytab=str(tmp_path / "none.keytab"), realm="FIRM.EXAMPLE", service="HTTP@x"
            ),
            b"\x60\x00",
        )


def _request(authorization: bytes | None) -> DummyRequest:
    request = DummyRequest([b"v1", b"login"])
    if authorization is not None:
        request.requestHeaders.addRawHeader(b"authorization", authorization)
    return request


@pytest.mark.parametrize(
    "header, value",
    [
        (None, None),
        (b"Bearer abc", None),
        (b"Negotiate YIIB", "YIIB"),
        (b"negotiate YIIB", "YIIB"),
        (b"Negotiate", ""),
    ],
)
def test_only_a_negotiate_header_is_single_sign_on(header: bytes | None, value: str | None) -> None:
    assert negotiate_value(_request(header)) == value


@pytest_twisted.ensureDeferred
async def test_password_sign_in_turned_off_refuses_before_any_backend() -> None:
    clock = Clock()
    store = MemoryServerStore(now=lambda: datetime.fromtimestamp(clock.seconds(), UTC))

    class Backend:
        name = "ldap"
        calls = 0

        async def authenticate(self, user: str, password: str) -> object:
            Backend.calls += 1
            raise AssertionError("must not be asked")

        async def refresh(self, identity: object) -> object:
            raise AssertionError("must not be asked")

    manager = SessionManager(
        store, [Backend()], clock, LoginRateLimiter(clock), password_sign_in=False  # type: ignore[list-item]
    )
    with pytest.raises(AuthFailed, match="password sign-in is turned off"):
        await manager.sign_in("dora", "her password", "192.0.2.1")
    assert Backend.calls == 0
    assert store.sessions == {}


def test_client_service_name_comes_from_the_url_host() -> None:
    assert sso_service("https://sync.firm.example:8443") == "HTTP@sync.firm.example"
    assert sso_service("https://sync.firm.example", "HTTP@alias.firm.example") == (
        "HTTP@alias.firm.example"
    )


def test_client_reads_the_mutual_authentication_reply() -> None:
    assert _reply_token([b"Negotiate " + base64.b64encode(b"ap-rep")]) == b"ap-rep"
    assert _reply_token([b"Negotiate"]) is None
    assert _reply_token([]) is None


def test_settings_remember_single_sign_on(tmp_path: Path) -> None:
    config = UserConfig.load(tmp_path)
    config.set_token("https://sync.firm.example", "dora", "tok", sso="HTTP@sync.firm.example")
    config.save()
    again = UserConfig.load(tmp_path).server("https://sync.firm.example")
    assert (again.user, again.sso) == ("dora", "HTTP@sync.firm.example")
    config.forget_token("https://sync.firm.example")  # logout: no silent sign-in afterwards
    assert config.server("https://sync.firm.example").sso is None
    config.set_token("https://sync.firm.example", "dora", "tok", sso="HTTP@sync.firm.example")
    config.set_token("https://sync.firm.example", "dora", "tok2")  # a password sign-in
    assert config.server("https://sync.firm.example").sso is None
