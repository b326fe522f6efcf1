"""Directory sign-in through the real daemon and the real CLI, against a real Samba AD DC.

The daemon runs with ``[auth] backends = ldap, local`` and the DC's CA; engagements are granted
to AD groups with the real ``smartsync-admin grant --group``; users sign in with
``smartsync login`` in every name form and see exactly the engagements their (nested) groups
allow. Removing a user from the group takes the engagement away, both for a new sign-in and for
an open session once its groups are re-read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)
from test_cli_client import Client

pytestmark = [pytest.mark.integration, pytest.mark.samba]

DORA_PW = "Dora-Passw0rd-1"
ERIN_PW = "Erin-Passw0rd-1"


@pytest.fixture(scope="module")
def directory(samba_dc: SambaDC) -> SambaDC:  # noqa: F811
    samba_dc.add_group("Assurance")
    samba_dc.add_group("Engagement Team", member_of=["Assurance"])  # nested
    samba_dc.add_group("Tax")
    samba_dc.add_user("dora", DORA_PW, groups=["Engagement Team"])
    samba_dc.add_user("erin", ERIN_PW, groups=["Tax"])
    return samba_dc


@pytest.fixture(scope="module")
def server(directory: SambaDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ad")
    secret = base / "bind.secret"
    secret.write_text(directory.bind_password + "\n")
    secret.chmod(0o600)
    config = f"""
[auth]
backends = ldap, local
[ldap]
urls = {' '.join(directory.urls)}
ca_file = {directory.ca_file}
base_dn = {directory.base_dn}
bind_dn = {directory.bind_dn}
bind_password_file = {secret}
netbios_domain = {directory.netbios}
upn_suffix = {directory.realm}
refresh_interval = 0.02
"""
    d = running_daemon(base, config_text=config)
    try:
        for args in [
            ("engagement", "create", "acme-2026"),
            ("engagement", "create", "tax-2026"),
            # granted to the parent group: dora is in it through "Engagement Team"
            ("grant", "acme-2026", "--group", "Assurance", "--role", "editor"),
            ("grant", "tax-2026", "--group", "Tax", "--role", "reader"),
        ]:
            done = d.admin(*args)
            assert done.returncode == 0, done.stdout + done.stderr
        yield d
    finally:
        d.stop()


def login(client: Client, server: Daemon, user: str, password: str):
    return client.run(
        "--trust-fingerprint", server.fingerprint, "login", server.url, "--user", user,
        "--password-stdin", input=password + "\n",
    )


def visible(client: Client, server: Daemon) -> set[str]:
    done = client.run("--json", "engagements", server.url)
    assert done.returncode == 0, done.stderr
    return {e["name"] for e in json.loads(done.stdout)["engagements"]}


def test_group_grants_are_stored_by_stable_id(server: Daemon) -> None:
    done = server.admin("grants", "acme-2026")
    assert done.returncode == 0, done.stderr
    assert "Assurance" in done.stdout
    assert "S-1-5-21-" in done.stdout  # the group's objectSid, not its (renamable) name


@pytest.mark.parametrize("form", ["dora", "dora@firm.example", "FIRM\\dora"])
def test_every_user_form_signs_in_and_sees_nested_group_grant(
    server: Daemon, tmp_path: Path, form: str
) -> None:
    client = Client(tmp_path)
    done = login(client, server, form, DORA_PW)
    assert done.returncode == 0, done.stderr
    assert visible(client, server) == {"acme-2026"}


def test_wrong_password_and_unknown_user_get_the_same_refusal(
    server: Daemon, tmp_path: Path
) -> None:
    client = Client(tmp_path)
    wrong = login(client, server, "dora", "not her password")
    unknown = login(client, server, "nobody-here", "whatever-1")
    assert wrong.returncode == unknown.returncode == 3
    assert "sign-in failed" in wrong.stderr.lower()
    assert wrong.stderr.replace("dora", "X") == unknown.stderr.replace("nobody-here", "X")
    assert "not her password" not in server.log_text()


def test_empty_password_refused(server: Daemon, tmp_path: Path) -> None:
    client = Client(tmp_path)
    done = login(client, server, "erin", "")
    assert done.returncode != 0
    assert not (client.config / "config.json").exists() or "token" not in (
        client.config / "config.json"
    ).read_text()


def test_filter_injection_signs_in_nobody(server: Daemon, tmp_path: Path) -> None:
    client = Client(tmp_path)
    done = login(client, server, "*)(sAMAccountName=*", DORA_PW)
    assert done.returncode == 3


def test_removing_user_from_group_takes_access_away(
    server: Daemon, directory: SambaDC, tmp_path: Path
) -> None:
    directory.add_user("fred", "Fred-Passw0rd-1", groups=["Engagement Team"])
    (tmp_path / "open-session").mkdir()
    (tmp_path / "new-session").mkdir()
    client = Client(tmp_path / "open-session")
    assert login(client, server, "fred", "Fred-Passw0rd-1").returncode == 0
    assert visible(client, server) == {"acme-2026"}

    directory.remove_from_group("fred", "Engagement Team")

    # a new sign-in reads the groups again at once
    fresh = Client(tmp_path / "new-session")
    assert login(fresh, server, "fred", "Fred-Passw0rd-1").returncode == 0
    assert visible(fresh, server) == set()

    # the open session re-reads them once its refresh interval (1.2 s here) has passed;
    # poll the real condition with a deadline
    deadline = time.monotonic() + 30
    while visible(client, server) and time.monotonic() < deadline:
        pass
    assert visible(client, server) == set()


MAIL_SUFFIX = "mail.firm.example"


@pytest.fixture(scope="module")
def no_service_account(
    directory: SambaDC, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon without bind_dn whose upn_suffix is the firm's e-mail domain, where the UPN
    ``hank@mail.firm.example`` belongs to ivy while ``hank`` is another person's account."""
    directory.add_upn_suffix(MAIL_SUFFIX)
    directory.add_user("hank", "Hank-Passw0rd-1", groups=["Engagement Team"])
    directory.add_user("ivy", "Ivy-Passw0rd-1", groups=["Tax"])
    directory.set_upn("hank", f"henry.adams@{MAIL_SUFFIX}")
    directory.set_upn("ivy", f"hank@{MAIL_SUFFIX}")
    base = tmp_path_factory.mktemp("ad-nosvc")
    config = f"""
[auth]
backends = ldap
[ldap]
urls = {' '.join(directory.urls)}
ca_file = {directory.ca_file}
base_dn = {directory.base_dn}
netbios_domain = {directory.netbios}
upn_suffix = {MAIL_SUFFIX}
"""
    d = running_daemon(base, config_text=config)
    try:
        yield d
    finally:
        d.stop()


