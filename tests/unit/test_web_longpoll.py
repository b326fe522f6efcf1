"""Parked long-polls (web/longpoll.py) through the real SyncAPI, store and sessions: every woken
poll answers exactly what ``changes_since`` says (encoded once, zstd only for those asking),
one query per woken group (commit or timeout), answers spread over reactor turns, a client
that went away while parked costs nothing, and a store failure is a JSON 500 for each."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from webkit import ROUNDS, Env, Reply, in_memory, put, upload

from smartsyncd.core import bodycodec, manifest
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.api import PutManifest

POLL = "/v1/engagements/alpha/changes?since={since}&wait={wait}"


@pytest.fixture(autouse=True)
def queries_take_a_turn(env: Env) -> None:
    """The store's change queries answer on the Clock's next turn, as they do from the real
    thread pool: polls woken meanwhile join the group whose query is running."""
    real = env.store.changes_since

    async def after_a_turn(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        turn: Deferred[None] = Deferred()
        env.clock.callLater(0, turn.callback, None)
        await turn
        return result

    env.store.changes_since = after_a_turn


def poll(env: Env, token: str, since: int = 0, wait: int = 30, zstd: bool = False) -> Deferred:
    headers = {"Authorization": f"Bearer {token}"}
    if zstd:
        headers["Accept-Encoding"] = "zstd"
    return env.stub.request("GET", "https://sync.example" + POLL.format(since=since, wait=wait), headers=headers)


async def answers(env: Env, polls: list[Deferred]) -> list[Reply]:
    """Every poll's reply, pumping the connections and the Clock's turns (the answers of one
    wake-up are written a slice per turn; a change query answers on a later turn)."""
    done: list[Any] = [None] * len(polls)

    def keep(response: Any, i: int) -> None:
        done[i] = response

    for i, d in enumerate(polls):
        d.addCallback(keep, i)
    for _ in range(ROUNDS):
        if all(x is not None for x in done):
            break
        env.pump()
    assert all(x is not None for x in done), "not every long-poll was answered"
    return [Reply(r.code, r.headers, await env.settle(r.content())) for r in done]


async def commit_files(env: Env, token: str, count: int, batch: str) -> None:
    refs = await upload(env, token, os.urandom(2000))
    changes = [put(f"docs/file-{i:03d}.xlsx", refs) for i in range(count)]
    r = await env.call("POST", "/v1/engagements/alpha/commit", token=token, body={"batch": batch, "changes": changes})
    assert r.status == 200, r.body


async def commit_elsewhere(env: Env, batch: str) -> int:
    """A commit another daemon made: straight into the store, then the notification that
    service/pgnotify.py would deliver (this process holds none of its records)."""
    content = manifest.content_id([])
    change = ProposedChange(path=f"{batch}.txt", kind="put", base=None, content=content, size=0)
    result = await env.store.commit(
        env.alpha, "alice", None, batch, [change], {change.path: PutManifest(content, chunks=())}, datetime.now(UTC)
    )
    env.notifier.notify(env.alpha, result.head)
    return int(result.head)


@in_memory
async def test_polls_woken_by_a_commit_here_get_exactly_changes_since_without_a_query(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    plain = [poll(env, reader) for _ in range(12)]
    packed = [poll(env, reader, zstd=True) for _ in range(12)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 24)
    queries, shortcuts = env.api.longpolls.queries, env.api.longpolls.shortcuts
    await commit_files(env, alice, 30, "wake")  # an answer over the compression threshold
    got = await answers(env, plain + packed)
    # one group (same since, limit and head), answered from the commit's own records
    assert (env.api.longpolls.queries, env.api.longpolls.shortcuts) == (queries, shortcuts + 1)
    direct = await env.call("GET", "/v1/engagements/alpha/changes?since=0", token=reader)
    assert direct.status == 200 and len(direct.json()["changes"]) == 30
    for r in got[:12]:
        assert r.status == 200 and r.body == direct.body
        for name in ("content-encoding", "content-type", "cache-control"):
            assert r.headers.getRawHeaders(name) == direct.headers.getRawHeaders(name)
    for r in got[12:]:
        assert r.status == 200 and r.headers.getRawHeaders("content-encoding") == ["zstd"]
        assert bodycodec.decode(r.body, "zstd", 1 << 20) == direct.body
    assert env.notifier.waiting(env.alpha) == 0


@in_memory
async def test_a_page_of_a_commit_and_a_commit_learned_elsewhere(env: Env) -> None:
    """``limit`` is honoured by the shortcut (a first page with ``more``); a commit this process
    did not make (another daemon's, delivered by notification) keeps the query, one per group."""
    alice = await env.login("alice")
    reader = await env.login("rita")
    url = "/v1/engagements/alpha/changes?since=0&wait=30&limit=7"
    paged = [env.start("GET", url, token=reader) for _ in range(3)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 3)
    queries, shortcuts = env.api.longpolls.queries, env.api.longpolls.shortcuts
    await commit_files(env, alice, 20, "paged")
    got = await answers(env, paged)
    assert (env.api.longpolls.queries, env.api.longpolls.shortcuts) == (queries, shortcuts + 1)
    direct = await env.call("GET", "/v1/engagements/alpha/changes?since=0&limit=7", token=reader)
    assert direct.json()["more"] is True and len(direct.json()["changes"]) == 7
    assert [r.body for r in got] == [direct.body] * 3

    polls = [poll(env, reader, since=20) for _ in range(4)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 4)
    head = await commit_elsewhere(env, "elsewhere")
    got = await answers(env, polls)
    assert (env.api.longpolls.queries, env.api.longpolls.shortcuts) == (queries + 1, shortcuts + 1)
    direct = await env.call("GET", "/v1/engagements/alpha/changes?since=20", token=reader)
    assert direct.json()["head"] == head == 21
    assert [r.body for r in got] == [direct.body] * 4


@in_memory
async def test_a_woken_group_is_answered_a_slice_per_reactor_turn(env: Env) -> None:
    env.api.longpolls._slice = 4
    alice = await env.login("alice")
    reader = await env.login("rita")
    polls = [poll(env, reader) for _ in range(10)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 10)
    await commit_files(env, alice, 1, "sliced")
    got = await answers(env, polls)
    assert {r.body for r in got} == {got[0].body} and got[0].json()["head"] == 1


@in_memory
async def test_polls_timing_out_together_share_one_query_and_answer_empty(env: Env) -> None:
    reader = await env.login("rita")
    polls = [poll(env, reader, wait=10) for _ in range(5)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 5)
    queries = env.api.longpolls.queries
    env.clock.advance(10)
    got = await answers(env, polls)
    store, generation = await env.store.store_identity()
    empty = {"head": 0, "changes": [], "more": False, "store": store, "generation": generation}
    assert [r.json() for r in got] == [empty] * 5
    assert env.api.longpolls.queries == queries + 1


@in_memory
async def test_a_client_gone_while_parked_costs_nothing(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    staying = [poll(env, reader) for _ in range(3)]
    leaving = poll(env, reader)
    leaving.addErrback(lambda f: None)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 4)
    leaving.cancel()  # the client closes its connection
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 3)
    assert len([c for c in env.clock.getDelayedCalls() if c.func == env.notifier._expire]) == 3
    await commit_files(env, alice, 1, "after-leave")
    got = await answers(env, staying)
    assert [r.json()["head"] for r in got] == [1, 1, 1]  # and nothing logged an error (conftest)


