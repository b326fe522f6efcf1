"""LdapAuthenticator against ldaptor's in-memory directory on loopback (verified TLS).

Each rule of the directory sign-in has a test here that fails without the rule: empty password,
filter escaping, certificate/host-name verification, no clear-text fallback, account state,
nested groups (memberOf walk, member search), failover, and no password in any log event.
In the integration tier: the directory listens on real loopback sockets with real TLS (LDAPS,
StartTLS, unreachable and silent servers), driven by the running reactor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import formatEvent, globalLogPublisher

from smartsyncd.auth.identity import BackendUnavailable, SignInRefused, UnknownUser
from smartsyncd.auth.ldap import GroupNotFound, LdapAuthenticator, LdapConfig
from smartsyncd.testing.ldapserver import (
    RunningDirectory,
    TestPki,
    firm_directory,
    make_test_pki,
    start_directory,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SVC_DN = "CN=SmartSync Service,CN=Users,DC=firm,DC=example"
ALICE_DN = "CN=Alice Auditor,CN=Users,DC=firm,DC=example"
AUDIT = "S-1-5-21-1000-2000-3000-2001"
STAFF = "S-1-5-21-1000-2000-3000-2002"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(str(tmp_path_factory.mktemp("pki")))


def _serve(pki: TestPki | None, **kw: Any) -> Iterator[RunningDirectory]:
    server = start_directory(reactor, firm_directory(), pki=pki, **kw)
    yield server
    server.stop()


@pytest.fixture
def dc(pki: TestPki) -> Iterator[RunningDirectory]:
    """StartTLS on ldap://127.0.0.1:port."""
    yield from _serve(pki)


@pytest.fixture
def dc_ldaps(pki: TestPki) -> Iterator[RunningDirectory]:
    yield from _serve(pki, ldaps=True)


def make(urls: list[str], pki: TestPki | None, **overrides: Any) -> LdapAuthenticator:
    fields: dict[str, Any] = dict(
        urls=urls,
        base_dn="DC=firm,DC=example",
        ca_file=pki.ca_file if pki else None,
        bind_dn=SVC_DN,
        bind_password="svc-secret",
        netbios_domain="FIRM",
        upn_suffix="firm.example",
        group_mode="memberof",
        timeout=2.0,
        connect_timeout=2.0,
    )
    fields.update(overrides)
    return LdapAuthenticator(LdapConfig(**fields), reactor)


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


# -- user forms and TLS ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["alice", "FIRM\\alice", "firm\\ALICE", "alice@firm.example"])
@pytest_twisted.ensureDeferred
async def test_each_user_form_signs_in_over_starttls(
    dc: RunningDirectory, pki: TestPki, form: str
) -> None:
    identity = await make([dc.url], pki).authenticate(form, "pw-alice")
    assert identity.user == "alice" and identity.backend == "ldap"
    assert identity.groups == {AUDIT, STAFF}
    assert identity.group_names == {AUDIT: "Audit Team", STAFF: "All Staff"}
    # found with the service account, then bound as the DN found (never a DN built from a name)
    assert dc.bind_names[:2] == [SVC_DN, ALICE_DN]


@pytest_twisted.ensureDeferred
async def test_ldaps(dc_ldaps: RunningDirectory, pki: TestPki) -> None:
    assert dc_ldaps.url.startswith("ldaps://")
    identity = await make([dc_ldaps.url], pki).authenticate("alice@firm.example", "pw-alice")
    assert identity.user == "alice"


@pytest_twisted.ensureDeferred
async def test_empty_password_is_refused_before_any_connection(
    dc: RunningDirectory, pki: TestPki
) -> None:
    auth = make([dc.url], pki)
    with pytest.raises(SignInRefused) as refused:
        await auth.authenticate("alice", "")
    assert not isinstance(refused.value, UnknownUser)
    assert dc.connections == 0
    # the server really would have accepted it: an unauthenticated bind "succeeds"
    insecure = make([dc.url], None, start_tls=False, allow_insecure=True)
    await insecure._with_server(lambda conn: conn.bind(ALICE_DN, ""))


@pytest.mark.parametrize(
    "name",
    ["ali*", "*)(sAMAccountName=alice", "*", "alice)(|(x=*", "FIRM\\ali*", "ali*@firm.example"],
)
@pytest_twisted.ensureDeferred
async def test_filter_metacharacters_sign_in_nobody(
    dc: RunningDirectory, pki: TestPki, name: str
) -> None:
    with pytest.raises(SignInRefused):
        await make([dc.url], pki).authenticate(name, "pw-alice")
    assert ALICE_DN not in dc.bind_names


@pytest.mark.parametrize("name", ["al\x00ice", "alice\\", "a\\l(i)c*e"])
@pytest_twisted.ensureDeferred
async def test_nul_backslash_and_parens_are_unknown(
    dc: RunningDirectory, pki: TestPki, name: str
) -> None:
    with pytest.raises(UnknownUser):
        await make([dc.url], pki).authenticate(name, "pw-alice")


