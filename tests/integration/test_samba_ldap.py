"""Directory sign-in against a real Samba AD DC: user forms, verified LDAPS and StartTLS, nested
groups via the in-chain rule, refusals, and refresh() noticing a removed group membership."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from smartsyncd.auth.identity import BackendUnavailable, SignInRefused, UnknownUser
from smartsyncd.auth.ldap import LdapAuthenticator, LdapConfig
from smartsyncd.testing.ldapserver import make_test_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.samba,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ALICE_PW = "Alice-pw-1"
FORMS = ["alice", "FIRM\\alice", "alice@firm.example", "ALICE"]


@pytest.fixture(scope="module")
def firm(samba_dc: SambaDC) -> Iterator[SambaDC]:  # noqa: F811
    """alice in "Audit Team" (nested in "All Staff"), bob disabled, carol in no group."""
    samba_dc.add_group("All Staff")
    samba_dc.add_group("Audit Team", member_of=["All Staff"])
    samba_dc.add_user("alice", ALICE_PW, groups=["Audit Team"])
    samba_dc.add_user("bob", "Bob-pw-1")
    samba_dc.disable("bob")
    samba_dc.add_user("carol", "Carol-pw-1")
    yield samba_dc


def authenticator(
    dc: SambaDC, urls: list[str] | None = None, **overrides: object
) -> LdapAuthenticator:
    fields: dict[str, object] = dict(
        urls=urls or dc.urls,
        ca_file=dc.ca_file,
        base_dn=dc.base_dn,
        bind_dn=dc.bind_dn,
        bind_password=dc.bind_password,
        netbios_domain=dc.netbios,
        upn_suffix=dc.realm,
    )
    fields.update(overrides)
    return LdapAuthenticator(LdapConfig(**fields), reactor)  # type: ignore[arg-type]


async def group_ids(auth: LdapAuthenticator) -> tuple[str, str]:
    audit, name = await auth.lookup_group("Audit Team")
    assert name == "Audit Team"
    staff, _ = await auth.lookup_group("All Staff")
    assert audit.startswith("S-1-5-21-") and staff.startswith("S-1-5-21-") and audit != staff
    return audit, staff


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_each_user_form_over_ldaps_with_nested_groups(firm: SambaDC, form: str) -> None:
    auth = authenticator(firm)
    audit, staff = await group_ids(auth)
    identity = await auth.authenticate(form, ALICE_PW)
    assert identity.user == "alice" and identity.backend == "ldap"
    assert {audit, staff} <= identity.groups
    assert identity.group_names[staff] == "All Staff"


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_each_user_form_over_starttls(firm: SambaDC, form: str) -> None:
    auth = authenticator(firm, urls=firm.starttls_urls)
    audit, staff = await group_ids(auth)
    identity = await auth.authenticate(form, ALICE_PW)
    assert identity.user == "alice"
    assert {audit, staff} <= identity.groups


@pytest_twisted.ensureDeferred
async def test_without_service_account_binds_as_the_user_first(firm: SambaDC) -> None:
    auth = authenticator(firm, bind_dn=None, bind_password=None)
    identity = await auth.authenticate("alice", ALICE_PW)
    assert identity.user == "alice" and len(identity.groups) >= 2
    # Samba answers "data 52e" for unknown names too (Windows says 525), so without a service
    # account an unknown name is a plain refusal here.
    with pytest.raises(SignInRefused):
        await auth.authenticate("nobody-here", "whatever")
    with pytest.raises(SignInRefused) as refused:
        await auth.authenticate("alice", "wrong")
    assert not isinstance(refused.value, UnknownUser)


@pytest_twisted.ensureDeferred
async def test_wrong_password_disabled_and_unknown_users_are_refused(firm: SambaDC) -> None:
    auth = authenticator(firm)
    with pytest.raises(SignInRefused) as wrong:
        await auth.authenticate("alice", "not-her-password")
    assert not isinstance(wrong.value, UnknownUser)
    with pytest.raises(SignInRefused, match="disabled"):
        await auth.authenticate("bob", "Bob-pw-1")
    with pytest.raises(UnknownUser):
        await auth.authenticate("mallory", "x")
    with pytest.raises(UnknownUser):
        await auth.authenticate("*)(sAMAccountName=*", "x")
    with pytest.raises(UnknownUser):
        await auth.authenticate("OTHER\\alice", ALICE_PW)


@pytest_twisted.ensureDeferred
async def test_refresh_loses_a_removed_group(firm: SambaDC) -> None:
    auth = authenticator(firm)
    audit, staff = await group_ids(auth)
    identity = await auth.authenticate("FIRM\\alice", ALICE_PW)
    assert {audit, staff} <= identity.groups
    await deferToThread(firm.remove_from_group, "alice", "Audit Team")
    try:
        refreshed = await auth.refresh(identity)
        assert refreshed.user == "alice"
        assert audit not in refreshed.groups and staff not in refreshed.groups
    finally:
        await deferToThread(firm.tool, "group", "addmembers", "Audit Team", "alice")
    again = await auth.refresh(identity)
    assert {audit, staff} <= again.groups


@pytest_twisted.ensureDeferred
async def test_refresh_refuses_a_disabled_account(firm: SambaDC) -> None:
    await deferToThread(firm.add_user, "dora", "Dora-pw-1", ["Audit Team"])
    auth = authenticator(firm)
    identity = await auth.authenticate("dora", "Dora-pw-1")
    await deferToThread(firm.disable, "dora")
    with pytest.raises(SignInRefused, match="disabled"):
        await auth.refresh(identity)


@pytest_twisted.ensureDeferred
async def test_lookups(firm: SambaDC) -> None:
    auth = authenticator(firm)
    assert await auth.lookup_user("FIRM\\Alice") == "alice"
    assert await auth.lookup_user("alice@FIRM.example") == "alice"
    audit, _ = await auth.lookup_group("Audit Team")
    by_dn = await auth.lookup_group(f"CN=Audit Team,CN=Users,{firm.base_dn}")
    assert by_dn == (audit, "Audit Team")


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused_for_ldaps_and_starttls(
    firm: SambaDC, tmp_path
) -> None:
    other = make_test_pki(str(tmp_path))
    for urls in (firm.urls, firm.starttls_urls):
        auth = authenticator(firm, urls=urls, ca_file=other.ca_file)
        with pytest.raises(BackendUnavailable):
            await auth.authenticate("alice", ALICE_PW)


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_skipped(firm: SambaDC) -> None:
    auth = authenticator(firm, urls=["ldaps://127.0.0.1:1", *firm.urls], connect_timeout=2.0)
    identity = await auth.authenticate("alice@firm.example", ALICE_PW)
    assert identity.user == "alice"
