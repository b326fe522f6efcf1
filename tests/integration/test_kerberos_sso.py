"""Single sign-on with Kerberos (HTTP Negotiate) through the real daemon, CLI and Samba KDC.

Users get tickets with krb5-user's real ``kinit``; the daemon validates them with the keytab
exported by ``samba-tool`` and maps them to AD accounts and groups through the directory, as a
password sign-in does. Every bad input (malformed token, ticket for another service, replay, no
mutual authentication, skewed clock, expired ticket, disabled account, another realm) is a 401
with the reason in the daemon's log and no new session. On the client, no ticket and an expired
ticket (the CLI under faketime) each say what to do and write nothing.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, running_daemon
from haproxy import start_cluster
from kerberos import OTHER_HOST, KerberosRealm, kerberos, make_token  # noqa: F401
from pg import PgCluster
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)
from test_cli_client import Client
from ticketforge import keytab_keys, with_ticket_end

pytestmark = [pytest.mark.integration, pytest.mark.samba]

PW = {"kdora": "Kdora-Passw0rd-1", "kerin": "Kerin-Passw0rd-1", "kfrank": "Kfrank-Passw0rd-1"}
LOG_DEADLINE = 10.0


@pytest.fixture(scope="module")
def realm(kerberos: KerberosRealm) -> KerberosRealm:  # noqa: F811
    dc = kerberos.dc
    dc.add_group("SSO Assurance")
    dc.add_group("SSO Team", member_of=["SSO Assurance"])  # nested
    dc.add_group("SSO Tax")
    dc.add_user("kdora", PW["kdora"], groups=["SSO Team"])
    dc.add_user("kerin", PW["kerin"], groups=["SSO Tax"])
    dc.add_user("kfrank", PW["kfrank"], groups=["SSO Team"])
    return kerberos


def _config(dc: SambaDC, base: Path, realm: KerberosRealm, extra: str = "", kerberos_extra: str = "") -> str:
    base.mkdir(parents=True, exist_ok=True)
    secret = base / "bind.secret"
    secret.write_text(dc.bind_password + "\n")
    secret.chmod(0o600)
    return f"""
[auth]
backends = ldap, local
{extra}
[ldap]
urls = {' '.join(dc.urls)}
ca_file = {dc.ca_file}
base_dn = {dc.base_dn}
bind_dn = {dc.bind_dn}
bind_password_file = {secret}
netbios_domain = {dc.netbios}
upn_suffix = {dc.realm}
refresh_interval = 0.02
[kerberos]
keytab = {realm.keytab}
service = {realm.service}
replay_cache = {realm.directory / 'replay.rcache'}
{kerberos_extra}
"""


def _start(base: Path, realm: KerberosRealm, name: str, **kw: str) -> Daemon:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRB5_CONFIG", str(realm.krb5_conf))  # the daemon inherits it; never /etc
        mp.delenv("KRB5_KTNAME", raising=False)
        return running_daemon(base, config_text=_config(realm.dc, base, realm, **kw), name=name)


@pytest.fixture(scope="module")
def server(realm: KerberosRealm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = _start(tmp_path_factory.mktemp("sso"), realm, "daemon")
    try:
        for args in [
            ("engagement", "create", "sso-acme"),
            ("engagement", "create", "sso-tax"),
            ("grant", "sso-acme", "--group", "SSO Assurance", "--role", "editor"),
            ("grant", "sso-tax", "--group", "SSO Tax", "--role", "reader"),
        ]:
            done = d.admin(*args)
            assert done.returncode == 0, done.stdout + done.stderr
        yield d
    finally:
        d.stop()


def sso_url(server: Daemon) -> str:
    """The daemon by the host name of its SPN (HTTP/localhost), as users type it."""
    return f"https://localhost:{server.port}"


def ticket(realm: KerberosRealm, tmp_path: Path, user: str) -> Path:
    cache = tmp_path / f"{user}.ccache"
    realm.kinit(user, PW[user], cache)
    return cache


def post_login(server: Daemon, authorization: str) -> tuple[int, Any, str | None]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.ssl_context(), timeout=30
    )
    try:
        conn.request("POST", "/v1/login", headers={"Authorization": authorization})
        response = conn.getresponse()
        body = response.read()
        data = json.loads(body) if body else None
        return response.status, data, response.getheader("WWW-Authenticate")
    finally:
        conn.close()


def sessions(server: Daemon) -> str:
    done = server.admin("sessions", "list")
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_log(server: Daemon, text: str, start: int) -> str:
    deadline = time.monotonic() + LOG_DEADLINE
    while True:
        tail = server.log_text()[start:]
        if text.lower() in tail.lower():
            return tail
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the daemon log:\n{tail[-3000:]}")
        time.sleep(0.05)


def visible(client: Client, url: str, env: dict[str, str]) -> set[str]:
    done = client.run("--json", "engagements", url, env=env)
    assert done.returncode == 0, done.stderr
    return {e["name"] for e in json.loads(done.stdout)["engagements"]}


# -- signing in -----------------------------------------------------------------------------


def test_cli_sso_login_signs_in_with_the_ticket_and_sees_group_grants(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    for user, expected in [("kdora", {"sso-acme"}), ("kerin", {"sso-tax"})]:
        env = realm.env(ticket(realm, tmp_path, user))
        (tmp_path / user).mkdir()
        client = Client(tmp_path / user)
        done = client.run(
            "--trust-fingerprint", server.fingerprint, "login", sso_url(server), "--sso", env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"as {user} with single sign-on" in done.stdout
        assert client.settings()["servers"][sso_url(server)]["sso"] == "HTTP@localhost"
        assert visible(client, sso_url(server), env) == expected


def test_sso_session_has_the_same_groups_as_a_password_session(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    token = make_token(realm, ticket(realm, tmp_path, "kdora"))
    status, answer, reply = post_login(server, f"Negotiate {token}")
    assert status == 200, answer
    assert answer["user"] == "kdora"
    assert reply is not None and reply.startswith("Negotiate ")
    base64.b64decode(reply.split(" ", 1)[1], validate=True)  # the mutual-auth AP-REP
    _, by_ticket = server.request("GET", "/v1/session", token=answer["token"])
    _, by_password = server.request(
        "GET", "/v1/session", token=server.login("kdora", PW["kdora"])
    )
    assert sorted(by_ticket["groups"]) == sorted(by_password["groups"])
    assert len(by_ticket["groups"]) >= 2  # SSO Team and, nested, SSO Assurance


def test_raw_kerberos_token_without_spnego_is_accepted(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    token = make_token(realm, ticket(realm, tmp_path, "kerin"), mech="krb5")
    status, answer, _ = post_login(server, f"Negotiate {token}")
    assert status == 200, answer
    assert answer["user"] == "kerin"


def written(client: Client) -> dict[str, bytes]:
    """Every file of the client's settings folder, with its content."""
    if not client.config.exists():
        return {}
    return {str(p): p.read_bytes() for p in client.config.rglob("*") if p.is_file()}