@pytest.mark.parametrize("hosts", [("elsewhere.example",), None])
@pytest_twisted.ensureDeferred
async def test_unverified_certificate_aborts_before_any_bind(
    pki: TestPki, tmp_path: Path, hosts: tuple[str, ...] | None
) -> None:
    # wrong host name signed by the trusted CA, or the right name from an unknown CA
    bad = make_test_pki(str(tmp_path), hosts) if hosts else make_test_pki(str(tmp_path))
    for ldaps in (False, True):
        server = start_directory(reactor, firm_directory(), pki=bad, ldaps=ldaps)
        try:
            ca = pki if hosts is None else bad
            with pytest.raises(BackendUnavailable):
                await make([server.url], ca).authenticate("alice", "pw-alice")
            assert server.connections == 1 and server.bind_names == []
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_refused_starttls_never_falls_back_to_clear_text(pki: TestPki) -> None:
    server = start_directory(reactor, firm_directory(), pki=pki, refuse_starttls=True)
    try:
        with pytest.raises(BackendUnavailable, match="StartTLS"):
            await make([server.url], pki).authenticate("alice", "pw-alice")
        assert server.bind_names == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_plain_ldap_needs_allow_insecure_and_is_logged(
    dc: RunningDirectory, events: list[dict]
) -> None:
    with pytest.raises(ValueError, match="start_tls"):
        make([dc.url], None, start_tls=False)
    auth = make([dc.url], None, start_tls=False, allow_insecure=True)
    warnings = [formatEvent(e) for e in events if "INSECURE" in formatEvent(e)]
    assert warnings and dc.url in warnings[0]
    assert (await auth.authenticate("alice", "pw-alice")).user == "alice"


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "reason"),
    [("bob", "disabled"), ("dave", "locked"), ("erin", "expired"), ("frank", "changed")],
)
@pytest_twisted.ensureDeferred
async def test_account_state_is_refused_before_the_password_is_tried(
    dc: RunningDirectory, pki: TestPki, user: str, reason: str
) -> None:
    with pytest.raises(SignInRefused, match=reason):
        await make([dc.url], pki).authenticate(user, f"pw-{user}")
    assert dc.bind_names == [SVC_DN]


@pytest_twisted.ensureDeferred
async def test_lockout_uses_the_computed_flag_when_the_directory_has_it(
    dc: RunningDirectory, pki: TestPki
) -> None:
    dave = "CN=Dave Person,CN=Users,DC=firm,DC=example"
    dc.directory.set(dave, "msDS-User-Account-Control-Computed", "0")  # lockout has expired
    assert (await make([dc.url], pki).authenticate("dave", "pw-dave")).user == "dave"
    dc.directory.set(dave, "msDS-User-Account-Control-Computed", str(0x10))
    with pytest.raises(SignInRefused, match="locked"):
        await make([dc.url], pki).authenticate("dave", "pw-dave")


@pytest_twisted.ensureDeferred
async def test_wrong_password_unknown_user_and_other_domain(
    dc: RunningDirectory, pki: TestPki
) -> None:
    auth = make([dc.url], pki)
    with pytest.raises(SignInRefused) as wrong:
        await auth.authenticate("alice", "pw-bob")
    assert not isinstance(wrong.value, UnknownUser)
    with pytest.raises(UnknownUser):
        await auth.authenticate("mallory", "x")
    with pytest.raises(UnknownUser):
        await auth.authenticate("OTHER\\alice", "pw-alice")


@pytest_twisted.ensureDeferred
async def test_no_password_in_any_log_event(
    dc: RunningDirectory, pki: TestPki, events: list[dict]
) -> None:
    auth = make([dc.url], pki)
    secrets = ["pw-alice", "Wrong-Secret-77", "pw-bob", "svc-secret"]
    await auth.authenticate("alice", "pw-alice")
    for user, password in (("alice", "Wrong-Secret-77"), ("bob", "pw-bob"), ("nobody", "pw-alice")):
        with pytest.raises(SignInRefused):
            await auth.authenticate(user, password)
    bad_svc = make([dc.url], pki, bind_password="svc-secret-not")
    with pytest.raises(BackendUnavailable):
        await bad_svc.authenticate("alice", "pw-alice")
    assert any("alice" in formatEvent(e) for e in events)  # the observer really saw events
    for event in events:
        dumped = formatEvent(event) + repr(event)
        for secret in secrets:
            assert secret not in dumped


# -- groups ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["memberof", "member"])
@pytest_twisted.ensureDeferred
async def test_nested_groups_cycles_and_ids(dc: RunningDirectory, pki: TestPki, mode: str) -> None:
    auth = make([dc.url], pki, group_mode=mode)
    assert (await auth.authenticate("alice", "pw-alice")).groups == {AUDIT, STAFF}
    carol = await auth.authenticate("carol", "pw-carol")
    # Loop A <-> Loop B is a cycle; Legacy has no objectSid, so its objectGUID is the id
    assert carol.groups == {
        "S-1-5-21-1000-2000-3000-2003",
        "S-1-5-21-1000-2000-3000-2004",
        "03020100-0504-0706-0809-0a0b0c0d0e0f",
    }


