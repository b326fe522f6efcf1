"""Compact wire forms (docs/protocol.md "Compressed JSON bodies", compact puts, index answers):
zstd request bodies with a capped decompression, zstd answers when asked for, a put whose
content id and size the server derives from its manifest, and the index form of the missing
answer. Malformed forms are clear 4xx JSON refusals that change nothing."""

from __future__ import annotations

import json
import os
from typing import Any

import zstandard
from webkit import Env, Reply, in_memory, upload

from smartsyncd.core import bodycodec, chunking, manifest


async def send(
    env: Env, path: str, token: str, data: bytes, encoding: str | None = "zstd",
    accept: str | None = None,
) -> Reply:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    if accept:
        headers["Accept-Encoding"] = accept
    d = env.stub.request("POST", "https://sync.example" + path, headers=headers, data=data)
    return await env.reply(d)


def compact_put(path: str, chunks: list[Any]) -> dict[str, Any]:
    return {"path": path, "kind": "put", "base": None, "manifest": manifest.chunks_to_json(chunks)}


async def head_of(env: Env, token: str) -> int:
    r = await env.call("GET", "/v1/engagements/alpha/changes?since=0", token=token)
    return int(r.json()["head"])


@in_memory
async def test_compressed_commit_of_compact_puts_is_applied_with_derived_content(env: Env) -> None:
    token = await env.login("alice")
    datas = [os.urandom(3000 + i) for i in range(40)]
    chunks = await upload(env, token, *datas)
    changes = [compact_put(f"docs/f{i:02d}.bin", [c]) for i, c in enumerate(chunks)]
    body = json.dumps({"batch": "b-compact", "changes": changes}).encode()
    r = await send(env, "/v1/engagements/alpha/commit", token, bodycodec.compress(body), accept="zstd")
    assert r.status == 200, r.body
    assert r.headers.getRawHeaders("content-encoding") == ["zstd"]
    answer = json.loads(bodycodec.decode(r.body, "zstd", 1 << 20))
    assert [x["status"] for x in answer["results"]] == ["applied"] * 40
    snap = await env.call("GET", "/v1/engagements/alpha/snapshot", token=token)
    files = {f["path"]: f for f in snap.json()["files"]}
    for i, c in enumerate(chunks):
        f = files[f"docs/f{i:02d}.bin"]
        assert f["content"] == manifest.content_id([c]) and f["size"] == len(datas[i])


@in_memory
async def test_answers_are_plain_unless_zstd_is_accepted(env: Env) -> None:
    token = await env.login("alice")
    hashes = [chunking.chunk_hash(os.urandom(10)) for _ in range(50)]
    body = json.dumps({"chunks": hashes}).encode()
    r = await send(env, "/v1/engagements/alpha/chunks/missing", token, body, encoding=None)
    # (treq's stub shows an absent Content-Encoding as an empty one)
    assert r.headers.getRawHeaders("content-encoding") in (None, [""])
    assert r.json() == {"missing": hashes}
    r = await send(env, "/v1/engagements/alpha/chunks/missing", token, body, encoding=None,
                   accept="gzip, zstd;q=0")
    assert r.headers.getRawHeaders("content-encoding") in (None, [""])
    r = await send(env, "/v1/engagements/alpha/chunks/missing", token, bodycodec.compress(body),
                   accept="zstd")
    assert r.headers.getRawHeaders("content-encoding") == ["zstd"]
    assert json.loads(bodycodec.decode(r.body, "zstd", 1 << 20)) == {"missing": hashes}


@in_memory
async def test_missing_answer_by_index(env: Env) -> None:
    token = await env.login("alice")
    have = await upload(env, token, os.urandom(5000), os.urandom(6000))
    other = [chunking.chunk_hash(os.urandom(10)) for _ in range(3)]
    asked = [other[0], have[0].hash, other[1], have[1].hash, other[2]]
    r = await env.call("POST", "/v1/engagements/alpha/chunks/missing", token=token,
                       body={"chunks": asked, "answer": "index"})
    assert r.status == 200 and r.json() == {"missing_index": [0, 2, 4], "zstd": True}


@in_memory
async def test_bad_compressed_bodies_are_refused_and_change_nothing(env: Env) -> None:
    token = await env.login("alice")
    [c] = await upload(env, token, os.urandom(4000))
    good = json.dumps({"batch": "b-bad", "changes": [compact_put("x.bin", [c])]}).encode()
    before = await head_of(env, token)
    commit = "/v1/engagements/alpha/commit"
    # a bomb: 50 MB of zeros (over the 2 MB json_body limit of these tests) in a small frame
    bomb = zstandard.ZstdCompressor().compress(b"0" * 50_000_000)
    r = await send(env, commit, token, bomb)
    assert r.status == 413 and r.json()["error"] == "too_large"
    # the same without a size in the frame header
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    r = await send(env, commit, token, cobj.compress(b"0" * 50_000_000) + cobj.flush())
    assert r.status == 413 and r.json()["error"] == "too_large"
    frame = bodycodec.compress(good)
    for data, encoding in [
        (frame[:-4], "zstd"),  # cut short
        (frame + b"junk", "zstd"),  # trailing data
        (b"not zstd at all", "zstd"),
        (frame, "br"),  # unknown encoding
        (good, "zstd"),  # says zstd, is not
    ]:
        r = await send(env, commit, token, data, encoding=encoding)
        assert r.status == 400 and r.json()["error"] == "bad_request", (encoding, r.body)
    # a compact put must carry a full manifest; content without size is still refused
    for change in [
        {"path": "y.bin", "kind": "put", "base": None},
        {"path": "y.bin", "kind": "put", "base": None, "content": c.hash,
         "manifest": manifest.chunks_to_json([c])},
        {"path": "y.bin", "kind": "put", "base": None, "manifest": [[c.hash, "big"]]},
    ]:
        body = json.dumps({"batch": "b-bad2", "changes": [change]}).encode()
        r = await send(env, commit, token, bodycodec.compress(body))
        assert r.status == 400 and r.json()["error"] == "bad_request", (change, r.body)
    r = await send(env, "/v1/engagements/alpha/chunks/missing", token, b"\x28\xb5\x2f\xfd junk")
    assert r.status == 400 and r.json()["error"] == "bad_request"
    assert await head_of(env, token) == before
    r = await send(env, commit, token, frame)
    assert r.status == 200 and r.json()["results"][0]["status"] == "applied"
