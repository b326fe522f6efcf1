"""Issue 17: the admin status page, through the real daemon, in Debian's headless Chromium.

One ``twistd`` daemon with ``[admin] listen = ssl:0...`` and ``users = ops``; alice (an editor,
not an admin) works through the real ``smartsync`` CLI: she clones, commits a file and checks
it out. The browser (Selenium) signs in as ops and must see that data; breaks alice's
check-out and abandons a copy through their confirmation pages (the audit log then names
``status:ops``); alice is refused; POSTs without the CSRF token (from a script holding the
session cookie, and from a page of another origin) change nothing. The engagement's title and
the file's path are hostile HTML: they must show as text. Screenshots land in
``$SMARTSYNC_ARTIFACTS/status-page`` (default ``.artifacts/`` in the checkout).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.integration.admin_endpoint import admin_port
from tests.integration.browser import artifacts_folder, chromium, wait_until
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
ENG = "acme-2026"
TITLE = '<script>document.title="pwned"</script><b id="injected">Acme</b> & "Sons"'
FOLDER = "Working papers"
FILE = "Tom & Jerry's 'notes' &amp; more.txt"  # < > " are not valid in paths; & and ' are
CONFIG = "[admin]\nlisten = ssl:0:interface=127.0.0.1\nusers = ops\n"
SHOTS = artifacts_folder("status-page")


class Staff:
    """alice's real ``smartsync`` CLI, with its own settings folder."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(self, *args: str, cwd: Path | None = None, input: str = "") -> str:
        env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "xdg")})
        done = subprocess.run(
            [sys.executable, "-c", "from smartsyncd.cli.client import main; main()",
             "--config-dir", str(self.home / "cfg"), *args],
            input=input, capture_output=True, text=True, timeout=90, env=env,
            cwd=cwd or self.home,
        )
        assert done.returncode == 0, f"smartsync {args}: {done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("status"), config_text=CONFIG)
    try:
        d.add_user("ops", PASSWORD)
        d.add_user("alice", PASSWORD)
        for args in [("engagement", "create", ENG, "--title", TITLE),
                     ("grant", ENG, "--user", "alice", "--role", "editor")]:
            done = d.admin(*args)
            assert done.returncode == 0, done.stderr
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def alice(server: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Staff:
    """alice's copies: the first commits the file and checks it out; a second exists."""
    home = tmp_path_factory.mktemp("alice")
    staff = Staff(home)
    staff.run("login", server.url, "--user", "alice", "--password-stdin",
              "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n")
    copy = home / "copy"
    staff.run("clone", f"{server.url}/{ENG}", str(copy))
    (copy / FOLDER).mkdir()
    (copy / FOLDER / FILE).write_text("cash 100\n" * 100)
    staff.run("sync", str(copy))
    staff.run("checkout", f"{FOLDER}/{FILE}", cwd=copy)
    staff.run("clone", f"{server.url}/{ENG}", str(home / "second"))
    return staff


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def base(server: Daemon) -> str:
    return f"https://127.0.0.1:{admin_port(server)}/status"


def sign_in(driver: WebDriver, server: Daemon, user: str) -> None:
    driver.get(base(server))
    wait_until(lambda: driver.current_url.endswith("/status/signin"), "the sign-in page")
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def section(driver: WebDriver, heading: str) -> str:
    """The text of the table (or note) that follows the ``<h2>`` called ``heading``."""
    return driver.find_element(
        By.XPATH, f"//h2[text()='{heading}']/following-sibling::*[1]"
    ).text


def rows(driver: WebDriver, heading: str) -> list[list[str]]:
    """The cells of each row of the table under the ``<h2>`` called ``heading``."""
    table = driver.find_element(By.XPATH, f"//h2[text()='{heading}']/following-sibling::table[1]")
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in table.find_elements(By.TAG_NAME, "tr")[1:]]


def audit_events(server: Daemon) -> list[dict]:
    done = server.admin("audit", "export", ENG, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["records"]


def test_an_admin_sees_what_the_cli_did(server: Daemon, alice: Staff, browser: WebDriver) -> None:
    # a refusal to list: a sign-in with a wrong password on the public listener
    status, _ = server.request("POST", "/v1/login", json_body={"user": "alice", "password": "x"})
    assert status == 401
    sign_in(browser, server, "ops")
    wait_until(lambda: browser.find_elements(By.XPATH, "//h1[text()='smartsyncd status']"),
               "the overview")
    browser.save_screenshot(str(SHOTS / "overview.png"))
    engagements = section(browser, "Engagements")
    # the hostile title is text, not markup: no element made of it, no script run
    assert TITLE in engagements
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.title == "smartsyncd status - smartsyncd"
    assert "&lt;script&gt;" in browser.page_source
    [row] = rows(browser, "Engagements")
    assert row[0] == f"{ENG}\n{TITLE}"
    assert row[1] == "1"  # head 1: alice's one commit
    assert row[2].startswith("1 file(s), 900 B")
    assert row[4].startswith("open")
    [lock] = rows(browser, "Check-outs")
    assert (lock[:3], lock[4:]) == ([ENG, f"{FOLDER}/{FILE}", "alice"],
                                    ["until checked in", "Break..."])
    copies = rows(browser, "Sync copies")
    assert [(c[0], c[1], c[4], c[5]) for c in copies] == [(ENG, "alice", "0", "active")] * 2
    assert {"ops", "alice"} <= {r[0] for r in rows(browser, "Sessions")}
    assert "refusals and errors since the daemon started" in section(
        browser, "Recent refusals and errors")
    assert [r[1:] for r in rows(browser, "Recent refusals and errors")] == [
        ["401", "POST", "/v1/login", "127.0.0.1"]]
    assert [r[0] for r in rows(browser, "Storage folders")] == ["data", "chunks"]

    browser.find_element(By.LINK_TEXT, "Audit chains").click()
    wait_until(lambda: "Audit chains" in browser.title, "the audit page")
    assert "chains intact" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SHOTS / "audit.png"))


