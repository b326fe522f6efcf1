"""Many manifests in one request (issue 15, ``POST /v1/engagements/<eng>/manifests``) over the
real SyncAPI + SQLite store: answers whole and as deltas, missing and deferred lists, bad input
and caps as JSON 4xx, per-engagement authorization, each file served audited as a download;
and the client's pull and clone of many files in a handful of requests (``ServerAPI`` over
the same in-memory site), falling back to per-file manifests on a server without the route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from webkit import Env, in_memory, put, upload

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.core import manifest
from smartsyncd.core.model import FOLDER_CONTENT
from smartsyncd.web.manifestbatch import Wanted, manifests_answer
from smartsyncd.web.readaudit import FLUSH_SECONDS

ENG = "/v1/engagements/alpha"


async def commit_files(env: Env, token: str, files: dict[str, bytes], batch: str) -> dict[str, str]:
    """Commit ``files`` (one chunk each, over what the last commit_files left); returns
    path -> content id."""
    refs = await upload(env, token, *files.values())
    seqs: dict[str, int] = env.__dict__.setdefault("seqs", {})  # the last seq of each path
    changes = [put(path, [ref], seqs.get(path)) for path, ref in zip(files, refs, strict=True)]
    r = await env.call("POST", ENG + "/commit", token=token, body={"batch": batch, "changes": changes})
    assert r.status == 200, r.body
    for change, result in zip(changes, r.json()["results"], strict=True):
        assert result["status"] == "applied", result
        seqs[change["path"]] = result["seq"]
    return {c["path"]: c["content"] for c in changes}


@in_memory
async def test_many_manifests_in_one_answer_with_missing_listed(env: Env) -> None:
    alice = await env.login("alice")
    ids = await commit_files(env, alice, {f"wp/{i}.txt": f"paper {i}".encode() for i in range(5)}, "b1")
    rita = await env.login("rita")  # a reader may pull
    unknown = "ab" * 32
    asked = [*ids.values(), unknown, next(iter(ids.values()))]  # a repeat is answered once
    r = await env.call("POST", ENG + "/manifests", token=rita,
                       body={"files": [{"content": c} for c in asked]})
    assert r.status == 200, r.body
    got = r.json()
    assert [m["content"] for m in got["manifests"]] == list(ids.values())
    assert got["missing"] == [unknown] and got["deferred"] == []
    for m in got["manifests"]:
        refs = manifest.chunks_from_json(m["chunks"])
        assert manifest.content_id(refs) == m["content"] and m["size"] == sum(c.size for c in refs)
    # each manifest served is a download in the read audit, as on the per-file route
    env.clock.advance(FLUSH_SECONDS)
    events = [a for a in await env.store.audit_records(env.alpha) if a.chain == "read:alpha"]
    downloads = [a.detail for a in events if a.event == "download"]
    assert len(downloads) == 5 and all(d["address"] is not None for d in downloads)


@in_memory
async def test_a_snapshot_carries_chunk_lists_only_when_asked(env: Env) -> None:
    alice = await env.login("alice")
    ids = await commit_files(env, alice, {f"wp/{i}.txt": f"paper {i}".encode() for i in range(5)}, "b1")
    r = await env.call("POST", ENG + "/commit", token=alice, body={"batch": "b2", "changes": [
        {"path": "empty folder", "kind": "put", "base": None, "content": FOLDER_CONTENT,
         "size": 0}]})
    assert r.status == 200, r.body
    rita = await env.login("rita")
    plain = await env.call("GET", ENG + "/snapshot?folders=1", token=rita)
    assert plain.status == 200 and all("chunks" not in f for f in plain.json()["files"])
    env.clock.advance(FLUSH_SECONDS)
    before = await downloads(env)
    assert before == []  # a plain snapshot serves no chunk list
    r = await env.call("GET", ENG + "/snapshot?folders=1&chunks=1", token=rita)
    assert r.status == 200, r.body
    files = {f["path"]: f for f in r.json()["files"]}
    assert "chunks" not in files["empty folder"]  # a folder entry has no chunk list
    for path, content in ids.items():
        refs = manifest.chunks_from_json(files[path]["chunks"])
        assert manifest.content_id(refs) == content
        assert sum(c.size for c in refs) == files[path]["size"]
    # each list served is a download in the read audit, as from POST .../manifests
    env.clock.advance(FLUSH_SECONDS)
    assert await downloads(env) == sorted(ids.values())


async def downloads(env: Env) -> list[str]:
    """The contents of the download events in alpha's read audit, sorted."""
    events = await env.store.audit_records(env.alpha)
    return sorted(a.detail["content"] for a in events
                  if a.chain == "read:alpha" and a.event == "download")