def test_without_service_account_a_colliding_upn_cannot_take_another_identity(
    no_service_account: Daemon, tmp_path: Path
) -> None:
    server = no_service_account
    # "hank" is bound as hank@mail.firm.example, which Samba resolves to ivy: before the fix
    # the daemon then read the identity from sAMAccountName=hank and signed ivy in as hank.
    (tmp_path / "a").mkdir()
    taken = Client(tmp_path / "a")
    done = login(taken, server, "hank", "Ivy-Passw0rd-1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "sign-in hank from" not in server.log_text()
    assert "bound" in server.log_text() and "not the account the name names" in server.log_text()
    # each person still signs in as themselves
    (tmp_path / "b").mkdir()
    ivy = Client(tmp_path / "b")
    assert login(ivy, server, f"hank@{MAIL_SUFFIX}", "Ivy-Passw0rd-1").returncode == 0
    assert "sign-in ivy from" in server.log_text()
    (tmp_path / "c").mkdir()
    hank = Client(tmp_path / "c")
    assert login(hank, server, "FIRM\\hank", "Hank-Passw0rd-1").returncode == 0
    assert "sign-in hank from" in server.log_text()


def test_every_spelling_of_a_name_counts_for_one_account(
    server: Daemon, directory: SambaDC
) -> None:
    """alice, FIRM\\alice, alice@firm.example and " alice" all bind the same AD account, so
    they share one count of failures (keyed on its objectSid): after 5 the right password gets
    429 too. Before, each spelling had its own 5 and the domain account took 20 wrong binds."""
    directory.add_user("gina", "Gina-Passw0rd-1")
    spellings = ["gina", "FIRM\\gina", "gina@firm.example", " gina", "GINA"]
    for name in spellings:
        status, _ = server.request(
            "POST", "/v1/login", json_body={"user": name, "password": "wrong guess"}
        )
        assert status == 401, name
    status, _ = server.request(
        "POST", "/v1/login", json_body={"user": "FIRM\\gina", "password": "Gina-Passw0rd-1"}
    )
    assert status == 429


def test_a_local_user_named_like_a_directory_account_is_refused(server: Daemon) -> None:
    """Grants to user "dora" name one principal: a local "dora" would get the directory dora's
    grants (and she the local one's). Before, `user add dora` succeeded."""
    for name in ("dora", "DORA"):
        done = server.admin("user", "add", name, "--password-stdin", input="Local-pw-1\n")
        assert done.returncode != 0, done.stdout
        assert "is an account in the directory" in done.stderr
    assert "dora" not in server.admin("user", "list").stdout
    done = server.admin("user", "add", "zed-local", "--password-stdin", input="Local-pw-1\n")
    assert done.returncode == 0, done.stderr