def test_cli_without_a_ticket_says_what_to_do(server: Daemon, realm: KerberosRealm, tmp_path: Path) -> None:
    client = Client(tmp_path)
    before = sessions(server)
    done = client.run(
        "--trust-fingerprint", server.fingerprint, "login", sso_url(server), "--sso",
        env=realm.env(tmp_path / "no-such.ccache"),
    )
    assert done.returncode == 3, done.stdout + done.stderr  # AuthError: sign-in failed
    assert "no usable Kerberos ticket" in done.stderr
    assert "kinit" in done.stderr and "log on to the domain" in done.stderr
    assert "expired" not in done.stderr
    assert written(client) == {}
    assert sessions(server) == before


def test_cli_with_an_expired_ticket_says_so_and_writes_nothing(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    """Two days on (the CLI under faketime), kinit's 10-hour tickets are expired for MIT's
    library: a cache with the TGT only, and one that also holds the service ticket of an
    earlier sign-in. The message names the cause and the remedy; the CLI's settings (the
    earlier session included) and the server's session table stay as they were."""
    fresh = Client(tmp_path / "fresh")
    fresh_env = realm.env(ticket(realm, tmp_path, "kerin"))  # TGT only
    signed_in = Client(tmp_path / "signed-in")
    signed_in_env = realm.env(ticket(realm, tmp_path, "kdora"))
    for client in (fresh, signed_in):
        client.home.mkdir()
    done = signed_in.run(
        "--trust-fingerprint", server.fingerprint, "login", sso_url(server), "--sso",
        env=signed_in_env,
    )
    assert done.returncode == 0, done.stderr  # the cache now holds HTTP/localhost's ticket too
    for client, env in [(fresh, fresh_env), (signed_in, signed_in_env)]:
        before, before_sessions = written(client), sessions(server)
        done = client.run(
            "--trust-fingerprint", server.fingerprint, "login", sso_url(server), "--sso",
            env=env, wrapper=["faketime", "-f", "+2d"],
        )
        assert done.returncode == 3, done.stdout + done.stderr  # AuthError: sign-in failed
        assert "Kerberos ticket has expired" in done.stderr
        assert "kinit" in done.stderr and "log on to the domain" in done.stderr
        assert "Signed in" not in done.stdout
        assert written(client) == before
        assert sessions(server) == before_sessions
    assert signed_in.settings()["servers"][sso_url(server)]["token"]  # kept: not a sign-out


def test_expired_session_signs_in_again_silently_with_the_ticket(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    env = realm.env(ticket(realm, tmp_path, "kdora"))
    client = Client(tmp_path)
    url = sso_url(server)
    done = client.run("--trust-fingerprint", server.fingerprint, "login", url, "--sso", env=env)
    assert done.returncode == 0, done.stderr
    first = client.settings()["servers"][url]["token"]
    done = server.admin("sessions", "revoke", "--user", "kdora")
    assert done.returncode == 0, done.stderr
    assert visible(client, url, env) == {"sso-acme"}  # no prompt, no password
    assert client.settings()["servers"][url]["token"] != first


def test_silent_sign_in_again_with_an_expired_ticket_says_so_and_keeps_the_settings(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    """The session ends while the ticket has expired (the CLI two days on, under faketime):
    the command says the ticket expired and changes nothing, so once the ticket is good again
    (here: the true time) the next command signs in silently as before."""
    env = realm.env(ticket(realm, tmp_path, "kdora"))
    client = Client(tmp_path)
    url = sso_url(server)
    done = client.run("--trust-fingerprint", server.fingerprint, "login", url, "--sso", env=env)
    assert done.returncode == 0, done.stderr
    before = written(client)
    done = server.admin("sessions", "revoke", "--user", "kdora")
    assert done.returncode == 0, done.stderr
    done = client.run("engagements", url, env=env, wrapper=["faketime", "-f", "+2d"])
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Kerberos ticket has expired" in done.stderr and "kinit" in done.stderr
    assert written(client) == before
    assert visible(client, url, env) == {"sso-acme"}


def test_cli_sso_against_a_server_without_kerberos_says_so(
    daemon: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    client = Client(tmp_path)
    done = client.run(
        "--trust-fingerprint", daemon.fingerprint, "login", sso_url(daemon), "--sso",
        env=realm.env(ticket(realm, tmp_path, "kerin")),
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "single sign-on (Kerberos) is not configured on this server" in done.stderr


# -- refusals -------------------------------------------------------------------------------


def _refused(server: Daemon, authorization: str, reason: str) -> None:
    before = sessions(server)
    start = len(server.log_text())
    status, answer, challenge = post_login(server, authorization)
    assert status == 401, answer
    assert answer["error"] == "auth_failed"
    assert challenge == "Negotiate"
    tail = wait_for_log(server, reason, start)
    assert "single sign-on refused" in tail
    assert sessions(server) == before


@pytest.mark.parametrize(
    "value, reason",
    [
        ("Negotiate !!!not-base64", "malformed Negotiate token"),
        ("Negotiate " + base64.b64encode(b"hello, not a token").decode(), "single sign-on refused"),
        ("Negotiate ", "empty Negotiate token"),
    ],
)
def test_malformed_token_is_refused(server: Daemon, value: str, reason: str) -> None:
    _refused(server, value, reason)


def test_ticket_for_another_service_is_refused(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    token = make_token(realm, ticket(realm, tmp_path, "kdora"), f"HTTP@{OTHER_HOST}")
    _refused(server, f"Negotiate {token}", "single sign-on refused")


def test_replayed_token_is_refused(server: Daemon, realm: KerberosRealm, tmp_path: Path) -> None:
    token = make_token(realm, ticket(realm, tmp_path, "kerin"))
    status, answer, _ = post_login(server, f"Negotiate {token}")
    assert status == 200, answer
    _refused(server, f"Negotiate {token}", "replay")


def test_second_daemon_shares_the_keytab_and_refuses_a_replay_seen_by_the_first(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    second = _start(tmp_path, realm, "second")  # same keytab, same replay cache file
    try:
        cache = ticket(realm, tmp_path, "kerin")
        status, answer, _ = post_login(second, f"Negotiate {make_token(realm, cache)}")
        assert status == 200, answer  # the shared keytab works on this daemon too
        token = make_token(realm, cache)
        status, answer, _ = post_login(server, f"Negotiate {token}")
        assert status == 200, answer
        _refused(second, f"Negotiate {token}", "replay")
    finally:
        second.stop()


def test_clock_skewed_ticket_is_refused(
    server: Daemon, realm: KerberosRealm, tmp_path: Path
) -> None:
    cache = ticket(realm, tmp_path, "kerin")
    realm.service_ticket(cache)  # with the true time: the KDC refuses a skewed client too
    token = make_token(realm, cache, clock_offset="+10m")
    _refused(server, f"Negotiate {token}", "skew")


@pytest.mark.parametrize("mech", ["spnego", "krb5"])
def test_expired_ticket_is_refused(
    server: Daemon, realm: KerberosRealm, tmp_path: Path, mech: str
) -> None:
    """A real client's token whose service ticket ended an hour ago (re-encrypted with the
    keytab's key by tests/integration/ticketforge.py: no real client sends one, see there).
    The same rewrite with an end time an hour ahead is accepted, so the refusal is the
    expiry and nothing else the rewrite did."""
    cache = ticket(realm, tmp_path, "kerin")
    keys = keytab_keys(realm.keytab, realm.env())
    now = datetime.now(UTC)
    later = with_ticket_end(make_token(realm, cache, mech=mech), keys, now + timedelta(hours=1))
    status, answer, _ = post_login(server, f"Negotiate {later}")
    assert status == 200, answer
    expired = with_ticket_end(make_token(realm, cache, mech=mech), keys, now - timedelta(hours=1))
    _refused(server, f"Negotiate {expired}", "ticket expired (KRB5KRB_AP_ERR_TKT_EXPIRED)")


def test_disabled_account_is_refused(server: Daemon, realm: KerberosRealm, tmp_path: Path) -> None:
    cache = ticket(realm, tmp_path, "kfrank")
    realm.service_ticket(cache)  # issued while enabled (the KDC issues none afterwards)
    realm.dc.disable("kfrank")
    try:
        token = make_token(realm, cache)
        _refused(server, f"Negotiate {token}", "account disabled")
    finally:
        realm.dc.enable("kfrank")


# -- settings -------------------------------------------------------------------------------


def test_principal_of_another_realm_is_refused(
    realm: KerberosRealm, tmp_path: Path
) -> None:
    other = _start(tmp_path, realm, "other-realm", kerberos_extra="realm = OTHER.EXAMPLE")
    try:
        token = make_token(realm, ticket(realm, tmp_path, "kdora"))
        _refused(other, f"Negotiate {token}", "is from realm 'FIRM.EXAMPLE'")
    finally:
        other.stop()


def test_password_sign_in_can_be_turned_off(realm: KerberosRealm, tmp_path: Path) -> None:
    only_sso = _start(tmp_path, realm, "sso-only", extra="password_sign_in = no")
    try:
        status, answer = only_sso.request(
            "POST", "/v1/login", json_body={"user": "kdora", "password": PW["kdora"]}
        )
        assert status == 401
        assert "password sign-in is turned off" in answer["message"]
        assert "(no sessions)" in sessions(only_sso)
        token = make_token(realm, ticket(realm, tmp_path, "kdora"))
        status, answer, _ = post_login(only_sso, f"Negotiate {token}")
        assert status == 200, answer
    finally:
        only_sso.stop()


# -- several daemons behind HAProxy ---------------------------------------------------------


def test_two_daemons_behind_haproxy_share_one_keytab(realm: KerberosRealm, tmp_path: Path) -> None:
    """The shipped HAProxy sample in front of two daemons on one PostgreSQL: the CLI signs in
    with its ticket through the proxy, both daemons accept tickets with the one keytab, and a
    token used on one daemon is refused when replayed through the proxy."""
    with PgCluster() as pg:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KRB5_CONFIG", str(realm.krb5_conf))
            extra = _config(realm.dc, tmp_path / "conf", realm)
            cluster = start_cluster(tmp_path, pg.url(pg.create_database()), extra=extra)
        try:
            _through_haproxy(realm, tmp_path, cluster)
        finally:
            cluster.stop()


def _through_haproxy(realm: KerberosRealm, tmp_path: Path, cluster: Any) -> None:
    app1, app2 = cluster.daemons["app1"], cluster.daemons["app2"]
    for args in [
        ("engagement", "create", "ha-acme"),
        ("grant", "ha-acme", "--group", "SSO Assurance", "--role", "editor"),
    ]:
        done = app1.admin(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    cache = ticket(realm, tmp_path, "kdora")
    env = realm.env(cache)
    url = f"https://localhost:{cluster.haproxy.port}"
    (tmp_path / "home").mkdir()
    client = Client(tmp_path / "home")
    done = client.run("--ca-file", str(cluster.ca_file), "login", url, "--sso", env=env)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()[-3000:]
    assert visible(client, url, env) == {"ha-acme"}

    for d in (app1, app2):  # each daemon checks tickets with the shared keytab
        status, answer, _ = post_login(d, f"Negotiate {make_token(realm, cache)}")
        assert status == 200, answer
    token = make_token(realm, cache)
    status, answer, _ = post_login(app1, f"Negotiate {token}")
    assert status == 200, answer
    status, answer, headers = cluster.request(
        "POST", "/v1/login", headers={"Authorization": f"Negotiate {token}"}
    )
    assert status == 401, answer
    assert headers.get("www-authenticate") == "Negotiate"
    assert "Request is a replay" in app1.log_text() + app2.log_text()
