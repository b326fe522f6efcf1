"""A commit that carries the copy report with what the copy assumed (``report.expect``, issue
15: an edit sync in one request; web/copyreport.py), on the real Site and store
(tests/unit/webkit.py).

It applies only while the engagement is not finalized, no other user's lock covers a path of
it and the engagement's ignore rules are the ones the copy named; otherwise nothing is stored
or committed and the refusal (409 ``expect_unmet``) carries what the report alone would have
answered, the report recorded as that one would have been. Bad input is a 400 naming the field.
"""

from __future__ import annotations

import base64
from typing import Any

from webkit import Env, chunk_of, in_memory, put

from smartsyncd.core import chunkstream
from smartsyncd.core.ignore import rules_etag

ALPHA = "/v1/engagements/alpha"
COPY = {"Smartsync-Copy": "copy-1"}
NO_RULES = rules_etag(None)
DATA = b"a small edit\n" * 20


async def _signed_in_copy(env: Env, user: str = "alice") -> str:
    token = await env.login(user)
    r = await env.call("POST", ALPHA + "/copies", token=token, body={"copy": "copy-1", "host": "laptop"})
    assert r.status == 200, r.body
    return token


def _commit(expect: Any, batch: str = "b1", path: str = "a.txt") -> dict[str, Any]:
    """A commit of one new small file, its chunk carried along, its report expecting."""
    ref, record = chunk_of(DATA)
    report = {"host": "laptop", "unsynced": 0, "since": None, "expect": expect}
    return {"batch": batch, "changes": [put(path, [ref])], "history": {"seq": 0},
            "chunks": base64.b64encode(chunkstream.encode_records([record])).decode("ascii"),
            "report": report}


def _expect(ignore: str = NO_RULES) -> dict[str, Any]:
    return {"ignore": ignore, "unsynced": 1, "since": "2026-12-06T08:00:00Z"}


async def _nothing_changed(env: Env, unsynced: int) -> None:
    head, changes = await env.store.changes_since(env.alpha, 0, 10)
    assert (head, changes) == (0, [])
    assert await env.store.missing_chunks(env.alpha, [chunk_of(DATA)[0].hash]) == [
        chunk_of(DATA)[0].hash]  # the carried chunk was not stored either
    [record] = await env.store.list_copies(env.alpha)
    assert record.unsynced == unsynced


@in_memory
async def test_a_report_offers_it_to_an_editor_not_to_a_reader(env: Env) -> None:
    body = {"host": "laptop", "unsynced": 0, "since": None, "history": {"seq": 0}}
    token = await _signed_in_copy(env)
    r = await env.call("POST", ALPHA + "/copies/copy-1/report", token=token, body=body)
    assert r.status == 200 and r.json()["expect"] == 1, r.body
    r = await env.call("POST", ALPHA + "/copies/copy-1/report", token=token,
                       body={k: v for k, v in body.items() if k != "history"})
    assert r.status == 200 and "expect" not in r.json()  # an older client's report
    rita = await env.login("rita")
    await env.call("POST", ALPHA + "/copies", token=rita, body={"copy": "copy-r", "host": "pc"})
    r = await env.call("POST", ALPHA + "/copies/copy-r/report", token=rita, body=body)
    assert r.status == 200 and "expect" not in r.json() and r.json()["head"] == 0


@in_memory
async def test_a_commit_whose_expectations_hold_applies_and_records_its_report(env: Env) -> None:
    token = await _signed_in_copy(env)
    await env.store.checkout(env.alpha, "elsewhere.txt", "rita", None, None)  # not its paths
    await env.store.checkout(env.alpha, "a.txt", "alice", None, None)  # its own lock
    r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(_expect()), headers=COPY)
    assert r.status == 200, r.body
    assert r.json()["results"][0]["status"] == "applied" and r.json()["reported"] is True
    [record] = await env.store.list_copies(env.alpha)
    assert record.unsynced == 0  # the report after the commit, not the one before it


@in_memory
async def test_finalized_refuses_with_the_report_answer_and_changes_nothing(env: Env) -> None:
    token = await _signed_in_copy(env)
    await env.store.finalize(env.alpha, "admin:root", "signed off", True)
    r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(_expect()), headers=COPY)
    assert (r.status, r.json()["error"]) == (409, "expect_unmet"), r.body
    answer = r.json()["report"]
    assert answer["finalized"]["reason"] == "signed off" and answer["head"] == 0
    assert answer["ignore"] == NO_RULES and answer["locks"] == []
    await _nothing_changed(env, unsynced=1)  # the report the copy did not send: recorded


@in_memory
async def test_another_users_lock_refuses_with_the_locks(env: Env) -> None:
    token = await _signed_in_copy(env)
    await env.store.checkout(env.alpha, "A.TXT", "rita", None, None)  # case-folded, as locks are
    r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(_expect()), headers=COPY)
    assert (r.status, r.json()["error"]) == (409, "expect_unmet"), r.body
    [lock] = r.json()["report"]["locks"]
    assert (lock["path"], lock["holder"]) == ("A.TXT", "rita")
    assert r.json()["report"]["finalized"] is None
    await _nothing_changed(env, unsynced=1)


@in_memory
async def test_new_ignore_rules_refuse_with_their_etag(env: Env) -> None:
    token = await _signed_in_copy(env)
    digest = await env.store.set_ignore_rules("alpha", "*.tmp\n")
    r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(_expect()), headers=COPY)
    assert (r.status, r.json()["error"]) == (409, "expect_unmet"), r.body
    assert r.json()["report"]["ignore"] == rules_etag(digest)
    await _nothing_changed(env, unsynced=1)
    r = await env.call("POST", ALPHA + "/commit", token=token, headers=COPY,
                       body=_commit(_expect(rules_etag(digest)), batch="b2"))
    assert r.status == 200 and r.json()["reported"] is True, r.body


@in_memory
async def test_a_bad_expectation_is_a_400_and_changes_nothing(env: Env) -> None:
    token = await _signed_in_copy(env)
    for bad, field in (
        ({**_expect(), "ignore": 5}, "report.expect.ignore"),
        ({**_expect(), "ignore": ""}, "report.expect.ignore"),
        ({**_expect(), "unsynced": -1}, "report.expect.unsynced"),
        ({**_expect(), "since": "yesterday"}, "report.expect.since"),
        ("two", "report.expect"),
    ):
        r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(bad), headers=COPY)
        assert (r.status, r.json()["field"]) == (400, field), r.body
    # without its copy named there is no report to answer with
    r = await env.call("POST", ALPHA + "/commit", token=token, body=_commit(_expect()))
    assert (r.status, r.json()["field"]) == (400, "report.expect"), r.body
    await _nothing_changed(env, unsynced=0)

