"""Folder entries on the wire (issue 16, docs/protocol.md "Folder entries") through the real
Site, SyncAPI and SQLite store: committed without a manifest, listed for clients that send
``folders=1``, hidden from older clients (none in a snapshot or export, a delete in the feed,
parked long-polls included), and refused with a JSON 400 when malformed."""

from __future__ import annotations

from typing import Any

from webkit import Env, in_memory

from smartsyncd.core.model import FOLDER_CONTENT

ENG = "/v1/engagements/alpha"


def folder(path: str, base: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"path": path, "kind": "put", "base": base, "content": FOLDER_CONTENT, "size": 0, **extra}


async def commit(env: Env, token: str, batch: str, changes: list[dict[str, Any]]) -> Any:
    return await env.call("POST", ENG + "/commit", token=token, body={"batch": batch, "changes": changes})


@in_memory
async def test_entries_commit_without_manifest_and_reach_only_clients_that_ask(env: Env) -> None:
    alice = await env.login("alice")
    r = await commit(env, alice, "b1", [folder("Tax"), folder("Audit/Planning")])
    assert r.status == 200, r.body
    assert [x["status"] for x in r.json()["results"]] == ["applied", "applied"]

    new = await env.call("GET", ENG + "/changes?since=0&folders=1", token=alice)
    assert [(c["path"], c["kind"], c["content"]) for c in new.json()["changes"]] == [
        ("Tax", "put", FOLDER_CONTENT), ("Audit/Planning", "put", FOLDER_CONTENT),
    ]
    old = await env.call("GET", ENG + "/changes?since=0", token=alice)
    # the same records (seq, hash), shown as deletes: an old client deletes nothing it synced
    assert [(c["seq"], c["kind"], c["content"], c["size"]) for c in old.json()["changes"]] == [
        (1, "delete", None, 0), (2, "delete", None, 0),
    ]
    assert [c["hash"] for c in old.json()["changes"]] == [c["hash"] for c in new.json()["changes"]]

    snap_new = await env.call("GET", ENG + "/snapshot?folders=1", token=alice)
    assert {f["path"] for f in snap_new.json()["files"]} == {"Tax", "Audit/Planning"}
    snap_old = await env.call("GET", ENG + "/snapshot", token=alice)
    assert snap_old.json()["files"] == [] and snap_old.json()["head"] == 2

    at = "2100-01-01T00:00:00Z"
    exp_new = await env.call("GET", ENG + f"/export?at={at}&folders=1", token=alice)
    assert {(f["path"], f["available"]) for f in exp_new.json()["files"]} == {
        ("Tax", True), ("Audit/Planning", True),
    }
    exp_old = await env.call("GET", ENG + f"/export?at={at}", token=alice)
    assert exp_old.json()["files"] == []

    history = await env.call("GET", ENG + "/history?path=Tax", token=alice)
    assert [v["available"] for v in history.json()["versions"]] == [True]


@in_memory
async def test_malformed_entries_are_a_json_400_and_change_nothing(env: Env) -> None:
    alice = await env.login("alice")
    for bad in (
        folder("Tax", size=3),
        folder("Tax", manifest=[]),
    ):
        bad_size = {**bad, "size": bad.get("size", 0)}
        r = await commit(env, alice, "bad", [bad_size])
        assert r.status == 400 and r.json()["error"] == "bad_request", r.body
    r = await env.call("GET", ENG + "/changes?since=0&folders=2", token=alice)
    assert r.status == 400 and r.json()["field"] == "folders"
    head = await env.call("GET", ENG, token=alice)
    assert head.json()["head"] == 0


@in_memory
async def test_a_parked_old_client_and_a_new_one_get_each_their_form(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    old = env.start("GET", ENG + "/changes?since=0&wait=30", token=reader)
    new = env.start("GET", ENG + "/changes?since=0&wait=30&folders=1", token=reader)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 2)
    r = await commit(env, alice, "b1", [folder("Tax")])
    assert r.status == 200, r.body
    got_old, got_new = await env.reply(old), await env.reply(new)
    assert [c["kind"] for c in got_old.json()["changes"]] == ["delete"]
    assert [c["kind"] for c in got_new.json()["changes"]] == ["put"]