@pytest.mark.parametrize("mode", ["memberof", "member"])
@pytest_twisted.ensureDeferred
async def test_refresh_sees_a_removed_membership(
    dc: RunningDirectory, pki: TestPki, mode: str
) -> None:
    auth = make([dc.url], pki, group_mode=mode)
    identity = await auth.authenticate("alice", "pw-alice")
    dc.directory.remove_member("CN=Audit Team,CN=Users,DC=firm,DC=example", ALICE_DN)
    refreshed = await auth.refresh(identity)
    assert refreshed.user == "alice" and refreshed.groups == frozenset()
    dc.directory.set(ALICE_DN, "userAccountControl", "514")
    with pytest.raises(SignInRefused, match="disabled"):
        await auth.refresh(identity)


@pytest_twisted.ensureDeferred
async def test_lookups(dc: RunningDirectory, pki: TestPki) -> None:
    auth = make([dc.url], pki)
    assert await auth.lookup_group("Audit Team") == (AUDIT, "Audit Team")
    assert await auth.lookup_group("CN=All Staff,CN=Users,DC=firm,DC=example") == (
        STAFF,
        "All Staff",
    )
    for missing in ("Nobody's Group", "*", "CN=Nope,CN=Users,DC=firm,DC=example"):
        with pytest.raises(GroupNotFound):
            await auth.lookup_group(missing)
    assert await auth.lookup_user("FIRM\\Alice") == "alice"
    with pytest.raises(UnknownUser):
        await auth.lookup_user("ali*")


# -- servers --------------------------------------------------------------------------------


class _Silent(Protocol):
    """Accepts the connection and never answers."""


@pytest_twisted.ensureDeferred
async def test_unreachable_and_silent_servers_are_skipped(
    dc: RunningDirectory, pki: TestPki
) -> None:
    factory = ServerFactory.forProtocol(_Silent)
    silent = reactor.listenTCP(0, factory, interface="127.0.0.1")
    closed = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    closed_url = f"ldap://127.0.0.1:{closed.getHost().port}"
    await closed.stopListening()
    try:
        urls = [closed_url, f"ldap://127.0.0.1:{silent.getHost().port}", dc.url]
        auth = make(urls, pki, timeout=0.3, connect_timeout=0.3)
        assert (await auth.authenticate("alice", "pw-alice")).user == "alice"
        with pytest.raises(BackendUnavailable):
            await make(urls[:2], pki, timeout=0.3, connect_timeout=0.3).authenticate(
                "alice", "pw-alice"
            )
    finally:
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refused_service_account_is_not_retried_on_other_servers(pki: TestPki) -> None:
    first = start_directory(reactor, firm_directory(), pki=pki)
    second = start_directory(reactor, firm_directory(), pki=pki)
    try:
        auth = make([first.url, second.url], pki, bind_password="wrong")
        with pytest.raises(BackendUnavailable):
            await auth.authenticate("alice", "pw-alice")
        assert first.connections == 1 and second.connections == 0
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.parametrize("who_am_i", [True, False], ids=["who-am-i", "bind-name-search"])
@pytest_twisted.ensureDeferred
async def test_without_service_account_a_colliding_upn_cannot_take_another_identity(
    dc: RunningDirectory, pki: TestPki, who_am_i: bool
) -> None:
    # e-mail style UPNs: "hank@firm.example" is ivy's UPN, while the account hank has another
    dc.set_who_am_i(who_am_i)
    dc.directory.add_user("hank", "pw-hank", upn="henry.adams@firm.example")
    dc.directory.add_user("ivy", "pw-ivy", upn="hank@firm.example")
    auth = make([dc.url], pki, bind_dn=None, bind_password=None)
    # "hank" binds hank@firm.example, which is ivy: never hank's identity
    with pytest.raises(SignInRefused) as refused:
        await auth.authenticate("hank", "pw-ivy")
    assert not isinstance(refused.value, UnknownUser)
    assert dc.bind_names == ["hank@firm.example"]
    # typing the UPN itself names (among others) the bound account: that is ivy
    assert (await auth.authenticate("hank@firm.example", "pw-ivy")).user == "ivy"
    assert (await auth.authenticate("FIRM\\hank", "pw-hank")).user == "hank"
    assert (await auth.authenticate("henry.adams@firm.example", "pw-hank")).user == "hank"


@pytest_twisted.ensureDeferred
async def test_without_service_account_binds_as_upn_first(
    dc: RunningDirectory, pki: TestPki
) -> None:
    auth = make([dc.url], pki, bind_dn=None, bind_password=None)
    identity = await auth.authenticate("alice", "pw-alice")
    assert identity.user == "alice" and identity.groups == {AUDIT, STAFF}
    assert dc.bind_names[0] == "alice@firm.example"
    down = await auth.authenticate("FIRM\\alice", "pw-alice")
    assert down.user == "alice"
    with pytest.raises(UnknownUser):  # AD's "data 525"
        await auth.authenticate("mallory", "x")
    with pytest.raises(SignInRefused) as wrong:  # AD's "data 52e"
        await auth.authenticate("alice", "x")
    assert not isinstance(wrong.value, UnknownUser)
    with pytest.raises(SignInRefused):
        await auth.refresh(identity)
