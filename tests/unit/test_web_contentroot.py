"""The signed content root over the real SyncAPI + SQLite store (issue 20): the root at the head
and at earlier change numbers equals ``core.contentroot`` over the files live then, the
signature checks with the served key, the listing pages add up to the root, bad input is a JSON
4xx, the routes are authorized per engagement, and both reads are audit events."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from test_manifest_batch import commit_files
from webkit import Env, in_memory

from smartsyncd.core.contentroot import (
    RootStatement,
    content_root,
    key_fingerprint,
    statement_bytes,
)
from smartsyncd.storage.rootkey import key_path
from smartsyncd.web.readaudit import FLUSH_SECONDS

ENG = "/v1/engagements/alpha"


async def _history(env: Env, token: str) -> list[dict[str, str]]:
    """Four changes; the live files after each (seq 1..4)."""
    a = await commit_files(env, token, {"a.txt": b"first a"}, "b1")
    b = await commit_files(env, token, {"Prüfung/b.txt": b"first b"}, "b2")
    seqs: dict[str, int] = env.__dict__["seqs"]
    r = await env.call("POST", ENG + "/commit", token=token, body={
        "batch": "b3", "changes": [{"path": "a.txt", "kind": "delete", "base": seqs["a.txt"]}]})
    assert r.status == 200, r.body
    b2 = await commit_files(env, token, {"Prüfung/b.txt": b"second b"}, "b4")
    return [a, a | b, b, b2]


def _check_signature(answer: dict[str, Any], public_hex: str) -> RootStatement:
    statement = RootStatement(**answer["statement"])
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
        bytes.fromhex(answer["signature"]), statement_bytes(statement)
    )  # raises InvalidSignature
    return statement


@in_memory
async def test_root_at_head_and_before_is_signed(env: Env, tmp_path: Path) -> None:
    alice = await env.login("alice")
    states = await _history(env, alice)
    key = (await env.call("GET", "/v1/root-key")).json()  # public: no sign-in
    assert key["algorithm"] == "ed25519"
    assert key["fingerprint"] == key_fingerprint(bytes.fromhex(key["public_key"]))
    # made on first use, beside the packs, readable by the daemon's account only
    assert os.stat(key_path(str(tmp_path / "chunks"))).st_mode & 0o777 == 0o600
    rita = await env.login("rita")  # a reader may verify
    head = await env.call("GET", ENG + "/root", token=rita)
    assert head.status == 200, head.body
    statement = _check_signature(head.json(), key["public_key"])
    assert (statement.seq, statement.files, statement.engagement) == (4, 1, "alpha")
    assert (statement.store, statement.generation) == await env.store.store_identity()
    assert statement.root == content_root(states[-1].items())
    for seq, files in enumerate(states, start=1):
        r = await env.call("GET", ENG + f"/root?seq={seq}", token=rita)
        got = _check_signature(r.json(), key["public_key"])
        assert (got.seq, got.files, got.root) == (seq, len(files), content_root(files.items()))
        assert r.json()["head"] == 4
    empty = _check_signature((await env.call("GET", ENG + "/root?seq=0", token=rita)).json(), key["public_key"])
    assert (empty.files, empty.root) == (0, content_root([]))
    # a statement edited after signing does not check
    forged = head.json() | {"statement": head.json()["statement"] | {"seq": 3}}
    try:
        _check_signature(forged, key["public_key"])
    except Exception as e:  # noqa: BLE001 - cryptography's InvalidSignature
        assert type(e).__name__ == "InvalidSignature"
    else:
        raise AssertionError("a forged statement was accepted")
    env.clock.advance(FLUSH_SECONDS)
    events = [a for a in await env.store.audit_records(env.alpha) if a.chain == "read:alpha"]
    verified = [(a.actor, a.detail["seq"]) for a in events if a.event == "verify"]
    assert verified[0] == ("rita", 4) and len(verified) == 6


@in_memory
async def test_listing_pages_add_up_to_the_root(env: Env) -> None:
    alice = await env.login("alice")
    files = await commit_files(env, alice, {f"wp/{i:02}.txt": f"paper {i}".encode() for i in range(7)}, "b1")
    await commit_files(env, alice, {"wp/03.txt": b"edited"}, "b2")
    root = (await env.call("GET", ENG + "/root?seq=7", token=alice)).json()["statement"]["root"]
    got: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        query = "?seq=7&limit=3" + (f"&after={after}" if after else "")
        r = await env.call("GET", ENG + "/root/files" + query, token=alice)
        assert r.status == 200, r.body
        page = r.json()
        got += [(p, c) for p, c in page["files"]]
        if not page["more"]:
            break
        after = got[-1][0]
    assert got == sorted(files.items()) and content_root(got) == root
    at_head = (await env.call("GET", ENG + "/root/files", token=alice)).json()
    assert at_head["seq"] == 8 and dict(at_head["files"])["wp/03.txt"] != files["wp/03.txt"]
    env.clock.advance(FLUSH_SECONDS)
    events = [a for a in await env.store.audit_records(env.alpha) if a.event == "verify-list"]
    assert [e.detail["files"] for e in events] == [3, 3, 1, 7]


@in_memory
async def test_bad_input_and_access_are_refused_as_json(env: Env) -> None:
    alice = await env.login("alice")
    await commit_files(env, alice, {"a.txt": b"a"}, "b1")
    for query, field in [("?seq=2", "seq"), ("?seq=-1", "seq"), ("?seq=x", "seq")]:
        r = await env.call("GET", ENG + "/root" + query, token=alice)
        assert r.status == 400 and r.json()["error"] == "bad_request", r.body
        assert r.json().get("field") == field
    for query in ["?limit=0", "?limit=10001", "?after=/etc", "?seq=9"]:
        r = await env.call("GET", ENG + "/root/files" + query, token=alice)
        assert 400 <= r.status < 500 and "error" in r.json(), (query, r.body)
    assert (await env.call("GET", ENG + "/root")).status == 401
    eve = await env.login("eve")  # no role on alpha: looks like an unknown engagement
    hidden = await env.call("GET", ENG + "/root", token=eve)
    assert hidden.status == 404 and hidden.json()["error"] == "not_found"
    assert (await env.call("GET", ENG + "/root/files", token=eve)).status == 404