def test_breaking_a_check_out_asks_first_and_is_audited(
    server: Daemon, alice: Staff, browser: WebDriver
) -> None:
    sign_in(browser, server, "ops")
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Break..."), "a Break link")
    browser.find_element(By.LINK_TEXT, "Break...").click()
    wait_until(lambda: "Break a check-out" in browser.title, "the confirmation page")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert f"{FOLDER}/{FILE}" in text and "held by alice" in text
    browser.save_screenshot(str(SHOTS / "confirm-break.png"))
    # Cancel changes nothing
    browser.find_element(By.LINK_TEXT, "Cancel").click()
    wait_until(lambda: browser.title == "smartsyncd status - smartsyncd", "the overview")
    assert f"{FOLDER}/{FILE}" in section(browser, "Check-outs")

    browser.find_element(By.LINK_TEXT, "Break...").click()
    wait_until(lambda: "Break a check-out" in browser.title, "the confirmation page")
    browser.find_element(By.NAME, "reason").send_keys("alice is on leave <until> Monday")
    browser.find_element(By.XPATH, "//button[text()='Break the check-out']").click()
    wait_until(lambda: "Check-out broken" in browser.title, "the result page")
    assert "held by alice" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SHOTS / "broken.png"))

    listed = alice.run("locks", str(alice.home / "copy"))
    assert FILE not in listed
    [event] = [e for e in audit_events(server) if e["event"] == "lock_break"]
    assert event["actor"] == "status:ops"
    assert json.loads(event["detail"])["reason"] == "alice is on leave <until> Monday"
    assert event["path"] == f"{FOLDER}/{FILE}"


def test_a_non_admin_is_refused(server: Daemon, alice: Staff, browser: WebDriver) -> None:
    sign_in(browser, server, "alice")
    wait_until(lambda: "Refused" in browser.title, "the refusal")
    assert "alice is not a status-page admin" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SHOTS / "refused.png"))
    assert browser.get_cookie("smartsync_status") is None  # no session was kept
    browser.get(base(server))
    wait_until(lambda: browser.current_url.endswith("/status/signin"), "the sign-in page")
    assert "alice signed in from 127.0.0.1 but is not a status-page admin" in server.log_text()


def _post(server: Daemon, page: str, cookie: str | None, fields: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", admin_port(server), timeout=30,
                                       context=server.ssl_context())
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie is not None:
        headers["Cookie"] = f"smartsync_status={cookie}"
    try:
        conn.request("POST", f"/status/{page}", urllib.parse.urlencode(fields), headers)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_a_post_without_the_csrf_token_changes_nothing(
    server: Daemon, alice: Staff, browser: WebDriver
) -> None:
    alice.run("checkout", f"{FOLDER}/{FILE}", cwd=alice.home / "copy")
    sign_in(browser, server, "ops")
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Break..."), "a Break link")
    session = browser.get_cookie("smartsync_status")
    assert session is not None
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    form = {"engagement": ENG, "path": f"{FOLDER}/{FILE}", "confirm": "yes", "reason": "forged"}
    for csrf in ({}, {"csrf": "0" * 64}):
        status, body = _post(server, "break", session["value"], form | csrf)
        assert status == 403 and "CSRF token is missing or wrong" in body

    # a page of another origin posting the same form: the browser sends no cookie with it
    # (SameSite=Strict) and it has no token; the answer is a refusal
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in form.items())
    attack = (f'<form method="post" action="{base(server)}/break">{inputs}'
              '<button id="go">win a prize</button></form>')
    browser.get("data:text/html," + urllib.parse.quote(attack))
    browser.find_element(By.ID, "go").click()
    wait_until(lambda: "Refused" in browser.title, "the refusal of the forged form")
    assert "not signed in" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SHOTS / "forged-post.png"))
    assert FILE in alice.run("locks", str(alice.home / "copy"))  # still checked out
    assert not [e for e in audit_events(server) if e["detail"] and "forged" in e["detail"]]


def test_abandoning_a_copy_asks_first_and_is_audited(
    server: Daemon, alice: Staff, browser: WebDriver
) -> None:
    sign_in(browser, server, "ops")
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Abandon..."), "an Abandon link")
    browser.find_elements(By.LINK_TEXT, "Abandon...")[0].click()
    wait_until(lambda: "Abandon a sync copy" in browser.title, "the confirmation page")
    assert "can never commit again" in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SHOTS / "confirm-abandon.png"))
    browser.find_element(By.XPATH, "//button[text()='Abandon the copy']").click()
    wait_until(lambda: "Copy abandoned" in browser.title, "the result page")

    [event] = [e for e in audit_events(server) if e["event"] == "copy_abandon"]
    assert event["actor"] == "status:ops"
    browser.find_element(By.LINK_TEXT, "Back to the overview").click()
    wait_until(lambda: "abandoned" in section(browser, "Sync copies"), "the copy abandoned")
    assert "by status:ops" in section(browser, "Sync copies")