@in_memory
async def test_a_manifest_comes_as_a_delta_against_the_base_named(env: Env) -> None:
    alice = await env.login("alice")
    pieces = [f"chunk {i} ".encode() * 50 for i in range(40)]
    refs = await upload(env, alice, *pieces, b"a changed last piece")
    old, new = refs[:40], [*refs[:39], refs[40]]
    r = await env.call("POST", ENG + "/commit", token=alice, body={"batch": "b1", "changes": [put("a", old)]})
    seq = r.json()["results"][0]["seq"]
    r = await env.call("POST", ENG + "/commit", token=alice, body={"batch": "b2", "changes": [put("a", new, seq)]})
    assert r.status == 200, r.body
    old_id, new_id = manifest.content_id(old), manifest.content_id(new)
    r = await env.call("POST", ENG + "/manifests", token=alice,
                       body={"files": [{"content": new_id, "base": old_id}]})
    assert r.status == 200, r.body
    (m,) = r.json()["manifests"]
    assert m["delta"]["base"] == old_id
    assert list(manifest.apply_delta(old, m["delta"]["ops"])) == new


@in_memory
async def test_bad_input_is_a_json_4xx_naming_the_field(env: Env) -> None:
    alice = await env.login("alice")
    cases: list[tuple[Any, int, str | None]] = [
        ({"files": "x"}, 400, "files"),
        ({}, 400, "files"),
        ({"files": [{"content": "nothex"}]}, 400, "files[0].content"),
        ({"files": [{"content": "ab" * 32, "base": 7}]}, 400, "files[0].base"),
        ({"files": ["ab" * 32]}, 400, "files[0]"),
        ({"files": [{"content": "ab" * 32}] * 1001}, 413, "files"),  # over manifests_per_request
    ]
    for body, status, named in cases:
        r = await env.call("POST", ENG + "/manifests", token=alice, body=body)
        assert r.status == status, (body, r.body)
        assert r.json()["error"] in ("bad_request", "too_large") and r.json().get("field") == named
    r = await env.call("POST", ENG + "/manifests", token=alice, data=b"{not json")
    assert r.status == 400 and "error" in r.json()


@in_memory
async def test_authorization_is_per_engagement(env: Env) -> None:
    alice = await env.login("alice")
    ids = await commit_files(env, alice, {"secret.txt": b"alpha only"}, "b1")
    eve = await env.login("eve")  # admin of beta, nothing in alpha
    body = {"files": [{"content": c} for c in ids.values()]}
    r = await env.call("POST", ENG + "/manifests", token=eve, body=body)
    assert r.status in (403, 404) and "manifests" not in r.json()
    # alpha's content asked in beta is not found there
    r = await env.call("POST", "/v1/engagements/beta/manifests", token=eve, body=body)
    assert r.status == 200 and r.json()["manifests"] == [] and r.json()["missing"] == list(ids.values())
    r = await env.call("POST", ENG + "/manifests", body=body)  # no session
    assert r.status == 401


@in_memory
async def test_an_answer_over_its_size_cap_defers_the_rest(env: Env) -> None:
    alice = await env.login("alice")
    ids = await commit_files(env, alice, {f"{i}.txt": f"small {i}".encode() for i in range(30)}, "b1")
    found = await env.store.get_manifests(env.alpha, list(ids.values()))
    assert set(found) == set(ids.values())
    wanted = [Wanted(c, None) for c in ids.values()]
    answer = manifests_answer(wanted, found, 1000)
    got = answer.body
    assert 0 < len(got["manifests"]) < 30 and len(answer.served) == len(got["manifests"])
    assert len(json.dumps(got["manifests"], separators=(",", ":"))) <= 1000
    assert [m["content"] for m in got["manifests"]] + got["deferred"] == list(ids.values())
    # one manifest over the cap still goes (the client could never get it otherwise)
    assert len(manifests_answer(wanted, found, 10).body["manifests"]) == 1


# -- the client -----------------------------------------------------------------------------


