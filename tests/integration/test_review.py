"""The conflict review queue through the real daemon and the real CLIs (docs/workflow.md,
"Conflict review"): two copies make a conflict, the reviewer lists and resolves it each way,
both copies converge, history keeps the loser, a non-reviewer is refused, and a conflict copy
its owner edited meanwhile is kept.

One daemon serves the module; each test has its own engagement and users' settings folders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from test_cli_client import PASSWORD
from test_workflow import User, admin_ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("review"))
    try:
        for name in ("alice", "bob", "rita"):
            done = d.admin("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
            assert done.returncode == 0, done.stderr
        yield d
    finally:
        d.stop()


class Team:
    """alice and bob (editors) with a copy each, rita (the reviewer) with hers."""

    def __init__(self, server: Daemon, tmp_path: Path, eng: str) -> None:
        admin_ok(server, "engagement", "create", eng)
        for user, role in (("alice", "editor"), ("bob", "editor"), ("rita", "reviewer")):
            admin_ok(server, "grant", eng, "--user", user, "--role", role)
        self.alice, self.bob, self.rita = (User(server, tmp_path / n, n) for n in ("alice", "bob", "rita"))
        self.a = self.alice.clone(eng, tmp_path / "a")
        self.b = self.bob.clone(eng, tmp_path / "b")
        self.r = self.rita.clone(eng, tmp_path / "r")

    def conflict(self, name: str) -> tuple[str, dict]:
        """alice and bob both edit ``WP/name`` from one version: bob's edit is the loser.
        Returns the conflict copy's path and the item as bob lists it."""
        (self.a / "WP").mkdir(exist_ok=True)
        (self.a / "WP" / name).write_text("v1")
        self.alice.ok("sync", str(self.a))
        self.bob.ok("sync", str(self.b))
        (self.a / "WP" / name).write_text("alice's edit")
        self.alice.ok("sync", str(self.a))
        (self.b / "WP" / name).write_text("bob's edit")
        made = self.bob.run("--json", "sync", str(self.b))
        assert made.returncode == 1, made.stderr  # 1: a conflict copy is left to resolve
        copy = json.loads(made.stdout)["conflicts"][0]
        listed = self.bob.run("--json", "conflicts", str(self.b))
        assert listed.returncode == 1, listed.stderr
        [item] = [i for i in json.loads(listed.stdout)["items"]
                  if i["path"] == f"WP/{name}" and i["state"] == "open"]
        assert item["copy_path"] == copy
        return copy, item

    def sync_all(self) -> None:
        for user, folder in ((self.alice, self.a), (self.bob, self.b), (self.rita, self.r)):
            user.ok("sync", str(folder))


def refused(user: User, *args: str) -> str:
    """The code of the server's refusal of ``args`` (exit 5; the message names it)."""
    done = user.run("--json", *args)
    assert done.returncode == 5, (args, done.stdout, done.stderr)  # the server refused
    assert "Traceback" not in done.stderr
    answer = json.loads(done.stdout)
    assert answer["error"] == "ServerRefused"
    return answer["message"].partition("(")[2].partition(")")[0]


def files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in (folder / "WP").iterdir()}


def test_the_reviewer_resolves_each_way_and_the_copies_converge(
    server: Daemon, tmp_path: Path
) -> None:
    team = Team(server, tmp_path, "review-1")
    copy, item = team.conflict("cash.txt")
    assert (item["theirs"]["user"], item["ours"]["user"]) == ("alice", "bob")
    assert item["theirs"]["seq"] == 2 and item["ours"]["seq"] == item["id"] == 3
    # alice wrote the other side: she sees it as hers too; bob may not see all or resolve
    hers = team.alice.run("--json", "conflicts", str(team.a))
    assert hers.returncode == 1  # 1: open conflicts are left, though none in her folder
    assert [i["id"] for i in json.loads(hers.stdout)["items"]] == [3]
    assert refused(team.bob, "conflicts", "--all", str(team.b)) == "forbidden"
    assert refused(team.bob, "resolve", "--ours", "3", str(team.b)) == "forbidden"

    listed = team.rita.run("conflicts", "--all", str(team.r))
    assert listed.returncode == 1 and "#3 WP/cash.txt: alice (seq 2) vs bob" in listed.stdout
    done = team.rita.json("resolve", "--ours", "3", str(team.r))
    assert done["conflict"]["resolution"] == "ours" and done["conflict"]["resolved_by"] == "rita"
    team.sync_all()
    for folder in (team.a, team.b, team.r):
        assert files(folder) == {"WP/cash.txt": "bob's edit"}, folder
    # the loser stays in history: alice's edit is a version of the file, the copy a deleted path
    versions = team.alice.json("history", str(team.a / "WP" / "cash.txt"))["versions"]
    assert [v["user"] for v in versions] == ["alice", "alice", "rita"]
    gone = team.alice.json("history", str(team.a / copy))["versions"]
    assert [(v["kind"], v["user"]) for v in gone] == [("put", "bob"), ("delete", "rita")]
    assert refused(team.rita, "resolve", "--theirs", "3", str(team.r)) == "conflict_resolved"
    # bob's copy shows the resolution; nothing is open any more
    shown = team.bob.run("conflicts", str(team.b))
    assert shown.returncode == 0 and "resolved by rita: ours" in shown.stdout

    copy, item = team.conflict("ar.txt")
    team.rita.ok("resolve", "--theirs", str(item["id"]), str(team.r))
    team.sync_all()
    for folder in (team.a, team.b):
        assert files(folder) == {"WP/cash.txt": "bob's edit", "WP/ar.txt": "alice's edit"}

    copy, item = team.conflict("ap.txt")
    merge = tmp_path / "merged.txt"
    merge.write_text("alice's and bob's edits")
    team.rita.ok("resolve", "--merged", str(merge), str(item["id"]), str(team.r))
    team.sync_all()
    for folder in (team.a, team.b, team.r):
        assert files(folder)["WP/ap.txt"] == "alice's and bob's edits"
        assert copy not in files(folder)
    audit = admin_ok(server, "audit", "export", "review-1").stdout
    assert audit.count("conflict_resolve") == 3


