"""Principals by backend and directory users disabled or removed, through the real daemon, the
real ``smartsync-admin`` and a real Samba AD DC (issue 14).

- a local ``lena`` and the directory's ``lena`` are two principals: neither sees the other's
  grants (before, a user grant named a bare name that both matched);
- renaming an AD account keeps its grants and its open session (grants key on the SID);
- a user grant kept by name (as schema 5 migrates a directory user's grant) is claimed by the
  account at its first sign-in, or by ``smartsync-admin db upgrade``;
- ``smartsync-admin user disable|enable|remove`` works for directory accounts, by any name form
  or by SID: the next request gets 401 and sign-ins are refused;
- an account disabled in AD (userAccountControl) is refused at sign-in and its open session
  ends at its next group refresh.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator

import pytest
from daemon import Daemon, running_daemon
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)

pytestmark = [pytest.mark.integration, pytest.mark.samba]

PW = "Princ-Passw0rd-1"
LOCAL_PW = "local lena pw"


@pytest.fixture(scope="module")
def server(samba_dc: SambaDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:  # noqa: F811
    base = tmp_path_factory.mktemp("ad-principals")
    secret = base / "bind.secret"
    secret.write_text(samba_dc.bind_password + "\n")
    secret.chmod(0o600)
    # local first: a name known to both backends signs in locally; FIRM\name reaches AD
    config = f"""