@in_memory
@pytest.mark.allow_logged_errors
async def test_a_store_failure_answers_every_woken_poll_with_a_json_500(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    polls = [poll(env, reader) for _ in range(3)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 3)

    async def broken(eid: int, since: int, limit: int) -> Any:
        raise OSError("disk gone")

    await commit_files(env, alice, 1, "first")  # answered from the commit: no query
    assert [r.json()["head"] for r in await answers(env, polls)] == [1, 1, 1]
    polls = [poll(env, reader, since=1) for _ in range(3)]
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 3)
    real = env.store.changes_since
    env.store.changes_since = broken  # the store fails only for the woken polls' query
    try:
        await commit_elsewhere(env, "broken")  # another daemon's commit: the query path
        got = await answers(env, polls)
    finally:
        env.store.changes_since = real
    for r in got:
        assert r.status == 500 and r.json()["error"] == "internal_error"
        assert "disk gone" not in r.body.decode()


@in_memory
async def test_a_parked_head_request_gets_the_headers_only(env: Env) -> None:
    alice = await env.login("alice")
    reader = await env.login("rita")
    url = "https://sync.example" + POLL.format(since=0, wait=30)
    head = env.stub.request("HEAD", url, headers={"Authorization": f"Bearer {reader}"})
    get = poll(env, reader)
    await env.wait_for(lambda: env.notifier.waiting(env.alpha) == 2)
    await commit_files(env, alice, 1, "head")
    got_head, got_get = await answers(env, [head, get])
    assert got_head.status == 200 and got_head.body == b""
    assert got_get.status == 200 and got_get.json()["head"] == 1