def test_an_edited_conflict_copy_is_kept(server: Daemon, tmp_path: Path) -> None:
    team = Team(server, tmp_path, "review-2")
    copy, item = team.conflict("inv.txt")
    # bob works on in his conflict copy and syncs (1: the copy is still left to resolve)
    (team.b / copy).write_text("bob's edit, improved")
    assert team.bob.run("sync", str(team.b)).returncode == 1
    listed = team.rita.run("--json", "conflicts", "--all", str(team.r))
    assert listed.returncode == 1, listed.stderr
    [now] = json.loads(listed.stdout)["items"]
    assert now["copy_seq"] > item["copy_seq"]  # the item shows the copy's newest version
    # bob edits the copy again without syncing; rita keeps alice's version meanwhile
    (team.b / copy).write_text("bob's edit, improved twice")
    done = team.rita.json("resolve", "--theirs", str(item["id"]), str(team.r))
    assert done["conflict"]["resolution"] == "theirs"
    # the server's delete never removes an unsynced edit: bob's copy stays and is sent again
    assert team.bob.run("sync", str(team.b)).returncode == 1
    assert (team.b / copy).read_text() == "bob's edit, improved twice"
    assert team.alice.run("sync", str(team.a)).returncode == 1
    assert files(team.a) == {"WP/inv.txt": "alice's edit", copy: "bob's edit, improved twice"}
    # the item stays resolved; the copy is an ordinary file again, for bob to delete or keep
    mine = team.bob.run("--json", "conflicts", str(team.b))
    assert [i["state"] for i in json.loads(mine.stdout)["items"]] == ["resolved"]


def test_a_conflict_copy_the_client_made_is_an_item_too(server: Daemon, tmp_path: Path) -> None:
    """bob's edit waits behind alice's check-out; her newer version then reaches his copy,
    which keeps his edit as a conflict copy and pushes it once she checks in."""
    team = Team(server, tmp_path, "review-3")
    (team.a / "WP").mkdir()
    (team.a / "WP" / "fa.txt").write_text("v1")
    team.alice.ok("sync", str(team.a))
    team.bob.ok("sync", str(team.b))
    team.alice.ok("checkout", str(team.a / "WP" / "fa.txt"))
    (team.b / "WP" / "fa.txt").write_text("bob's edit")
    (team.a / "WP" / "fa.txt").write_text("alice's edit")
    team.alice.ok("sync", str(team.a))
    # bob's push is refused (locked); the pull brings alice's version over his unpushed edit
    waited = team.bob.run("--json", "sync", str(team.b))
    assert waited.returncode == 1, waited.stderr  # a conflict copy is left (over "partial")
    [copy] = [p for p in files(team.b) if p != "WP/fa.txt"]
    assert files(team.b) == {"WP/fa.txt": "alice's edit", copy: "bob's edit"}
    team.alice.ok("checkin", str(team.a / "WP" / "fa.txt"))
    assert team.bob.run("sync", str(team.b)).returncode == 1  # sends the copy: a new file
    versions = team.bob.json("history", str(team.b / copy))["versions"]
    assert [(v["user"], v["conflict_of"]) for v in versions] == [("bob", None)]  # client-made
    listed = team.rita.run("--json", "conflicts", "--all", str(team.r))
    [item] = json.loads(listed.stdout)["items"]
    assert (item["path"], item["copy_path"]) == ("WP/fa.txt", copy)
    assert (item["theirs"]["user"], item["ours"]["user"]) == ("alice", "bob")
    team.rita.ok("resolve", "--ours", str(item["id"]), str(team.r))
    team.sync_all()
    assert files(team.a) == files(team.b) == {"WP/fa.txt": "bob's edit"}