class CountingAPI(ServerAPI):
    """A ServerAPI that counts its requests by method and route."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        route = "/".join(path.split("/")[4:]) if path.startswith("/v1/engagements/") else path
        if method == "GET" and route.startswith("manifests/"):
            route = "manifests/<content>"
        self.calls.append(f"{method} {route}")
        return await super()._request(method, path, **kw)


def client(env: Env, token: str, kind: type[ServerAPI] = CountingAPI) -> Any:
    async def in_caller(fn: Any, *args: Any) -> Any:
        return fn(*args)

    return kind("https://sync.example", reactor=env.clock, policy=None,  # type: ignore[arg-type]
                token=token, http=env.stub.http, run_in_thread=in_caller)


def run_inline(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(fn, *args, **kwargs)


async def settled(env: Env, coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return await env.settle(Deferred.fromCoroutine(coro))


def papers(n: int, salt: str) -> dict[str, bytes]:
    return {f"papers/{i:04d}.txt": f"{salt} working paper {i}\n".encode() * 20 for i in range(n)}


@in_memory
async def test_clone_and_pull_of_200_files_take_a_handful_of_requests(env: Env, tmp_path: Path) -> None:
    alice = await env.login("alice")
    first = papers(200, "v1")
    await commit_files(env, alice, first, "b1")
    api = client(env, await env.login("rita"))
    copy = await settled(env, SyncCopy.clone(api, "alpha", tmp_path / "copy", run_blocking=run_inline))
    try:
        assert {p: (tmp_path / "copy" / p).read_bytes() for p in first} == first
        # the chunk lists came with the snapshot and the chunks beside it (issue 15): no
        # manifest request at all, and no fetch
        assert "POST manifests" not in api.calls and "POST chunks/fetch" not in api.calls
        assert api.calls.count("GET snapshot/chunks") == 1
        assert "GET manifests/<content>" not in api.calls
        # 200 remote edits: one pull, again one manifest request and one fetch
        second = papers(200, "v2")
        ids = await commit_files(env, alice, second, "b2")
        api.calls.clear()
        report = await settled(env, copy.sync(api))
        assert report.downloaded == 200
        assert {p: (tmp_path / "copy" / p).read_bytes() for p in second} == second
        assert api.calls.count("POST manifests") == 1 and api.calls.count("POST chunks/fetch") == 1
        assert sorted(r.content for r in copy.state.all_files().values()) == sorted(ids.values())
    finally:
        copy.close()


@in_memory
async def test_a_pull_never_overwrites_an_unpushed_edit_among_many(env: Env, tmp_path: Path) -> None:
    alice = await env.login("alice")
    await commit_files(env, alice, papers(20, "v1"), "b1")
    api = client(env, await env.login("alice"))
    copy = await settled(env, SyncCopy.clone(api, "alpha", tmp_path / "copy", run_blocking=run_inline))
    try:
        edited = tmp_path / "copy" / "papers/0007.txt"
        remote = papers(20, "v2")
        await commit_files(env, alice, remote, "b2")
        edited.write_bytes(b"my unpushed edit")
        report = await settled(env, copy.sync(api))
        kept = [p for p in report.conflicts] + [p for p in copy.conflicts()]
        # the local edit survives: as a conflict copy or pushed as its own version
        texts = {(tmp_path / "copy" / p).read_bytes() for p in kept} | {edited.read_bytes()}
        assert b"my unpushed edit" in texts
        for path, data in remote.items():
            if path != "papers/0007.txt":
                assert (tmp_path / "copy" / path).read_bytes() == data
    finally:
        copy.close()


class OldServerAPI(CountingAPI):
    """A client of a server from before the batched route: its POST .../manifests is a 404
    (the route answers as the server's routing miss does), as is GET .../snapshot/chunks."""

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        if (method == "POST" and path.endswith("/manifests")) or path.endswith("/snapshot/chunks"):
            kw = dict(kw, body=None)  # nor the first chunks' route (issue 15)
            return await super()._request(method, path + "-not-a-route", **kw)
        if path.endswith("/snapshot"):  # no chunk lists in its snapshot either
            kw = dict(kw, params={k: v for k, v in kw["params"].items() if k != "chunks"})
        return await super()._request(method, path, **kw)


@in_memory
async def test_an_older_server_is_asked_per_file(env: Env, tmp_path: Path) -> None:
    alice = await env.login("alice")
    files = papers(12, "v1")
    await commit_files(env, alice, files, "b1")
    api = client(env, await env.login("rita"), OldServerAPI)
    copy = await settled(env, SyncCopy.clone(api, "alpha", tmp_path / "copy", run_blocking=run_inline))
    try:
        assert {p: (tmp_path / "copy" / p).read_bytes() for p in files} == files
        assert api.calls.count("GET manifests/<content>") == 12
        assert api.calls.count("POST chunks/fetch") == 1  # chunks still batched
        assert api.manifests_per_file
    finally:
        copy.close()




class DeferringAPI(CountingAPI):
    """Passes on only the first manifest of each batched answer, the rest as ``deferred`` (as
    a server does whose answer reached its size cap)."""

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        data = await super()._json(method, path, **kw)
        if method == "POST" and path.endswith("/manifests"):
            first, *rest = data["manifests"]
            data = {"manifests": [first], "missing": data["missing"],
                    "deferred": [m["content"] for m in rest] + data["deferred"]}
        return data


@in_memory
async def test_the_client_asks_again_for_deferred_manifests(env: Env) -> None:
    alice = await env.login("alice")
    ids = await commit_files(env, alice, papers(4, "v1"), "b1")
    api = client(env, alice, DeferringAPI)
    got = await settled(env, api.manifests("alpha", [(c, None) for c in ids.values()]))
    assert sorted(got) == sorted(ids.values())
    assert all(got[c].content == c for c in ids.values())
    assert api.calls.count("POST manifests") == 4 and "GET manifests/<content>" not in api.calls


@in_memory
async def test_an_unknown_content_is_refused_as_the_per_file_route_refuses_it(env: Env) -> None:
    from smartsyncd.client.errors import ServerRefused

    alice = await env.login("alice")
    ids = await commit_files(env, alice, papers(2, "v1"), "b1")
    api = client(env, alice)
    unknown = "cd" * 32
    try:
        await settled(env, api.manifests("alpha", [*((c, None) for c in ids.values()), (unknown, None)]))
    except ServerRefused as e:
        assert e.status == 404 and e.code == "not_found"
    else:
        raise AssertionError("an unknown content must be refused, never read as an empty file")
