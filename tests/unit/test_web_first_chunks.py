"""``GET .../snapshot/chunks`` (issue 15; web/firstchunks.py, core/firstchunks.py) over the
real SyncAPI + SQLite store: the first small files' chunks by path in one zstd stream, within
the asked budget and file count, each file served audited as a download; nothing (204) for an
engagement with published ignore rules or a client without zstd; bad arguments a 400 naming
the field with nothing read; another engagement's member refused."""

from __future__ import annotations

import zstandard
from test_manifest_batch import commit_files, downloads
from webkit import Env, in_memory

from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import decode_to_raw
from smartsyncd.core.firstchunks import first_chunks, first_files
from smartsyncd.core.model import FOLDER_CONTENT, ChunkRef, FileState, Manifest
from smartsyncd.web.readaudit import FLUSH_SECONDS

ENG = "/v1/engagements/alpha"
ZSTD = {"Accept-Encoding": "zstd"}
PAPERS = {f"wp/{i}.txt": f"working paper {i}\n".encode() * (i + 1) for i in range(4)}


def streamed(body: bytes) -> dict[str, bytes]:
    return decode_to_raw(zstandard.ZstdDecompressor().decompress(body))


@in_memory
async def test_the_first_small_files_come_by_path_in_one_stream_audited(env: Env) -> None:
    alice = await env.login("alice")
    files = {**PAPERS, "big.bin": b"x" * 5000}
    ids = await commit_files(env, alice, files, "b1")
    r = await env.call("GET", ENG + "/snapshot/chunks?small=4096&budget=65536&files=1000",
                       token=alice, headers=ZSTD)
    assert r.status == 200, r.body
    assert r.headers.getRawHeaders(b"content-encoding") == [b"zstd"]
    got = streamed(r.body)
    assert got == {chunk_hash(data): data for path, data in PAPERS.items()}  # not big.bin
    env.clock.advance(FLUSH_SECONDS)
    assert await downloads(env) == sorted(ids[p] for p in PAPERS)


@in_memory
async def test_the_budget_and_the_file_count_cut_the_list_whole_files_first(env: Env) -> None:
    alice = await env.login("alice")
    await commit_files(env, alice, PAPERS, "b1")
    sizes = [len(PAPERS[p]) for p in sorted(PAPERS)]
    budget = sizes[0] + sizes[1]  # the third file would pass it: the list ends before it
    r = await env.call("GET", ENG + f"/snapshot/chunks?budget={budget}", token=alice, headers=ZSTD)
    assert set(streamed(r.body)) == {chunk_hash(PAPERS[p]) for p in sorted(PAPERS)[:2]}
    r = await env.call("GET", ENG + "/snapshot/chunks?files=1", token=alice, headers=ZSTD)
    assert set(streamed(r.body)) == {chunk_hash(PAPERS["wp/0.txt"])}


@in_memory
async def test_nothing_is_picked_under_ignore_rules_or_without_zstd(env: Env) -> None:
    alice = await env.login("alice")
    await commit_files(env, alice, PAPERS, "b1")
    plain = await env.call("GET", ENG + "/snapshot/chunks", token=alice)
    assert (plain.status, plain.body) == (204, b"")
    await env.store.set_ignore_rules("alpha", "*.bak\n")
    ruled = await env.call("GET", ENG + "/snapshot/chunks", token=alice, headers=ZSTD)
    assert (ruled.status, ruled.body) == (204, b"")
    env.clock.advance(FLUSH_SECONDS)
    assert await downloads(env) == []


@in_memory
async def test_bad_arguments_are_a_400_naming_them_and_strangers_are_refused(env: Env) -> None:
    alice = await env.login("alice")
    await commit_files(env, alice, PAPERS, "b1")
    for query, name in (("small=0", "small"), ("budget=-1", "budget"), ("files=x", "files"),
                        ("files=1000000000000000000000", "files")):
        r = await env.call("GET", ENG + "/snapshot/chunks?" + query, token=alice, headers=ZSTD)
        assert r.status == 400 and r.json()["field"] == name, (query, r.body)
    eve = await env.login("eve")  # an admin of beta, not a member of alpha
    r = await env.call("GET", ENG + "/snapshot/chunks", token=eve, headers=ZSTD)
    assert r.status in (403, 404) and r.json()["error"] in ("forbidden", "not_found")
    env.clock.advance(FLUSH_SECONDS)
    assert await downloads(env) == []
    # more than this daemon allows is taken as its limit (the client cannot know them)
    r = await env.call("GET", ENG + "/snapshot/chunks?budget=99999999999&files=100000&small="
                       "9999999999", token=alice, headers=ZSTD)
    assert r.status == 200 and len(streamed(r.body)) == len(PAPERS)


def _file(path: str, size: int, content: str | None = None) -> FileState:
    return FileState(path, 1, content if content is not None else "c" * 63 + path[-1], size)


def test_the_pick_follows_the_clients_first_group() -> None:
    """As client/pullbatch.py ``file_groups`` cuts its first group: files by path, folders
    and deleted files left out, large files counted in ``max_files`` but not in ``budget``."""
    files = [_file("d", 10), _file("a", 10), _file("f", 0, FOLDER_CONTENT),
             FileState("gone", 2, None, 0), _file("b", 500), _file("c", 30)]
    assert [f.path for f in first_files(files, small=100, budget=1000, max_files=9)] == ["a", "c", "d"]
    assert [f.path for f in first_files(files, small=100, budget=39, max_files=9)] == ["a"]
    assert [f.path for f in first_files(files, small=100, budget=1000, max_files=2)] == ["a"]


def test_the_chunks_come_once_each_and_whole_files_only() -> None:
    one, two, three = (ChunkRef(h * 64, 5) for h in "123")
    a, b, c = _file("a", 10), _file("b", 10), _file("c", 5)
    lists = {a.content: Manifest(a.content, 10, [one, two]), b.content: Manifest(b.content, 10, [two, one]),
             c.content: Manifest(c.content, 5, [three])}
    assert first_chunks([a, b, c], lists, 10) == ([a, b, c], [one, two, three])
    assert first_chunks([a, b, c], lists, 2) == ([a, b], [one, two])  # c's chunk would be a third
    assert first_chunks([a, c], {a.content: lists[a.content]}, 10) == ([a], [one, two])
    wrong = {**lists, a.content: Manifest(a.content, 11, [one, two])}  # not the file's size
    assert first_chunks([a, b], wrong, 10) == ([], [])