[auth]
backends = local, ldap
[ldap]
urls = {' '.join(samba_dc.urls)}
ca_file = {samba_dc.ca_file}
base_dn = {samba_dc.base_dn}
bind_dn = {samba_dc.bind_dn}
bind_password_file = {secret}
netbios_domain = {samba_dc.netbios}
upn_suffix = {samba_dc.realm}
refresh_interval = 0.02
"""
    d = running_daemon(base, config_text=config)
    try:
        for name in ("acme", "beta", "gamma"):
            admin_ok(d, "engagement", "create", name)
        yield d
    finally:
        d.stop()


def admin_ok(server: Daemon, *args: str, stdin: str | None = None) -> str:
    done = server.admin(*args, input=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def engagements(server: Daemon, token: str) -> set[str]:
    status, answer = server.request("GET", "/v1/engagements", token=token)
    assert status == 200, answer
    return {e["name"] for e in answer["engagements"]}


def sign_in_status(server: Daemon, user: str, password: str) -> int:
    return server.request("POST", "/v1/login", json_body={"user": user, "password": password})[0]


def session_status(server: Daemon, token: str) -> int:
    return server.request("GET", "/v1/session", token=token)[0]


def wait_for_status(server: Daemon, token: str, wanted: int, timeout: float = 30.0) -> int:
    """Poll GET /v1/session until it answers ``wanted`` (the refresh interval is 1.2 s)."""
    deadline = time.monotonic() + timeout
    status = session_status(server, token)
    while status != wanted and time.monotonic() < deadline:
        status = session_status(server, token)
    return status


def test_a_local_and_a_directory_user_of_one_name_do_not_share_grants(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    # the local lena existed before the directory got one (user add now refuses that)
    admin_ok(server, "user", "add", "lena", "--password-stdin", stdin=LOCAL_PW + "\n")
    samba_dc.add_user("lena", PW)
    admin_ok(server, "grant", "acme", "--user", "lena", "--role", "editor")  # the local one
    admin_ok(server, "grant", "beta", "--user", "FIRM\\lena", "--role", "reader")  # AD's
    listing = admin_ok(server, "grants")
    assert re.search(r"acme\tuser\tlena\teditor", listing), listing
    assert re.search(r"beta\tuser\tlena \(ad:S-1-5-21-[0-9-]+\)\treader", listing), listing

    local = server.login("lena", LOCAL_PW)
    directory = server.login("FIRM\\lena", PW)
    assert engagements(server, local) == {"acme"}
    assert engagements(server, directory) == {"beta"}
    # each session is its own principal's: ending the directory one leaves the local one
    sessions = admin_ok(server, "sessions", "list", "--user", "lena").splitlines()
    assert sorted(line.split("\t")[2] for line in sessions) == ["ldap", "local"]


def test_a_renamed_ad_account_keeps_its_grants_and_session(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    samba_dc.add_user("nora", PW)
    admin_ok(server, "grant", "gamma", "--user", "nora", "--role", "editor")
    token = server.login("nora", PW)
    assert engagements(server, token) == {"gamma"}

    samba_dc.tool("user", "rename", "nora", "--samaccountname=nora.vance")

    assert sign_in_status(server, "nora", PW) == 401  # the old name is no account now
    renamed = server.login("nora.vance", PW)
    assert engagements(server, renamed) == {"gamma"}
    # the open session is re-read by SID: still valid, now under the new name
    deadline = time.monotonic() + 30
    status, answer = server.request("GET", "/v1/session", token=token)
    while answer.get("user") != "nora.vance" and time.monotonic() < deadline:
        status, answer = server.request("GET", "/v1/session", token=token)
    assert status == 200 and answer["user"] == "nora.vance", answer
    assert engagements(server, token) == {"gamma"}


def test_a_grant_kept_by_name_is_claimed_at_first_sign_in(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    """Schema 5 turns a directory user's grant ``quin`` into ``name:quin``; quin's first
    sign-in moves it to ``ad:<her SID>``, so a later rename keeps it."""
    samba_dc.add_user("quin", PW)
    admin_ok(server, "grant", "beta", "--user", "quin", "--role", "reader")
    with sqlite3.connect(server.data_dir / "metadata.sqlite3") as db:
        db.execute("UPDATE grants SET principal = 'name:quin' WHERE principal LIKE 'ad:%'"
                   " AND display_name = 'quin'")
    assert "(name:quin)" in admin_ok(server, "grants", "beta")
    token = server.login("quin", PW)
    assert engagements(server, token) == {"beta"}
    assert re.search(r"quin \(ad:S-1-5-21-[0-9-]+\)", admin_ok(server, "grants", "beta"))


def test_db_upgrade_claims_grants_kept_by_name_without_waiting_for_a_sign_in(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    samba_dc.add_user("rosa", PW)
    admin_ok(server, "grant", "gamma", "--user", "rosa", "--role", "reader")
    with sqlite3.connect(server.data_dir / "metadata.sqlite3") as db:
        db.execute("UPDATE grants SET principal = 'name:rosa' WHERE display_name = 'rosa'")
        db.execute("INSERT INTO grants SELECT engagement_id, 'user', 'name:ghost', 'ghost',"
                   " 'reader' FROM grants WHERE principal = 'name:rosa'")
    said = admin_ok(server, "db", "upgrade")
    assert re.search(r"grants by name rosa: 1 now belong to ad:S-1-5-21-", said), said
    assert "grants by name ghost: left for the next sign-in" in said, said
    # renamed before her first sign-in: the grant followed her SID
    samba_dc.tool("user", "rename", "rosa", "--samaccountname=rosa.diaz")
    assert engagements(server, server.login("rosa.diaz", PW)) == {"gamma"}


def test_smartsync_admin_disables_enables_and_removes_a_directory_user(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    samba_dc.add_user("otto", PW)
    admin_ok(server, "grant", "acme", "--user", "otto", "--role", "reader")
    token = server.login("otto", PW)
    assert session_status(server, token) == 200

    said = admin_ok(server, "user", "disable", "FIRM\\otto")
    assert "disabled directory user otto (ad:S-1-5-21-" in said, said
    assert session_status(server, token) == 401  # at once, not at the next refresh
    assert sign_in_status(server, "otto", PW) == 401
    assert sign_in_status(server, "otto@firm.example", PW) == 401
    assert re.search(r"otto\tdisabled\tad:S-1-5-21-", admin_ok(server, "user", "list"))

    admin_ok(server, "user", "enable", "otto")
    token = server.login("otto", PW)
    assert engagements(server, token) == {"acme"}  # disabling kept the grant

    sid = re.search(r"otto \(ad:(S-1-5-21-[0-9-]+)\)", admin_ok(server, "grants", "acme"))
    assert sid is not None
    said = admin_ok(server, "user", "remove", sid.group(1))  # by SID
    assert "removed directory user otto" in said, said
    assert session_status(server, token) == 401
    assert sign_in_status(server, "otto", PW) == 401
    assert "otto" not in admin_ok(server, "grants", "acme")

    unknown = server.admin("user", "disable", "nobody-at-all")
    assert unknown.returncode == 1 and "not found in the directory" in unknown.stderr


def test_an_account_disabled_in_ad_is_refused_and_its_session_ends(
    server: Daemon, samba_dc: SambaDC  # noqa: F811
) -> None:
    samba_dc.add_user("pia", PW)
    token = server.login("pia", PW)
    samba_dc.disable("pia")
    assert sign_in_status(server, "pia", PW) == 401
    assert wait_for_status(server, token, 401) == 401  # at the session's next refresh
    assert "account disabled" in server.log_text()
    samba_dc.enable("pia")
    assert session_status(server, server.login("pia", PW)) == 200
