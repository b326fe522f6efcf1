"""The engagement ``admin`` role through the real daemon and the real CLIs (issue 17).

An engagement admin breaks a check-out, lists and abandons copies, finalizes and reopens, lists,
gives and takes away roles with ``smartsync`` from their own machine; each action lands in the
engagement's audit chain with the admin as actor (read back with the real ``smartsync-admin
audit export``). An editor and a reader are refused every one of them (exit 5; the JSON 403
names the role needed) and nothing changes. No admin can remove the engagement's last admin.

One daemon serves the module; each test has its own engagement.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from test_cli_client import PASSWORD, Client

pytestmark = pytest.mark.integration

USERS = ("carol", "dave", "erin", "frank")  # admin, editor, reader, someone to grant to


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("engadmin"))
    try:
        for name in USERS:
            d.add_user(name, PASSWORD)
        yield d
    finally:
        d.stop()


class Person:
    """One user with their own CLI settings, signed in to the daemon."""

    def __init__(self, server: Daemon, home: Path, name: str) -> None:
        self.client = Client(home)
        self.name = name
        home.mkdir(parents=True, exist_ok=True)
        done = self.client.run("login", server.url, "--user", name, "--password-stdin",
                               "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.client.run(*args)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str) -> dict:
        done = self.run("--json", *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)


@pytest.fixture
def people(server: Daemon, tmp_path: Path) -> dict[str, Person]:
    """Fresh sign-ins per test (abandoning a copy ends its owner's session)."""
    return {name: Person(server, tmp_path / "home" / name, name) for name in USERS}


def admin_ok(server: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    done = server.admin(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def engagement(server: Daemon, name: str) -> str:
    """carol admin, dave editor, erin reader (granted with the real smartsync-admin)."""
    admin_ok(server, "engagement", "create", name)
    for user, role in (("carol", "admin"), ("dave", "editor"), ("erin", "reader")):
        admin_ok(server, "grant", name, "--user", user, "--role", role)
    return name


def events(server: Daemon, eng: str) -> list[tuple[str, str, dict]]:
    """(event, actor, detail) of the engagement's audit chain, by the real admin CLI."""
    out = admin_ok(server, "audit", "export", eng, "--format", "json").stdout
    return [(r["event"], r["actor"], json.loads(r["detail"]))
            for r in json.loads(out)["records"] if r["chain"] == f"eng:{eng}"]


def grants(server: Daemon, eng: str) -> list[str]:
    return sorted(line for line in admin_ok(server, "grants", eng).stdout.splitlines())


def test_an_engagement_admin_does_each_action_and_each_is_audited(
    server: Daemon, people: dict[str, Person], tmp_path: Path
) -> None:
    carol, dave = people["carol"], people["dave"]
    eng = engagement(server, "admin-1")
    url = f"{server.url}/{eng}"
    d = tmp_path / "dave"
    dave.json("clone", url, str(d))
    (d / "WP").mkdir()
    (d / "WP" / "cash.txt").write_text("dave v1")
    dave.json("sync", str(d))
    dave.json("checkout", str(d / "WP"))
    c = tmp_path / "carol"
    carol.json("clone", url, str(c))

    # break dave's check-out: by a path in carol's own copy
    broken = carol.json("locks", "break", str(c / "WP"), "--reason", "dave is on leave")
    assert broken["lock"]["path"] == "WP" and broken["lock"]["holder"] == "dave"
    assert carol.json("locks", str(c))["locks"] == []

    # copies: carol sees both; abandons dave's (named by URL/ENGAGEMENT: no copy needed)
    dave_copy = json.loads((d / ".smartsync" / "copy.json").read_text())["copy_id"]
    listed = carol.json("copies", "list", url)["copies"]
    assert {(x["copy"], x["user"]) for x in listed} >= {(dave_copy, "dave")}
    assert len(listed) == 2
    text = carol.run("copies", "list", str(c)).stdout
    assert text.splitlines()[0].startswith("copy\tuser\thost") and dave_copy in text
    gone = carol.json("copies", "abandon", dave_copy, url)["copy"]
    assert gone["abandoned_by"] == "carol"
    refused = dave.run("sync", str(d))
    assert refused.returncode == 3, refused.stderr  # the copy's session was ended at once

    # roles: give frank editor, raise him to admin, take it away
    given = carol.json("grant", "--user", "frank", "--role", "editor", url)["grant"]
    assert given == {"kind": "user", "principal": "local:frank", "name": "frank", "role": "editor"}
    carol.json("grant", "--user", "local:frank", "--role", "admin", str(c))
    assert "admin-1\tuser\tfrank\tadmin" in grants(server, eng)
    listed_grants = carol.json("grants", url)["grants"]
    assert {(g["name"], g["role"]) for g in listed_grants} == {
        ("carol", "admin"), ("dave", "editor"), ("erin", "reader"), ("frank", "admin")}
    revoked = carol.json("revoke", "--user", "frank", url)["revoked"]
    assert [(g["principal"], g["role"]) for g in revoked] == [("local:frank", "admin")]
    assert not any("frank" in line for line in grants(server, eng))
    missing = carol.run("revoke", "--user", "frank", url)
    assert missing.returncode == 5 and "has no grant" in missing.stderr

    # sign-off: finalize (carol's copy is clean; dave's is abandoned), then reopen
    final = carol.json("finalize", "--reason", "report signed", str(c))
    assert final["finalized"]["by"] == "carol" and final["finalized"]["reason"] == "report signed"
    assert "finalized" in admin_ok(server, "engagement", "status", eng).stdout
    (c / "late.txt").write_text("after sign-off")
    frozen = carol.run("sync", str(c))
    assert frozen.returncode == 6 and "report signed" in frozen.stderr + frozen.stdout
    carol.json("reopen", "--reason", "late adjustment", url)
    assert "open" in admin_ok(server, "engagement", "status", eng).stdout
    assert carol.json("sync", str(c))["uploaded"] == 1

    trail = [(e, actor) for e, actor, _ in events(server, eng)]
    for event in ("lock_break", "copy_abandon", "grant", "revoke", "finalize", "reopen"):
        assert (event, "carol") in trail, (event, trail)
    assert trail.count(("grant", "carol")) == 2
    by_tool = [e for e, actor in trail if e == "grant" and actor == "smartsync-admin"]
    assert len(by_tool) == 3  # the set-up grants keep naming the tool
    assert "all chains intact" in admin_ok(server, "audit", "verify", eng).stdout


ADMIN_ACTIONS: list[tuple[str, ...]] = [
    ("locks", "break", "{url}/WP", "--reason", "nope"),
    ("copies", "list", "{url}"),
    ("copies", "abandon", "{copy}", "{url}"),
    ("finalize", "--reason", "nope", "{url}"),
    ("reopen", "--reason", "nope", "{url}"),
    ("grants", "{url}"),
    ("grant", "--user", "frank", "--role", "reader", "{url}"),
    ("revoke", "--user", "carol", "{url}"),
]


def test_an_editor_and_a_reader_are_refused_each_action_and_nothing_changes(
    server: Daemon, people: dict[str, Person], tmp_path: Path
) -> None:
    dave = people["dave"]
    eng = engagement(server, "admin-2")
    url = f"{server.url}/{eng}"
    d = tmp_path / "dave"
    dave.json("clone", url, str(d))
    (d / "WP").mkdir()
    (d / "WP" / "a.txt").write_text("a")
    dave.json("sync", str(d))
    dave.json("checkout", str(d / "WP"))
    copy_id = json.loads((d / ".smartsync" / "copy.json").read_text())["copy_id"]
    before_grants, before_events = grants(server, eng), events(server, eng)

    for who, role in (("dave", "editor"), ("erin", "reader")):
        for action in ADMIN_ACTIONS:
            args = [a.format(url=url, copy=copy_id) for a in action]
            done = people[who].run("--json", *args)
            assert done.returncode == 5, (who, args, done.stdout, done.stderr)
            assert f"needs the role 'admin' in engagement '{eng}'; you have '{role}'" in done.stderr
            assert json.loads(done.stdout)["exit_code"] == 5

    # the raw answer: a JSON 403 naming the role needed, for every route
    token = server.login("dave", PASSWORD)
    base = f"/v1/engagements/{eng}"
    for method, path, body in [
        ("POST", "/locks/break", {"path": "WP", "reason": "x"}), ("GET", "/copies", None),
        ("POST", f"/copies/{copy_id}/abandon", {}), ("POST", "/finalize", {"reason": "x"}),
        ("POST", "/reopen", {"reason": "x"}), ("GET", "/grants", None),
        ("POST", "/grants", {"user": "dave", "role": "admin"}),
        ("POST", "/grants/revoke", {"user": "carol"}),
    ]:
        status, answer = server.request(method, base + path, json_body=body, token=token)
        assert status == 403, (path, status, answer)
        assert answer["error"] == "forbidden" and answer["required"] == "admin"
        assert answer["role"] == "editor"

    assert grants(server, eng) == before_grants
    assert events(server, eng) == before_events
    assert "WP\tdave" in admin_ok(server, "lock", "list", eng).stdout
    assert "active" in admin_ok(server, "copies", "list", eng).stdout
    assert "open" in admin_ok(server, "engagement", "status", eng).stdout


def test_no_admin_removes_the_last_admin_and_roles_are_checked(
    server: Daemon, people: dict[str, Person]
) -> None:
    carol = people["carol"]
    eng = engagement(server, "admin-3")
    url = f"{server.url}/{eng}"

    for args in (("revoke", "--user", "carol", url),
                 ("grant", "--user", "carol", "--role", "editor", url)):
        done = carol.run("--json", *args)
        assert done.returncode == 5 and "without an admin" in done.stderr, done.stderr
    assert f"{eng}\tuser\tcarol\tadmin" in grants(server, eng)
    status, answer = server.request(
        "POST", f"/v1/engagements/{eng}/grants/revoke", json_body={"user": "carol"},
        token=server.login("carol", PASSWORD),
    )
    assert status == 409 and answer["error"] == "last_admin"
    bad = server.request("POST", f"/v1/engagements/{eng}/grants",
                         json_body={"user": "frank", "role": "owner"},
                         token=server.login("carol", PASSWORD))
    assert bad[0] == 400 and bad[1]["field"] == "role"

    # with a second admin, carol may step down; then the engagement is not hers to see
    carol.json("grant", "--user", "frank", "--role", "admin", url)
    carol.json("grant", "--user", "carol", "--role", "reader", url)
    refused = carol.run("grants", url)
    assert refused.returncode == 5 and "you have 'reader'" in refused.stderr
    people["frank"].json("revoke", "--user", "carol", url)
    gone = carol.run("grants", url)
    assert gone.returncode == 5 and "no such engagement" in gone.stderr
    trail = [(e, actor, detail.get("role")) for e, actor, detail in events(server, eng)]
    assert ("grant", "carol", "reader") in trail and ("revoke", "frank", None) in trail
