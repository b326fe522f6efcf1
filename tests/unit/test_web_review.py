"""The review queue's routes (web/review.py) on the real Site and a real SQLite store: who sees
which items, a resolution by each choice, and every refusal as JSON with nothing changed."""

from __future__ import annotations

from typing import Any

from conftest import _password_hash
from webkit import Env, in_memory, put, upload

from smartsyncd.core import manifest
from smartsyncd.storage.api import Grant

ENG = "/v1/engagements/alpha"


async def conflicted(env: Env) -> tuple[dict[str, str], list[Any], list[Any]]:
    """alice writes and edits cash.xlsx; bob's edit of the first version conflicts. rita (a
    reader in the fixture) becomes the engagement's reviewer."""
    await env.store.add_user("bob", _password_hash())  # PASSWORD, hashed once per run
    await env.store.grant(Grant("alpha", "user", "local:bob", "bob", "editor"))
    await env.store.grant(Grant("alpha", "user", "local:rita", "rita", "reviewer"))
    tokens = {u: await env.login(u) for u in ("alice", "bob", "rita")}
    first = await upload(env, tokens["alice"], b"first version")
    theirs = await upload(env, tokens["alice"], b"alice's edit")
    ours = await upload(env, tokens["bob"], b"bob's edit")
    for user, batch, change in (
        ("alice", "a1", put("cash.xlsx", first)),
        ("alice", "a2", put("cash.xlsx", theirs, base=1)),
        ("bob", "b1", put("cash.xlsx", ours, base=1)),
    ):
        r = await env.call("POST", ENG + "/commit", token=tokens[user],
                           body={"batch": batch, "changes": [change]})
        assert r.status == 200, r.body
    assert r.json()["results"][0]["status"] == "conflict"
    return tokens, theirs, ours


@in_memory
async def test_members_see_their_own_items_and_the_reviewer_sees_all(env: Env) -> None:
    tokens, theirs, ours = await conflicted(env)
    eve = await env.login("eve")  # not a member of alpha
    mine = await env.call("GET", ENG + "/conflicts", token=tokens["bob"])
    assert mine.status == 200
    [item] = mine.json()["conflicts"]
    assert item["id"] == 3 and item["path"] == "cash.xlsx" and item["state"] == "open"
    assert item["copy_path"].startswith("cash (conflict bob ")
    assert item["theirs"] == {"seq": 2, "user": "alice", "content": manifest.content_id(theirs),
                              "size": len(b"alice's edit")}
    assert item["ours"]["user"] == "bob" and item["ours"]["content"] == manifest.content_id(ours)
    assert (item["path_seq"], item["copy_seq"], item["copy_live"]) == (2, 3, True)
    assert (await env.call("GET", ENG + "/conflicts", token=tokens["rita"])).json() == {"conflicts": []}
    everyone = await env.call("GET", ENG + "/conflicts?all=1", token=tokens["rita"])
    assert [i["id"] for i in everyone.json()["conflicts"]] == [3]
    refused = await env.call("GET", ENG + "/conflicts?all=1", token=tokens["bob"])
    assert refused.status == 403 and refused.json()["error"] == "forbidden"
    assert (await env.call("GET", ENG + "/conflicts?all=maybe", token=tokens["rita"])).status == 400
    assert (await env.call("GET", ENG + "/conflicts", token=eve)).status == 404


@in_memory
async def test_the_reviewer_resolves_and_a_second_resolution_is_refused(env: Env) -> None:
    tokens, _, ours = await conflicted(env)
    body = {"choice": "ours", "batch": "r1", "path_seq": 2, "copy_seq": 3}
    r = await env.call("POST", ENG + "/conflicts/3/resolve", token=tokens["rita"], body=body)
    assert r.status == 200, r.body
    answer = r.json()
    assert answer["head"] == 5 and [x["status"] for x in answer["results"]] == ["applied", "applied"]
    assert answer["conflict"]["state"] == "resolved" and answer["conflict"]["resolved_by"] == "rita"
    snapshot = (await env.call("GET", ENG + "/snapshot", token=tokens["bob"])).json()
    live = {f["path"]: f["content"] for f in snapshot["files"] if f["content"]}
    assert live == {"cash.xlsx": manifest.content_id(ours)}
    # retried: the same answer; another choice: 409 conflict_resolved, nothing changed
    again = await env.call("POST", ENG + "/conflicts/3/resolve", token=tokens["rita"], body=body)
    assert again.status == 200 and again.json()["head"] == 5
    other = dict(body, choice="theirs", batch="r2")
    done = await env.call("POST", ENG + "/conflicts/3/resolve", token=tokens["rita"], body=other)
    assert done.status == 409 and done.json()["error"] == "conflict_resolved"
    assert done.json()["resolution"] == "ours"
    assert (await env.call("GET", ENG + "/snapshot", token=tokens["bob"])).json()["head"] == 5


@in_memory
async def test_refusals_are_json_and_change_nothing(env: Env) -> None:
    tokens, _, _ = await conflicted(env)
    url = ENG + "/conflicts/3/resolve"
    ok = {"choice": "theirs", "batch": "r1", "path_seq": 2, "copy_seq": 3}
    cases = [
        ("bob", url, ok, 403, "forbidden"),  # an editor may not resolve, not even their own
        ("rita", url, dict(ok, path_seq=1), 409, "conflict_stale"),
        ("rita", url, dict(ok, choice="mine"), 400, "bad_request"),
        ("rita", url, {"choice": "theirs", "batch": "r1", "copy_seq": 3}, 400, "bad_request"),
        ("rita", url, dict(ok, choice="merged"), 400, "bad_request"),
        ("rita", url, dict(ok, choice="merged", manifest=[["zz", 1]]), 400, "bad_request"),
        ("rita", ENG + "/conflicts/99/resolve", ok, 404, "not_found"),
        ("rita", ENG + "/conflicts/x1/resolve", ok, 400, "bad_request"),
        ("rita", ENG + "/conflicts/-3/resolve", ok, 400, "bad_request"),
    ]
    for user, where, body, status, code in cases:
        r = await env.call("POST", where, token=tokens[user], body=body)
        assert (r.status, r.json()["error"]) == (status, code), (where, body, r.body)
    stale = await env.call("POST", url, token=tokens["rita"], body=dict(ok, path_seq=1))
    assert stale.json()["path_seq"] == 2 and stale.json()["copy_seq"] == 3
    assert (await env.call("GET", ENG + "/snapshot", token=tokens["bob"])).json()["head"] == 3
    assert (await env.call("GET", ENG + "/conflicts", token=tokens["bob"])).json()["conflicts"][0]["state"] == "open"


@in_memory
async def test_a_merge_is_uploaded_then_committed_by_the_resolution(env: Env) -> None:
    tokens, _, _ = await conflicted(env)
    merged = await upload(env, tokens["rita"], b"alice's and bob's edits")
    body = {"choice": "merged", "batch": "r1", "path_seq": 2, "copy_seq": 3,
            "manifest": manifest.chunks_to_json(merged)}
    r = await env.call("POST", ENG + "/conflicts/3/resolve", token=tokens["rita"], body=body)
    assert r.status == 200, r.body
    snapshot = (await env.call("GET", ENG + "/snapshot", token=tokens["alice"])).json()
    live = {f["path"]: f["content"] for f in snapshot["files"] if f["content"]}
    assert live == {"cash.xlsx": manifest.content_id(merged)}
    assert r.json()["conflict"]["resolution"] == "merged"
