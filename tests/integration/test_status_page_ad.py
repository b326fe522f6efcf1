"""Issue 17: status-page admins by Active Directory group, against a real Samba AD DC.

The daemon signs in through ``[auth] backends = ldap, local`` with ``[admin] groups = IT
Operators`` given by name (the daemon looks the group's SID up with its service account) and
``users = ops`` (a local account). gail is in "Helpdesk", a group nested in "IT Operators";
hugo is only in "Staff". The sign-in form is posted as a browser would (its cookie and CSRF
token); the browser itself is exercised in test_status_page_browser.py.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from admin_endpoint import admin_port
from daemon import Daemon, running_daemon
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)

pytestmark = [pytest.mark.integration, pytest.mark.samba]

GAIL_PW = "Gail-Passw0rd-1"
HUGO_PW = "Hugo-Passw0rd-1"
OPS_PW = "correct horse battery"


@pytest.fixture(scope="module")
def server(samba_dc: SambaDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:  # noqa: F811
    samba_dc.add_group("IT Operators")
    samba_dc.add_group("Helpdesk", member_of=["IT Operators"])  # nested
    samba_dc.add_group("Staff")
    samba_dc.add_user("gail", GAIL_PW, groups=["Helpdesk"])
    samba_dc.add_user("hugo", HUGO_PW, groups=["Staff"])
    base = tmp_path_factory.mktemp("status-ad")
    secret = base / "bind.secret"
    secret.write_text(samba_dc.bind_password + "\n")
    secret.chmod(0o600)
    config = f"""
[auth]
backends = ldap, local
[ldap]
urls = {' '.join(samba_dc.urls)}
ca_file = {samba_dc.ca_file}
base_dn = {samba_dc.base_dn}
bind_dn = {samba_dc.bind_dn}
bind_password_file = {secret}
netbios_domain = {samba_dc.netbios}
upn_suffix = {samba_dc.realm}
[admin]
listen = tcp:0:interface=127.0.0.1
users = ops
groups = IT Operators
"""
    d = running_daemon(base, config_text=config)
    try:
        d.add_user("ops", OPS_PW)
        yield d
    finally:
        d.stop()


def _request(port: int, method: str, path: str, cookies: dict[str, str],
             form: dict[str, str] | None = None) -> tuple[int, str, SimpleCookie]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body, headers)
        answer = conn.getresponse()
        jar: SimpleCookie = SimpleCookie()
        for line in answer.headers.get_all("Set-Cookie") or []:
            jar.load(line)
        return answer.status, answer.read().decode(), jar
    finally:
        conn.close()


def sign_in(server: Daemon, user: str, password: str) -> tuple[int, str, dict[str, str]]:
    """The sign-in form, then its POST; returns the status, the page and the cookies kept."""
    port = admin_port(server)
    _, page, jar = _request(port, "GET", "/status/signin", {})
    cookies = {k: m.value for k, m in jar.items()}
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token is not None, page
    status, page, jar = _request(port, "POST", "/status/signin", cookies, {
        "csrf": token.group(1), "user": user, "password": password})
    for k, m in jar.items():
        if m["max-age"] == "0":
            cookies.pop(k, None)
        else:
            cookies[k] = m.value
    return status, page, cookies


@pytest.mark.parametrize("form", ["gail", "FIRM\\gail"])
def test_a_member_of_a_nested_admin_group_signs_in(server: Daemon, form: str) -> None:
    status, _, cookies = sign_in(server, form, GAIL_PW)
    assert status == 303 and "smartsync_status" in cookies
    status, page, _ = _request(admin_port(server), "GET", "/status", cookies)
    assert status == 200 and "signed in as <b>gail</b>" in page


def test_a_directory_user_outside_the_groups_is_refused(server: Daemon) -> None:
    status, page, cookies = sign_in(server, "hugo", HUGO_PW)
    assert status == 403 and "hugo is not a status-page admin" in page
    assert "smartsync_status" not in cookies
    status, _, _ = sign_in(server, "gail", "not her password")
    assert status == 401


def test_a_local_admin_signs_in_beside_the_directory(server: Daemon) -> None:
    status, _, cookies = sign_in(server, "ops", OPS_PW)
    assert status == 303 and "smartsync_status" in cookies
