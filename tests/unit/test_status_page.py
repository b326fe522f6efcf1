"""The admin status page without a reactor (issue 17): rendering and escaping, the CSRF tokens,
who is an admin, and sign-in, refusals and actions through the real admin Site in memory.

The Site is ``make_admin_site`` with the real ``StatusPage`` over the real SQLite store on
synchronous pools and a real ``SessionManager`` (local accounts), driven by treq over an
in-memory transport (tests/unit/webkit.py). The browser's view is in
tests/integration/test_status_page_browser.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from twisted.internet.defer import maybeDeferred
from webkit import PASSWORD, Env, Reply, SiteClient, in_memory

from smartsyncd.auth.admins import AdminPolicy
from smartsyncd.auth.local import LocalAuthenticator
from smartsyncd.auth.ratelimit import LoginRateLimiter
from smartsyncd.auth.sessions import SessionManager
from smartsyncd.core.locks import Lock
from smartsyncd.storage.api import CopyRecord, EngagementStatus, SessionRecord
from smartsyncd.storage.statusview import EngagementSummary, StatusOverview
from smartsyncd.testing.syncpool import run_sync
from smartsyncd.web import statushtml as html
from smartsyncd.web.adminsite import make_admin_site
from smartsyncd.web.clientaddr import parse_trusted_proxies
from smartsyncd.web.inflight import InFlight
from smartsyncd.web.metrics import SyncMetrics
from smartsyncd.web.refusals import MAX_PATH, RecentRefusals
from smartsyncd.web.statuspage import StatusPage, StatusSources, csrf_ok, csrf_token

NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;'


def hostile_overview() -> html.OverviewPage:
    status = EngagementStatus(name="x", finalized_at=None, finalized_by=None,
                              finalized_reason=None, retention_days=None, legal_hold=HOSTILE,
                              legal_hold_by=HOSTILE, legal_hold_at=NOW)
    lock = Lock(path=f"W/{HOSTILE}", holder=HOSTILE, since=NOW)
    copy = CopyRecord(copy_id=HOSTILE, user=HOSTILE, host=HOSTILE, registered_at=NOW,
                      last_contact=NOW, unsynced=3, unsynced_since=NOW, abandoned_at=None,
                      abandoned_by=None)
    engagement = EngagementSummary(
        name="acme", title=HOSTILE, head=7, files=2, live_bytes=2048, stored_bytes=1024,
        last_change=NOW, status=status, quota_bytes=4096, locks=(lock,), copies=(copy,))
    session = SessionRecord(id=HOSTILE, token_hash="t", user=HOSTILE, groups=(), backend="local",
                            created_at=NOW, expires_at=NOW + timedelta(days=1), refreshed_at=NOW)
    refusals = RecentRefusals()
    refusals.add(NOW.timestamp(), "GET", f"/v1/engagements/{HOSTILE}".encode(), 404, HOSTILE)
    return html.OverviewPage(
        admin=HOSTILE, csrf=HOSTILE, now=NOW, overview=StatusOverview((engagement,), more=True),
        store_error=None, sessions=[session],
        transfers=[html.Transfer("POST", HOSTILE, HOSTILE, 1.5, 10, 20)],
        refusals=refusals.newest_first(), refusals_total=refusals.total,
        disk={"data": (5 << 30, 10 << 30), "chunks": None}, warn_bytes=6 << 30,
        connections=3, parked=1)


def markup_of(page: str) -> set[str]:
    return set(re.findall(r"<([a-zA-Z0-9]+)", page))


def test_hostile_values_are_text_everywhere_on_the_overview() -> None:
    page = html.render_overview(hostile_overview())
    # only this module's own elements: none made of a value
    assert markup_of(page) <= {"html", "head", "meta", "title", "style", "body", "nav", "a",
                               "form", "input", "button", "h1", "h2", "p", "table", "tr", "th",
                               "td", "small", "br", "b", "span"}
    assert "<script" not in page and "<img" not in page
    escaped = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
    assert page.count(escaped) >= 10  # title, hold, lock, holder, copy, user, host, session...
    assert "&amp;amp;" in page  # an entity in the data stays text, never decoded
    # the action links carry the values URL-encoded, then escaped
    assert 'href="/status/confirm-break?engagement=acme&amp;path=W%2F%22%3E%3Cscript' in page
    assert "More engagements exist" in page
    assert "LOW" in page and "cannot be read" in page  # 5 GiB free under a 6 GiB threshold
    assert "3</span> since" in page  # unsynced changes stand out


def test_confirmation_pages_escape_the_hidden_fields_and_carry_the_token() -> None:
    lock = Lock(path=f"W/{HOSTILE}", holder="alice", since=NOW)
    page = html.render_confirm_break("ops", "tok-123", "acme", lock)
    assert '<input type="hidden" name="csrf" value="tok-123">' in page
    assert 'name="path" value="W/&quot;&gt;&lt;script&gt;' in page
    assert 'name="reason"' in page and 'action="/status/break"' in page
    copy = CopyRecord(copy_id="c1", user="bob", host=HOSTILE, registered_at=NOW,
                      last_contact=NOW, unsynced=2, unsynced_since=NOW, abandoned_at=None,
                      abandoned_by=None)
    page = html.render_confirm_abandon("ops", "tok-123", "acme", copy)
    assert "2 unsynced change(s)" in page and "<script" not in page
    assert 'action="/status/abandon"' in page


def test_a_branch_shows_its_link_to_central_and_its_lag() -> None:
    down = html.BranchState(central_reachable=False, lag_seconds=2.5)
    overview = html.render_overview(dataclasses.replace(hostile_overview(), branch=down))
    signin = html.render_signin("t", branch=down)
    for page in (overview, signin):
        assert "<h2>Branch office</h2>" in page
        assert "DOWN: reads are served from this branch, writes wait" in page and "2.50 s" in page
    up = html.render_signin("t", branch=html.BranchState(central_reachable=True, lag_seconds=None))
    assert '<span class="ok">reachable</span>' in up and "not measured yet" in up
    # not a branch: no such section
    assert "Branch office" not in html.render_signin("t")
    assert "Branch office" not in html.render_overview(hostile_overview())


def test_the_style_sheet_is_allowed_by_its_hash_and_nothing_else_is() -> None:
    page = html.render_signin("t")
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in html.CSP
    assert "default-src 'none'" in html.CSP and "script-src" not in html.CSP


def test_sizes_and_the_refusal_ring() -> None:
    assert [html.size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB"]
    capped = html.table(["n"], [[str(i)] for i in range(5)], "none", limit=2)
    assert capped.count("<tr>") == 3 and "3 more not shown" in capped
    ring = RecentRefusals(keep=3)
    ring.add(1.0, "GET", b"/ok", 200, "a")  # not a refusal
    for i in range(5):
        ring.add(float(i), "GET", b"/x" * MAX_PATH, 400 + i, "b")
    assert ring.total == 5
    assert [r.status for r in ring.newest_first()] == [404, 403, 402]
    assert len(ring.newest_first()[0].path) == MAX_PATH + 3


def test_csrf_tokens_are_bound_to_the_secret_and_the_purpose() -> None:
    token = csrf_token("secret-a", "status")
    assert csrf_ok("secret-a", "status", token)
    assert not csrf_ok("secret-b", "status", token)
    assert not csrf_ok("secret-a", "signin", token)
    assert not csrf_ok("secret-a", "status", None)
    assert not csrf_ok(None, "status", token)
    assert not csrf_ok("", "status", csrf_token("", "status"))


class _Directory:
    """The group look-up of a directory: answers from a table, or fails while ``down``."""

    def __init__(self, groups: dict[str, str]) -> None:
        self.groups = groups
        self.down = False
        self.asked: list[str] = []

    async def lookup_group(self, name_or_dn: str) -> tuple[str, str]:
        self.asked.append(name_or_dn)
        if self.down:
            raise ConnectionError("no domain controller answered")
        return self.groups[name_or_dn], name_or_dn


def _session(principal: str, groups: tuple[str, ...] = ()) -> SessionRecord:
    user = principal.split(":", 1)[1]
    return SessionRecord(id="s", token_hash="t", user=user, groups=groups,
                         backend=principal.split(":")[0], created_at=NOW, expires_at=NOW,
                         refreshed_at=NOW, principal=principal)


@in_memory
async def test_who_is_an_admin() -> None:
    directory = _Directory({"SmartSync Admins": "S-1-5-21-9-512"})
    policy = AdminPolicy(["ops"], ["SmartSync Admins", "s-1-5-21-9-700"], directory)
    assert await policy.allows(_session("local:ops"))
    assert not await policy.allows(_session("local:alice"))
    assert not await policy.allows(_session("ldap:ops"))  # a directory "ops" is not local ops
    directory.down = True
    # a group given as a SID needs no look-up
    assert await policy.allows(_session("ad:S-1-5-21-9-1001", ("S-1-5-21-9-700",)))
    member = _session("ad:S-1-5-21-9-1002", ("S-1-5-21-9-512",))
    assert not await policy.allows(member)  # not resolved: refused, not guessed
    directory.down = False
    assert await policy.allows(member)
    assert await policy.allows(member)
    assert directory.asked == ["SmartSync Admins"] * 3  # asked until resolved, then kept
    assert not AdminPolicy([], []).configured
    assert not await AdminPolicy([], []).allows(_session("local:ops"))


# -- through the admin Site, in memory --------------------------------------------------------


class Browser:
    """Keeps the cookies the admin Site sets, as a browser would, and sends them back."""

    def __init__(self, env: Env, site: SiteClient) -> None:
        self.env = env
        self.site = site
        self.cookies: dict[str, str] = {}
        self.set_cookie_lines: list[str] = []

    async def go(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if form is not None:
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        d = self.site.request(method, "https://admin.example" + path, headers=headers, data=data,
                              allow_redirects=False)
        reply = await self.env.reply(d)
        for line in reply.headers.getRawHeaders(b"set-cookie") or []:
            text = line.decode()
            self.set_cookie_lines.append(text)
            name, value = text.split(";", 1)[0].split("=", 1)
            if "Max-Age=0" in text:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    async def sign_in(self, user: str, password: str = PASSWORD) -> Reply:
        form = await self.go("GET", "/status/signin")
        return await self.go("POST", "/status/signin", {
            "csrf": csrf_of(form), "user": user, "password": password})


def csrf_of(reply: Reply) -> str:
    found = re.search(rb'name="csrf" value="([0-9a-f]+)"', reply.body)
    assert found is not None, reply.body
    return found.group(1).decode()


@pytest.fixture
def admin(env: Env) -> Browser:
    """The admin Site for ``[admin] users = alice``; alice holds a check-out in alpha."""
    sessions = SessionManager(env.store, [LocalAuthenticator(env.store, maybeDeferred)],
                              env.clock, LoginRateLimiter(env.clock))
    metrics = SyncMetrics(env.clock.seconds)

    async def space() -> dict[str, tuple[int, int]]:
        return {"data": (10 << 30, 20 << 30)}

    sources = StatusSources(inflight=lambda: InFlight(), refusals=metrics.refusals, free_space=space,
                            folders=["data", "chunks"], warn_bytes=1 << 30)
    page = StatusPage(env.store, sessions, AdminPolicy(["alice"], []), sources, env.clock)
    run_sync(env.store.checkout(env.alpha, "W/Cash.xlsx", "alice", None, None))
    return Browser(env, SiteClient(make_admin_site(metrics, env.clock, page)))


@in_memory
async def test_pages_need_a_signed_in_admin(admin: Browser) -> None:
    r = await admin.go("GET", "/status")
    assert r.status == 303 and r.headers.getRawHeaders(b"location") == [b"/status/signin"]
    r = await admin.go("POST", "/status/break", {"engagement": "alpha", "path": "W/Cash.xlsx"})
    assert r.status == 403 and b"not signed in" in r.body
    form = await admin.go("GET", "/status/signin")
    assert form.status == 200
    [line] = admin.set_cookie_lines
    assert line.startswith("smartsync_status_signin=")
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/status"):
        assert attribute in line
    assert form.headers.getRawHeaders(b"content-security-policy") == [html.CSP.encode()]
    assert form.headers.getRawHeaders(b"x-frame-options") == [b"DENY"]


@in_memory
async def test_sign_in_needs_the_form_s_token(admin: Browser) -> None:
    await admin.go("GET", "/status/signin")
    r = await admin.go("POST", "/status/signin", {"user": "alice", "password": PASSWORD})
    assert r.status == 403 and b"CSRF token" in r.body
    assert "smartsync_status" not in admin.cookies
    assert await admin.env.store.list_sessions("alice") == []


@in_memory
async def test_a_wrong_password_and_a_non_admin_are_refused(admin: Browser) -> None:
    r = await admin.sign_in("alice", "wrong")
    assert r.status == 401 and b"sign-in failed" in r.body
    r = await admin.sign_in("rita")
    assert r.status == 403 and b"rita is not a status-page admin" in r.body
    assert "smartsync_status" not in admin.cookies
    assert await admin.env.store.list_sessions("rita") == []  # the session was ended at once


@in_memory
async def test_breaking_a_check_out_needs_the_token_and_is_audited(admin: Browser) -> None:
    r = await admin.sign_in("alice")
    assert r.status == 303 and "smartsync_status" in admin.cookies
    cookie = next(c for c in admin.set_cookie_lines if c.startswith("smartsync_status="))
    assert all(a in cookie for a in ("Secure", "HttpOnly", "SameSite=strict"))
    overview = await admin.go("GET", "/status")
    assert overview.status == 200 and b"W/Cash.xlsx" in overview.body
    form = {"engagement": "alpha", "path": "W/Cash.xlsx", "confirm": "yes", "reason": "leave"}
    for forged in ({}, {"csrf": "f" * 64}, {"csrf": csrf_token("another-session", "status")}):
        r = await admin.go("POST", "/status/break", form | forged)
        assert r.status == 403 and b"nothing was changed" in r.body
    assert [lock.path for lock in await admin.env.store.list_locks(admin.env.alpha)] == [
        "W/Cash.xlsx"]

    confirm = await admin.go("GET", "/status/confirm-break?engagement=alpha&path=W%2FCash.xlsx")
    r = await admin.go("POST", "/status/break", form | {"csrf": csrf_of(confirm)})
    assert r.status == 200 and b"Broke the check-out of W/Cash.xlsx" in r.body
    assert await admin.env.store.list_locks(admin.env.alpha) == []
    [event] = [e for e in await admin.env.store.audit_records(admin.env.alpha)
               if e.event == "lock_break"]
    assert (event.actor, event.detail["reason"]) == ("status:alice", "leave")


@in_memory
async def test_bad_input_is_a_page_naming_it(admin: Browser) -> None:
    await admin.sign_in("alice")
    csrf = csrf_of(await admin.go("GET", "/status"))
    cases = [
        ({"engagement": "nope", "path": "a", "confirm": "yes", "reason": "r"}, 404,
         b"no engagement &#x27;nope&#x27;"),
        ({"engagement": "alpha", "path": "other", "confirm": "yes", "reason": "r"}, 404,
         b"is not checked out"),
        ({"engagement": "alpha", "path": "W/Cash.xlsx", "reason": "r"}, 400, b"not confirmed"),
        ({"engagement": "alpha", "path": "W/Cash.xlsx", "confirm": "yes"}, 400,
         b"the form field &#x27;reason&#x27; is missing"),
        ({"engagement": "alpha", "path": "x" * 1001, "confirm": "yes", "reason": "r"}, 400,
         b"longer than 1000 characters"),
    ]
    for fields, status, words in cases:
        r = await admin.go("POST", "/status/break", fields | {"csrf": csrf})
        assert (r.status, words in r.body) == (status, True), r.body
        assert b"Traceback" not in r.body
    assert len(await admin.env.store.list_locks(admin.env.alpha)) == 1  # nothing changed
    r = await admin.go("GET", "/status/no-such-page")
    assert r.status == 404
    r = await admin.go("POST", "/status/signin", {"csrf": "x" * 70_000})
    assert r.status == 413  # a form is small: the body cap of the admin site


@in_memory
async def test_sign_out_ends_the_session(admin: Browser) -> None:
    await admin.sign_in("alice")
    csrf = csrf_of(await admin.go("GET", "/status"))
    r = await admin.go("POST", "/status/signout", {"csrf": csrf})
    assert r.status == 303 and "smartsync_status" not in admin.cookies
    assert await admin.env.store.list_sessions("alice") == []


@in_memory
async def test_a_password_over_plain_http_from_another_host_is_refused(admin: Browser) -> None:
    # the client's address as a proxy in front reports it (the peer here is always loopback)
    admin.site._agent._serverFactory.trusted_proxies = parse_trusted_proxies("127.0.0.1")
    form = await admin.go("GET", "/status/signin")
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in admin.cookies.items()),
               "Content-Type": "application/x-www-form-urlencoded",
               "X-Forwarded-For": "203.0.113.9"}
    body = urlencode({"csrf": csrf_of(form), "user": "alice", "password": PASSWORD}).encode()
    for scheme, status in (("http", 403), ("https", 303)):
        d = admin.site.request("POST", f"{scheme}://admin.example/status/signin", headers=headers,
                               data=body, allow_redirects=False)
        r = await admin.env.reply(d)
        assert r.status == status, r.body
    assert b"sign in over TLS" in (await admin.env.reply(admin.site.request(
        "POST", "http://admin.example/status/signin", headers=headers, data=body))).body
    assert len(await admin.env.store.list_sessions("alice")) == 1  # only the TLS one
