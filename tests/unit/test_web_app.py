"""The HTTP adapter end to end: treq over the real Site of ``make_site`` in memory
(tests/unit/webkit.py), a real SQLite store on synchronous pools, real sessions with local
accounts, and a Clock for time, long-polls and session expiry; no reactor runs."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import zstandard
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from webkit import LIMITS, PASSWORD, Env, chunk_of, in_memory, observe, put, upload

from smartsyncd.core import chunking, chunkstream, manifest
from smartsyncd.web.app import make_site
from smartsyncd.web.limits import ClientLimits

# -- sign-in -----------------------------------------------------------------------------


@in_memory
async def test_login_good_bad_and_empty_password(env: Env) -> None:
    r = await env.call("POST", "/v1/login", body={"user": "alice", "password": PASSWORD})
    assert r.status == 200
    body = r.json()
    assert body["user"] == "alice" and body["expires_at"].endswith("Z") and len(body["token"]) >= 40
    s = await env.call("GET", "/v1/session", token=body["token"])
    assert s.status == 200 and s.json()["user"] == "alice"

    bad = await env.call("POST", "/v1/login", body={"user": "alice", "password": "wrong"})
    unknown = await env.call("POST", "/v1/login", body={"user": "nobody", "password": "wrong"})
    empty = await env.call("POST", "/v1/login", body={"user": "alice", "password": ""})
    for r in (bad, unknown, empty):
        assert r.status == 401
        assert r.json()["error"] == "auth_failed"
    # no user enumeration: the same answer for a known and an unknown user
    assert bad.body == unknown.body


@in_memory
@pytest.mark.parametrize(
    "body", [{"user": "alice"}, {"user": 1, "password": "x"}, ["alice", "pw"], "x"]
)
async def test_login_with_wrong_types_is_bad_request(env: Env, body: Any) -> None:
    r = await env.call("POST", "/v1/login", body=body)
    assert r.status == 400
    assert r.json()["error"] == "bad_request"


@in_memory
async def test_logout_ends_the_session(env: Env) -> None:
    token = await env.login("alice")
    r = await env.call("POST", "/v1/logout", token=token)
    assert r.status == 204
    r = await env.call("GET", "/v1/session", token=token)
    assert r.status == 401 and r.json()["error"] == "session_expired"


@in_memory
async def test_session_expires_with_the_clock(env: Env) -> None:
    token = await env.login("alice")
    env.clock.advance(31 * 86400)
    r = await env.call("GET", "/v1/engagements/alpha", token=token)
    assert r.status == 401 and r.json()["error"] == "session_expired"


AUTHED = [
    ("POST", "/v1/logout"),
    ("GET", "/v1/session"),
    ("GET", "/v1/engagements"),
    ("GET", "/v1/engagements/alpha"),
    ("GET", "/v1/engagements/alpha/snapshot"),
    ("GET", "/v1/engagements/alpha/changes?since=0"),
    ("GET", "/v1/engagements/alpha/manifests/" + "a" * 64),
    ("POST", "/v1/engagements/alpha/chunks/fetch"),
    ("POST", "/v1/engagements/alpha/chunks/missing"),
    ("POST", "/v1/engagements/alpha/chunks"),
    ("POST", "/v1/engagements/alpha/commit"),
]


@in_memory
@pytest.mark.parametrize(("method", "path"), AUTHED)
async def test_every_endpoint_needs_a_valid_token(env: Env, method: str, path: str) -> None:
    body = {"chunks": []} if method == "POST" else None
    for token in (None, "not-a-real-token", "x" * 600):
        r = await env.call(method, path, token=token, body=body)
        assert r.status == 401, (path, token, r.body)
        assert r.json()["error"] == "session_expired"


# -- visibility and roles ----------------------------------------------------------------


@in_memory
async def test_invisible_engagement_looks_exactly_like_an_unknown_one(env: Env) -> None:
    token = await env.login("alice")
    hidden = await env.call("GET", "/v1/engagements/beta/snapshot", token=token)
    unknown = await env.call("GET", "/v1/engagements/nosuch/snapshot", token=token)
    assert hidden.status == unknown.status == 404
    assert hidden.body == unknown.body
    assert hidden.json()["error"] == "not_found"
    listing = await env.call("GET", "/v1/engagements", token=token)
    assert listing.json() == {
        "engagements": [{"name": "alpha", "title": "Alpha Ltd 2026", "role": "editor", "head": 0}]
    }
    one = await env.call("GET", "/v1/engagements/alpha", token=token)
    assert one.json() == {"name": "alpha", "title": "Alpha Ltd 2026", "role": "editor", "head": 0}


@in_memory
async def test_reader_may_pull_but_not_push(env: Env) -> None:
    token = await env.login("rita")
    assert (await env.call("GET", "/v1/engagements/alpha/snapshot", token=token)).status == 200
    for path, body in [
        ("/v1/engagements/alpha/commit", {"batch": "b1", "changes": []}),
        ("/v1/engagements/alpha/chunks/missing", {"chunks": []}),
    ]:
        r = await env.call("POST", path, token=token, body=body)
        assert r.status == 403 and r.json()["error"] == "forbidden"
    _, rec = chunk_of(b"reader data" * 100)
    r = await env.call(
        "POST", "/v1/engagements/alpha/chunks", token=token, data=chunkstream.encode_records([rec])
    )
    assert r.status == 403
    assert await env.store.missing_chunks(env.alpha, [rec[0]]) == [rec[0]]


# -- chunks ------------------------------------------------------------------------------


@in_memory
async def test_upload_then_missing_reports_none_and_fetch_returns_them(env: Env) -> None:
    token = await env.login("alice")
    datas = [b"a" * 50_000, os.urandom(20_000)]
    hashes = [chunking.chunk_hash(d) for d in datas]
    r = await env.call("POST", "/v1/engagements/alpha/chunks/missing", token=token, body={"chunks": hashes})
    assert r.json() == {"missing": hashes}
    pairs = [chunk_of(d) for d in datas]
    body = chunkstream.encode_records(p[1] for p in pairs)
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token, data=body)
    assert r.status == 200 and r.json() == {"stored": 2, "present": 0}
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token, data=body)
    assert r.json() == {"stored": 0, "present": 2}
    r = await env.call("POST", "/v1/engagements/alpha/chunks/missing", token=token, body={"chunks": hashes})
    assert r.json() == {"missing": []}

    reader = await env.login("rita")
    r = await env.call(
        "POST", "/v1/engagements/alpha/chunks/fetch", token=reader, body={"chunks": hashes[::-1]}
    )
    assert r.status == 200
    assert r.headers.getRawHeaders("content-type") == ["application/x-smartsync-chunks"]
    raw = chunkstream.decode_to_raw(r.body)
    assert [raw[h] for h in hashes] == datas
    assert [rec[0] for rec in chunkstream.decode_records(r.body)] == hashes[::-1]

    r = await env.call(
        "POST", "/v1/engagements/alpha/chunks/fetch", token=reader, body={"chunks": [hashes[0], "b" * 64]}
    )
    assert r.status == 404 and r.json()["chunks"] == ["b" * 64]


@in_memory
async def test_wrong_hash_chunk_refuses_the_whole_upload(env: Env) -> None:
    token = await env.login("alice")
    _, good = chunk_of(b"good chunk" * 1000)
    _, bad = chunk_of(b"bad chunk" * 1000)
    forged = ("c" * 64, bad[1], bad[2], bad[3])
    r = await env.call(
        "POST", "/v1/engagements/alpha/chunks", token=token, data=chunkstream.encode_records([good, forged])
    )
    assert r.status == 400
    assert r.json()["error"] == "bad_chunk" and r.json()["chunk"] == "c" * 64
    assert await env.store.missing_chunks(env.alpha, [good[0]]) == [good[0]]


@in_memory
async def test_an_upload_is_refused_before_its_body_is_read(env: Env) -> None:
    # the Site's request factory streams uploads (web/upload.py): a refusal is answered from
    # the headers (written straight to the transport: no Date, no Server), nothing is stored
    _, record = chunk_of(b"never read" * 1000)
    alice = await env.login("alice")
    rita = await env.login("rita")
    for token, status in ((None, 401), ("not-a-token", 401), (rita, 403)):
        r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token,
                           data=chunkstream.encode_records([record]))
        assert r.status == status, r.body
        assert r.headers.getRawHeaders("date") is None and r.json()["error"]
    assert await env.store.missing_chunks(env.alpha, [record[0]]) == [record[0]]
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=alice, data=chunkstream.encode_records([record]))
    assert r.json() == {"stored": 1, "present": 0}
    assert "verify_records" in env.offloaded  # on the CPU pool, batch by batch


@in_memory
async def test_zstd_bomb_is_refused(env: Env) -> None:
    token = await env.login("alice")
    frame = zstandard.ZstdCompressor().compress(b"\0" * (100 * 1024 * 1024))
    record = (chunking.chunk_hash(b"\0" * 262144), 1, 262144, frame)
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token, data=chunkstream.encode_records([record]))
    assert r.status in (400, 413)
    assert r.json()["error"] in ("bad_chunk", "too_large")
    assert await env.store.missing_chunks(env.alpha, [record[0]]) == [record[0]]


@in_memory
async def test_bodies_over_the_endpoint_limit_are_413(env: Env) -> None:
    token = await env.login("alice")
    r = await env.call("POST", "/v1/engagements/alpha/chunks", token=token, data=b"\0" * (LIMITS.chunk_body + 1))
    assert r.status == 413 and r.json() == {
        "error": "too_large",
        "message": f"request body over the limit of {LIMITS.chunk_body} bytes",
        "limit": LIMITS.chunk_body,
    }
    r = await env.call("POST", "/v1/login", data=b" " * (LIMITS.small_json + 1))
    assert r.status == 413


@in_memory
async def test_fetch_over_the_response_cap_is_413(env: Env) -> None:
    token = await env.login("alice")
    refs = []
    for _ in range(3):  # incompressible 256 KiB chunks: 3 of them exceed the 600 KB cap
        refs += await upload(env, token, os.urandom(chunking.MAX_CHUNK))
    hashes = [c.hash for c in refs]
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=token, body={"chunks": hashes})
    assert r.status == 413 and r.json()["limit"] == LIMITS.chunk_body
    r = await env.call("POST", "/v1/engagements/alpha/chunks/fetch", token=token, body={"chunks": hashes[:2]})
    assert r.status == 200


# -- JSON input --------------------------------------------------------------------------


@in_memory
async def test_malformed_and_deep_json_is_400(env: Env) -> None:
    token = await env.login("alice")
    for data in (b"{not json", b"[" * 10_000 + b"]" * 10_000, b'{"batch": "x", "changes": ' + b"[" * 40 + b"]" * 40 + b"}"):
        r = await env.call("POST", "/v1/engagements/alpha/commit", token=token, data=data)
        assert r.status == 400 and r.json()["error"] == "bad_request", data[:40]
    r = await env.call("POST", "/v1/login", data=b"[" * 60_000)
    assert r.status == 400
    # sign-in bodies are capped at 64 KiB (a name and a password need a few KB at most)
    r = await env.call("POST", "/v1/login", data=b"[" * 100_000)
    assert r.status == 413 and r.json()["limit"] == 64 * 1024


@in_memory
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"path": 3, "kind": "put"}, "changes[0].path"),
        ({"path": "a.txt", "kind": "move", "base": None}, "changes[0].kind"),
        ({"path": "a.txt", "kind": "delete", "base": "4"}, "changes[0].base"),
        ({"path": "a.txt", "kind": "put", "base": None, "content": "zz", "size": 1}, "changes[0].content"),
        ({"path": "a.txt", "kind": "put", "base": None, "content": "a" * 64, "size": True}, "changes[0].size"),
        (
            {"path": "a.txt", "kind": "put", "base": None, "content": "a" * 64, "size": 1, "manifest": [["a" * 64]]},
            "changes[0].manifest",
        ),
    ],
)
async def test_commit_wrong_types_name_the_field(env: Env, change: dict, field: str) -> None:
    token = await env.login("alice")
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token, body={"batch": "b", "changes": [change]})
    assert r.status == 400, r.body
    assert r.json()["error"] == "bad_request"
    assert r.json()["field"] == field
    assert await env.store.head(env.alpha) == 0


@in_memory
async def test_commit_batch_key_is_checked(env: Env) -> None:
    token = await env.login("alice")
    for batch in ("", "x" * 129, 5, None):
        r = await env.call("POST", "/v1/engagements/alpha/commit", token=token, body={"batch": batch, "changes": []})
        assert r.status == 400 and r.json()["field"] == "batch"


@in_memory
async def test_invalid_path_is_named_and_nothing_applied(env: Env) -> None:
    token = await env.login("alice")
    refs = await upload(env, token, b"x" * 20_000)
    changes = [put("ok.txt", refs), put("bad/../x.txt", refs)]
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token, body={"batch": "b1", "changes": changes})
    assert r.status == 400
    assert r.json()["error"] == "invalid_path" and r.json()["path"] == "bad/../x.txt"
    assert await env.store.head(env.alpha) == 0


# -- commit, pull, long-poll -------------------------------------------------------------


@in_memory
async def test_commit_applied_then_conflict_and_pull(env: Env, caplog: Any) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        alice = await env.login("alice")
        v1 = await upload(env, alice, b"version one " * 3000)
        v2 = await upload(env, alice, b"version two " * 3000)
        r = await env.call(
            "POST",
            "/v1/engagements/alpha/commit",
            token=alice,
            body={"batch": "batch-1", "changes": [put("Working papers/B-1 Cash.xlsx", v1)]},
        )
        assert r.status == 200, r.body
        store, generation = await env.store.store_identity()
        assert r.json() == {
            "head": 1,
            "results": [{"path": "Working papers/B-1 Cash.xlsx", "status": "applied", "seq": 1}],
            "head_hash": (await env.store.changes_since(env.alpha, 0, 1))[1][0].record_hash,
            "store": store,
            "generation": generation,
        }
        # a second "new" file at the same path: the proposed content becomes a conflict copy
        r = await env.call(
            "POST",
            "/v1/engagements/alpha/commit",
            token=alice,
            body={"batch": "batch-2", "changes": [put("Working papers/B-1 Cash.xlsx", v2)]},
        )
        result = r.json()["results"][0]
        assert result["status"] == "conflict" and result["seq"] == 2
        assert result["conflict_path"].startswith("Working papers/B-1 Cash (conflict alice 2026-")
        # replaying a batch returns the first answer and writes nothing
        again = await env.call(
            "POST",
            "/v1/engagements/alpha/commit",
            token=alice,
            body={"batch": "batch-2", "changes": [put("Working papers/B-1 Cash.xlsx", v2)]},
        )
        assert again.json() == r.json()
        assert await env.store.head(env.alpha) == 2
    finally:
        globalLogPublisher.removeObserver(events.append)

    reader = await env.login("rita")
    snap = (await env.call("GET", "/v1/engagements/alpha/snapshot", token=reader)).json()
    assert snap["head"] == 2
    assert {f["path"] for f in snap["files"]} == {"Working papers/B-1 Cash.xlsx", result["conflict_path"]}
    changes = (await env.call("GET", "/v1/engagements/alpha/changes?since=0&limit=1", token=reader)).json()
    assert changes["head"] == 2 and changes["more"] is True
    [c] = changes["changes"]
    assert c["seq"] == 1 and c["kind"] == "put" and c["user"] == "alice" and c["time"].endswith("Z")
    assert c["content"] == manifest.content_id(v1) and c["conflict_of"] is None
    rest = (await env.call("GET", "/v1/engagements/alpha/changes?since=1", token=reader)).json()
    assert [c["seq"] for c in rest["changes"]] == [2] and rest["more"] is False
    assert rest["changes"][0]["conflict_of"] == "Working papers/B-1 Cash.xlsx"

    texts = [e.get("log_format", "") for e in events]
    assert any(t.startswith("commit {engagement} by {user}: seq {first}-{last}") for t in texts)
    commit_events = [e for e in events if e.get("log_format", "").startswith("commit {engagement}")]
    assert commit_events[0]["first"] == 1 and commit_events[0]["files"] == 1
    assert any(e.get("conflict_path") == result["conflict_path"] for e in events)
    dumped = repr(events)
    assert alice not in dumped and reader not in dumped and PASSWORD not in dumped


@in_memory
async def test_manifest_full_and_as_delta(env: Env) -> None:
    alice = await env.login("alice")
    datas = [bytes([i]) * 9000 + os.urandom(100) for i in range(20)]
    base = await upload(env, alice, *datas)
    new_chunk = await upload(env, alice, b"edited " * 2000)
    edited = base[:10] + new_chunk + base[11:]
    body = {"batch": "m1", "changes": [put("a.xlsx", base)]}
    assert (await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)).status == 200
    body = {"batch": "m2", "changes": [put("a.xlsx", edited, base=1)]}
    assert (await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)).status == 200

    base_id, new_id = manifest.content_id(base), manifest.content_id(edited)
    full = (await env.call("GET", f"/v1/engagements/alpha/manifests/{new_id}", token=alice)).json()
    assert full["chunks"] == manifest.chunks_to_json(edited) and full["size"] == sum(c.size for c in edited)
    d = (await env.call("GET", f"/v1/engagements/alpha/manifests/{new_id}?base={base_id}", token=alice)).json()
    assert "chunks" not in d and d["delta"]["base"] == base_id
    assert manifest.apply_delta(base, d["delta"]["ops"]) == tuple(edited)
    unknown_base = (await env.call("GET", f"/v1/engagements/alpha/manifests/{new_id}?base={'d' * 64}", token=alice)).json()
    assert unknown_base["chunks"] == full["chunks"]
    r = await env.call("GET", f"/v1/engagements/alpha/manifests/{'e' * 64}", token=alice)
    assert r.status == 404
    r = await env.call("GET", "/v1/engagements/alpha/manifests/NOTAHASH", token=alice)
    assert r.status == 400


@in_memory
async def test_commit_with_a_delta_manifest(env: Env) -> None:
    alice = await env.login("alice")
    base = await upload(env, alice, b"one" * 5000, b"two" * 5000)
    extra = await upload(env, alice, b"three" * 5000)
    body = {"batch": "d1", "changes": [put("x.docx", base)]}
    assert (await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)).status == 200
    new = base + extra
    change = put("x.docx", new, base=1)
    del change["manifest"]
    change["delta"] = {"base": manifest.content_id(base), "ops": manifest.make_delta(base, new)}
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body={"batch": "d2", "changes": [change]})
    assert r.status == 200, r.body
    assert r.json()["results"][0] == {"path": "x.docx", "status": "applied", "seq": 2}


@in_memory
async def test_long_poll_is_woken_by_a_commit(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    refs = await upload(env, alice, b"payload " * 4000)
    poll = env.start("GET", "/v1/engagements/alpha/changes?since=0&wait=30", token=reader)
    answered = observe(poll)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 1)
    assert answered == []
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body={"batch": "lp", "changes": [put("n.txt", refs)]})
    assert r.status == 200
    got = (await env.reply(poll)).json()
    assert got["head"] == 1 and [c["path"] for c in got["changes"]] == ["n.txt"]
    assert env.notifier.waiting(env.alpha) == 0


@in_memory
async def test_waiters_woken_by_one_commit_share_one_answer_without_a_query(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    refs = await upload(env, alice, b"shared " * 4000)
    polls = [env.start("GET", "/v1/engagements/alpha/changes?since=0&wait=30", token=reader) for _ in range(20)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 20)
    queries: list[tuple[int, int, int]] = []
    real = env.store.changes_since

    async def counted(eid: int, since: int, limit: int, check: Any = None) -> Any:
        queries.append((eid, since, limit))
        return await real(eid, since, limit, check)

    env.store.changes_since = counted  # the real store, counted
    shortcuts = env.api.longpolls.shortcuts
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body={"batch": "sh", "changes": [put("s.txt", refs)]})
    assert r.status == 200
    for poll in polls:
        got = (await env.reply(poll)).json()
        assert got["head"] == 1 and [c["path"] for c in got["changes"]] == ["s.txt"]
    # one group, answered from the commit's own records (web/longpoll.py): no query
    assert queries == [] and env.api.longpolls.shortcuts == shortcuts + 1
    # the next wake-up is a group of its own (only the parking handler queried)
    poll = env.start("GET", "/v1/engagements/alpha/changes?since=1&wait=30", token=reader)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 1)
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body={"batch": "sh2", "changes": [put("t.txt", refs)]})
    assert [c["path"] for c in (await env.reply(poll)).json()["changes"]] == ["t.txt"]
    assert queries == [(env.alpha, 1, 5000)] and env.api.longpolls.shortcuts == shortcuts + 2


@in_memory
async def test_long_poll_times_out_with_the_clock(env: Env) -> None:
    reader = await env.login("rita")
    poll = env.start("GET", "/v1/engagements/alpha/changes?since=0&wait=10", token=reader)
    answered = observe(poll)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 1)
    env.clock.advance(9)
    env.stub.flush()
    assert answered == []
    assert env.notifier.waiting(env.alpha) == 1
    env.clock.advance(1)
    got = await env.reply(poll)
    store, generation = await env.store.store_identity()
    assert got.status == 200 and got.json() == {
        "head": 0, "changes": [], "more": False, "store": store, "generation": generation,
    }


@in_memory
async def test_long_poll_wait_is_capped_at_max_wait(env: Env) -> None:
    reader = await env.login("rita")
    poll = env.start("GET", "/v1/engagements/alpha/changes?since=0&wait=3600", token=reader)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 1)
    env.clock.advance(LIMITS.max_wait)
    assert (await env.reply(poll)).status == 200


@in_memory
async def test_client_disconnect_unregisters_the_waiter(env: Env) -> None:
    reader = await env.login("rita")
    poll = env.start("GET", "/v1/engagements/alpha/changes?since=0&wait=30", token=reader)
    poll.addErrback(lambda f: None)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 1)
    poll.cancel()
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 0)
    # its timer went with it (only the session manager's own calls may remain)
    assert not [c for c in env.clock.getDelayedCalls() if c.func == env.notifier._expire]


@in_memory
@pytest.mark.parametrize(
    "query", ["since=-1", "since=x", "limit=0", "wait=-1", "wait=abc", "since=1e3"]
)
async def test_changes_query_arguments_are_checked(env: Env, query: str) -> None:
    reader = await env.login("rita")
    r = await env.call("GET", f"/v1/engagements/alpha/changes?{query}", token=reader)
    assert r.status == 400 and r.json()["error"] == "bad_request"


# -- routing, errors, server information -------------------------------------------------


@in_memory
async def test_routing_misses_are_json(env: Env) -> None:
    r = await env.call("GET", "/v1/nothing-here")
    assert r.status == 404 and r.json()["error"] == "not_found"
    r = await env.call("DELETE", "/v1/login")
    assert r.status == 405 and r.json()["error"] == "method_not_allowed"
    assert "POST" in r.headers.getRawHeaders("allow")[0]
    for path in ("/v2/info", "/v0/engagements", "/v17"):
        r = await env.call("GET", path)
        assert r.status == 400 and r.json()["error"] == "unsupported_protocol"
        assert r.json()["supported"] == [1]


@in_memory
async def test_info_and_healthz_need_no_token(env: Env) -> None:
    info = await env.call("GET", "/v1/info")
    assert info.json() == {
        "server": "smartsyncd",
        "version": "0.1.0",
        "protocol": [1],
        "chunking": {"algorithm": "fastcdc", "min": 8192, "avg": 32768, "max": 262144},
        "limits": {"json_body": LIMITS.json_body, "chunk_body": LIMITS.chunk_body, "chunks_per_request": 4096,
                   "manifests_per_request": 1000},
        "encodings": ["zstd"],
    }
    health = await env.call("GET", "/healthz")
    assert health.status == 200 and health.json() == {"status": "ok", "database": "ok", "storage": "ok"}


@in_memory
async def test_healthz_is_503_when_a_part_fails(env: Env, monkeypatch: Any) -> None:
    async def sick() -> dict[str, str]:
        return {"database": "error", "storage": "ok"}

    monkeypatch.setattr(env.store, "check_health", sick)
    r = await env.call("GET", "/healthz")
    assert r.status == 503 and r.json() == {"status": "error", "database": "error", "storage": "ok"}


@pytest.mark.allow_logged_errors
@in_memory
async def test_a_bug_is_500_json_without_a_traceback(env: Env, monkeypatch: Any) -> None:
    async def broken(engagement_id: int) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(env.store, "snapshot", broken)
    token = await env.login("alice")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = await env.call("GET", "/v1/engagements/alpha/snapshot", token=token)
    finally:
        globalLogPublisher.removeObserver(events.append)
    # the server log has the traceback; the client gets none of it
    [logged] = [e for e in events if "log_failure" in e]
    assert logged["log_failure"].check(RuntimeError)
    assert token not in repr(events)
    assert r.status == 500
    assert r.json() == {"error": "internal_error", "message": "internal server error"}
    assert b"secret" not in r.body and b"Traceback" not in r.body


@in_memory
async def test_make_site_caps_bodies_times_out_idle_connections_and_hides_versions(env: Env) -> None:
    site = make_site(env.api, timeout=77)
    assert site.timeOut == 77
    proto = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    proto.makeConnection(transport)
    proto.dataReceived(b"GET /v1/info HTTP/1.1\r\nHost: a\r\n\r\n")
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    # no Server header at all (issue 15: bytes on every answer), no version anywhere; a whole
    # JSON answer is framed by its length, not chunked
    assert b"\r\nserver:" not in head.lower() and b"Twisted" not in head
    assert b"\r\ncontent-length: %d" % len(body) in head.lower()
    assert b"transfer-encoding" not in head.lower()
    transport.clear()
    proto.dataReceived(
        b"POST /v1/engagements/alpha/commit HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))

    idle = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40001))
    idle_transport = StringTransport()
    idle.makeConnection(idle_transport)
    env.clock.advance(78)
    assert idle_transport.disconnecting


def connect(site: Any, port: int, host: str = "10.0.0.9") -> tuple[Any, StringTransport]:
    proto = site.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    transport.protocol = proto  # type: ignore[attr-defined]
    return proto, transport


def status_of(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


@in_memory
async def test_body_limits_are_decided_by_route_when_the_headers_arrive(env: Env) -> None:
    site = make_site(env.api)
    # sign-in: 64 KiB, refused before any of the body (it used to buffer up to 64 MiB)
    _, t = connect(site, 1)
    t.protocol.dataReceived(b"POST /v1/login HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n")
    assert status_of(t).startswith(b"HTTP/1.1 413 ") and t.disconnecting
    assert json.loads(t.value().split(b"\r\n\r\n", 1)[1])["limit"] == 65536
    # every other small JSON route: the small limit
    _, t = connect(site, 2)
    t.protocol.dataReceived(
        b"POST /v1/engagements/alpha/chunks/missing HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: %d\r\n\r\n" % (LIMITS.small_json + 1)
    )
    assert status_of(t).startswith(b"HTTP/1.1 413 ") and t.disconnecting
    # a large commit is read only once its session token checked out: paused until then
    head = b"POST /v1/engagements/alpha/commit HTTP/1.1\r\nHost: a\r\nContent-Length: 1500000\r\n"
    for auth in (b"", b"Authorization: Bearer not-a-token\r\n"):
        _, t = connect(site, 3)
        t.protocol.dataReceived(head + auth + b"\r\n")
        assert t.producerState == "paused"
        await env.wait_for(lambda t=t: t.value() != b"")
        assert status_of(t).startswith(b"HTTP/1.1 401 ") and t.disconnecting
    token = await env.login("alice")
    _, t = connect(site, 4)
    t.protocol.dataReceived(head + b"Authorization: Bearer %s\r\n\r\n" % token.encode())
    await env.wait_for(lambda: t.producerState == "producing")
    body = b'{"batch": "big", "changes": []}'
    t.protocol.dataReceived(body + b" " * (1500000 - len(body)))
    await env.wait_for(lambda: t.value() != b"")
    assert status_of(t).startswith(b"HTTP/1.1 200 "), t.value()[:300]


def test_connections_per_address_are_capped(env: Env) -> None:
    site = make_site(env.api, clients=ClientLimits(connections_per_address=2))
    first, t1 = connect(site, 1)
    connect(site, 2)
    _, t3 = connect(site, 3)
    assert t3.disconnected  # aborted at once
    _, other = connect(site, 4, host="10.0.0.10")
    assert not other.disconnecting and not other.disconnected
    first.connectionLost(Failure(ConnectionDone()))
    _, t5 = connect(site, 5)
    assert not t5.disconnecting and not t5.disconnected


def test_unauthenticated_bytes_per_address_are_capped(env: Env) -> None:
    site = make_site(env.api, clients=ClientLimits(unauthenticated_bytes_per_address=150_000))
    head = b"POST /v1/engagements/alpha/chunks/missing HTTP/1.1\r\nHost: a\r\nContent-Length: 90000\r\n\r\n"
    first, t1 = connect(site, 1)
    t1.protocol.dataReceived(head + b" " * 80_000)
    _, t2 = connect(site, 2)
    t2.protocol.dataReceived(head + b" " * 80_000)
    assert status_of(t2).startswith(b"HTTP/1.1 429 ") and t2.disconnecting
    assert json.loads(t2.value().split(b"\r\n\r\n", 1)[1])["error"] == "rate_limited"
    assert t1.value() == b""  # the first is still being read
    assert site.client_addresses.held("10.0.0.9")[1] == 80_000
    first.connectionLost(Failure(ConnectionDone()))
    assert site.client_addresses.held("10.0.0.9") == (1, 0)  # t2 not closed in a StringTransport


def test_an_unauthenticated_request_has_a_total_deadline_that_bytes_do_not_restart(env: Env) -> None:
    site = make_site(env.api, timeout=3, clients=ClientLimits(request_deadline=5))
    _, t = connect(site, 1)
    t.protocol.dataReceived(b"POST /v1/login HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    for _ in range(4):
        env.clock.advance(1)
        t.protocol.dataReceived(b" ")  # each byte restarts the 3 s idle timeout
        assert not t.disconnecting
    env.clock.advance(1)
    assert status_of(t).startswith(b"HTTP/1.1 408 ") and t.disconnecting
    # a kept-alive connection between requests waits for the idle timeout only
    _, t = connect(site, 2)
    t.protocol.dataReceived(b"GET /v1/info HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(t).startswith(b"HTTP/1.1 200 ")
    env.clock.advance(2.9)
    assert not t.disconnecting
    # the next request gets its own deadline from its first byte
    t.protocol.dataReceived(b"POST /v1/login HTTP/1.1\r\n")
    for _ in range(5):
        env.clock.advance(1)
        t.protocol.dataReceived(b"X")
    assert t.disconnecting and b"408 Request Timeout" in t.value()


@in_memory
async def test_repeated_failed_sign_ins_are_rate_limited(env: Env) -> None:
    for _ in range(5):
        r = await env.call("POST", "/v1/login", body={"user": "alice", "password": "guess"})
        assert r.status == 401
    r = await env.call("POST", "/v1/login", body={"user": "alice", "password": PASSWORD})
    assert r.status == 429 and r.json()["error"] == "rate_limited"
    assert int(r.headers.getRawHeaders("retry-after")[0]) == r.json()["retry_after"] > 0


@in_memory
async def test_stale_delete_and_unchanged_results(env: Env) -> None:
    alice = await env.login("alice")
    refs = await upload(env, alice, b"kept " * 5000)
    body = {"batch": "s1", "changes": [put("keep.txt", refs)]}
    assert (await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)).status == 200
    body = {"batch": "s2", "changes": [put("keep.txt", refs, base=1)]}
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)
    store, generation = await env.store.store_identity()
    assert r.json() == {  # nothing written: no head_hash
        "head": 1,
        "results": [{"path": "keep.txt", "status": "unchanged", "seq": None, "current_seq": 1}],
        "store": store,
        "generation": generation,
    }
    body = {"batch": "s3", "changes": [{"path": "keep.txt", "kind": "delete", "base": 7}]}
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)
    assert r.json()["results"] == [{"path": "keep.txt", "status": "stale", "seq": None, "current_seq": 1}]
    snap = (await env.call("GET", "/v1/engagements/alpha/snapshot", token=alice)).json()
    assert [f["path"] for f in snap["files"]] == ["keep.txt"]


@in_memory
async def test_a_client_ahead_of_the_server_is_answered_at_once(env: Env) -> None:
    # a copy past the head synced with a log the store no longer holds (restored): it is told
    # so at once (409 history_diverged), never parked waiting for numbers it has already seen
    reader = await env.login("rita")
    r = await env.call("GET", "/v1/engagements/alpha/changes?since=40&wait=30", token=reader)
    store, generation = await env.store.store_identity()
    assert r.status == 409 and r.json() == {
        "error": "history_diverged", "reason": "head", "head": 0, "store": store, "generation": generation,
        "message": "the copy has synced to seq 40 but the log ends at 0 (restored?)",
    }
    assert env.notifier.waiting(env.alpha) == 0


@in_memory
async def test_trailing_slash_and_wrong_method_on_engagement_routes(env: Env) -> None:
    token = await env.login("alice")
    r = await env.call("GET", "/v1/engagements/", token=token)
    assert r.status == 404 and r.json()["error"] == "not_found"
    r = await env.call("GET", "/v1/engagements/alpha/commit", token=token)
    assert r.status == 405 and r.json()["error"] == "method_not_allowed"


@in_memory
async def test_a_large_commit_is_parsed_off_the_reactor_and_applied(env: Env) -> None:
    alice = await env.login("alice")
    refs = await upload(env, alice, b"shared " * 3000)
    changes = [put(f"folder {i // 100}/copy {i}.txt", refs) for i in range(1500)]
    body = {"batch": "big", "changes": changes}
    assert len(json.dumps(body)) > LIMITS.small_json
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body=body)
    assert r.status == 200, r.body
    assert r.json()["head"] == 1500
    assert {x["status"] for x in r.json()["results"]} == {"applied"}
    assert "parse_encoded_commit" in env.offloaded


@in_memory
async def test_too_many_changes_in_one_commit_is_413(env: Env) -> None:
    alice = await env.login("alice")
    changes = [{"path": f"f{i}", "kind": "delete", "base": 1} for i in range(10_001)]
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=alice, body={"batch": "many", "changes": changes})
    assert r.status == 413 and r.json()["limit"] == 10_000
    assert await env.store.head(env.alpha) == 0


@in_memory
async def test_bad_path_segments_are_400_naming_the_segment_before_sign_in(env: Env) -> None:
    # web/segments.py: a segment that can never be valid is refused before any session check
    cases = [
        ("GET", "/v1/engagements/-dash/snapshot", "engagement"),
        ("GET", "/v1/engagements/" + "e" * 101, "engagement"),
        ("POST", "/v1/engagements/a%20b/commit", "engagement"),
        ("POST", "/v1/engagements/.hidden/chunks", "engagement"),  # the streamed upload too
        ("GET", "/v1/engagements/alpha/manifests/NOTAHASH", "content"),
        ("POST", "/v1/engagements/alpha/copies/bad%21copy/report", "copy"),
    ]
    alice = await env.login("alice")
    for method, path, segment in cases:
        for token in (None, alice):
            r = await env.call(method, path, token=token, body={} if method == "POST" else None)
            assert r.status == 400, (path, r.body)
            assert r.json()["error"] == "bad_request" and r.json()["field"] == segment, r.body
    # a valid name the user may not see is still the authorization's 404
    r = await env.call("GET", "/v1/engagements/beta/snapshot", token=alice)
    assert r.status == 404


def test_metric_route_labels_name_each_route_template_once(env: Env) -> None:
    """The request counter's route label (web/metrics.py) for every kind of path, on the real
    application's route map: engagement names and hashes never become labels, and a path a
    converter refuses is 'other', not an exception that would lose the count."""
    from smartsyncd.web.metrics import OTHER_ROUTE, RouteOf

    route_of = RouteOf(env.api.app.url_map)
    h = "ab" * 32
    assert route_of(b"POST", b"/v1/engagements/alpha/commit") == "/v1/engagements/<eng>/commit"
    assert route_of(b"POST", b"/v1/engagements/beta-2/commit") == "/v1/engagements/<eng>/commit"
    assert route_of(b"GET", b"/v1/engagements/alpha/manifests/" + h.encode()) == (
        "/v1/engagements/<eng>/manifests/<content>")
    assert route_of(b"GET", b"/v1/engagements/alpha") == "/v1/engagements/<eng>"
    assert route_of(b"POST", b"/v1/login") == "/v1/login"
    assert route_of(b"GET", b"/v1/engagements/alpha/manifests/NOTAHASH") == OTHER_ROUTE
    assert route_of(b"GET", b"/nowhere") == OTHER_ROUTE
