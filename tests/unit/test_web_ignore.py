"""The engagement's ignore rules over HTTP (issue 16), on the real Site in memory: any member
reads them, only an engagement admin sets or clears them, a bad pattern is a 400 naming its
line with nothing changed, and a commit of an ignored path is refused per path (``invalid_path``)
while a delete of a stored, now-ignored file still applies."""

from __future__ import annotations

from webkit import Env, in_memory, put, upload

from smartsyncd.core.ignore import rules_digest
from smartsyncd.storage.api import Grant

ENG = "/v1/engagements/alpha"
RULES = "*.bak\nscratch/\n"


async def tokens_with_an_admin(env: Env) -> dict[str, str]:
    await env.store.grant(Grant("alpha", "user", "local:eve", "eve", "admin"))
    return {u: await env.login(u) for u in ("alice", "rita", "eve")}


@in_memory
async def test_only_an_engagement_admin_sets_rules_and_members_read_them(env: Env) -> None:
    tokens = await tokens_with_an_admin(env)
    empty = await env.call("GET", ENG + "/ignore", token=tokens["rita"])
    assert (empty.status, empty.json()) == (200, {"rules": None, "digest": None})
    refused = await env.call("POST", ENG + "/ignore", token=tokens["alice"], body={"rules": RULES})
    assert refused.status == 403 and refused.json()["error"] == "forbidden"
    done = await env.call("POST", ENG + "/ignore", token=tokens["eve"], body={"rules": RULES})
    assert done.status == 200 and done.json()["digest"] == rules_digest(RULES)
    shown = await env.call("GET", ENG + "/ignore", token=tokens["rita"])
    assert shown.json() == {"rules": RULES, "digest": rules_digest(RULES)}
    events = [r for r in await env.store.audit_records(env.alpha) if r.event == "ignore_rules"]
    assert [(r.actor, r.detail["digest"]) for r in events] == [("eve", rules_digest(RULES))]

    cleared = await env.call("POST", ENG + "/ignore", token=tokens["eve"], body={"rules": None})
    assert cleared.status == 200 and cleared.json()["digest"] is None
    assert (await env.store.ignore_rules(env.alpha)) is None


@in_memory
async def test_bad_rules_are_a_400_naming_the_line_and_change_nothing(env: Env) -> None:
    tokens = await tokens_with_an_admin(env)
    await env.call("POST", ENG + "/ignore", token=tokens["eve"], body={"rules": RULES})
    for body, why in (({"rules": "ok\n[z-a]\n"}, "line 2"), ({"rules": 7}, "text or null"),
                      ({}, "required"), ({"rules": "x\n" * 33000}, "limited")):
        r = await env.call("POST", ENG + "/ignore", token=tokens["eve"], body=body)
        assert r.status == 400 and why in r.json()["message"], (body, r.body)
    assert (await env.store.ignore_rules(env.alpha)).text == RULES


@in_memory
async def test_commit_of_an_ignored_path_is_refused_per_path_and_deletes_apply(env: Env) -> None:
    tokens = await tokens_with_an_admin(env)
    chunks = await upload(env, tokens["alice"], b"old draft")
    r = await env.call("POST", ENG + "/commit", token=tokens["alice"],
                       body={"batch": "b1", "changes": [put("old.bak", chunks)]})
    assert r.status == 200, r.body
    await env.call("POST", ENG + "/ignore", token=tokens["eve"], body={"rules": RULES})
    new = await upload(env, tokens["alice"], b"new draft")
    r = await env.call("POST", ENG + "/commit", token=tokens["alice"],
                       body={"batch": "b2", "changes": [put("ok.txt", new), put("scratch/n.txt", new)]})
    assert r.status == 400 and r.json()["error"] == "invalid_path"
    assert (r.json()["path"], r.json()["reason"]) == ("scratch/n.txt", "ignored")
    assert await env.store.head(env.alpha) == 1  # nothing of the batch applied
    gone = await env.call("POST", ENG + "/commit", token=tokens["alice"], body={
        "batch": "b3", "changes": [{"path": "old.bak", "kind": "delete", "base": 1}]})
    assert gone.status == 200 and gone.json()["results"][0]["status"] == "applied"


@in_memory
async def test_the_digest_is_the_etag_and_an_unchanged_set_is_a_bodiless_304(env: Env) -> None:
    tokens = await tokens_with_an_admin(env)
    rita = tokens["rita"]
    none = await env.call("GET", ENG + "/ignore", token=rita)
    assert none.headers.getRawHeaders(b"etag") == [b'"none"']
    still_none = await env.call("GET", ENG + "/ignore", token=rita, headers={"If-None-Match": '"none"'})
    assert (still_none.status, still_none.body) == (304, b"")
    await env.call("POST", ENG + "/ignore", token=tokens["eve"], body={"rules": RULES})
    tag = f'"{rules_digest(RULES)}"'
    changed = await env.call("GET", ENG + "/ignore", token=rita, headers={"If-None-Match": '"none"'})
    assert changed.status == 200 and changed.json()["rules"] == RULES
    assert changed.headers.getRawHeaders(b"etag") == [tag.encode()]
    same = await env.call("GET", ENG + "/ignore", token=rita, headers={"If-None-Match": tag})
    assert (same.status, same.body) == (304, b"")
    outsider = await env.call("GET", "/v1/engagements/beta/ignore", token=rita,
                              headers={"If-None-Match": tag})
    assert outsider.status in (403, 404)  # authorization comes before any 304
