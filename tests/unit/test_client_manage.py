"""``EngagementAdmin`` (issue 17) against a scripted server over treq's in-memory connection:
the requests it sends, strict parsing of the answers, and typed refusals."""

from __future__ import annotations

import json

import pytest
from test_client_http import Seen, Server, server  # noqa: F401 - the fixture

from smartsyncd.client.errors import Forbidden, LastAdmin, NotFound, ProtocolError, UnsyncedCopies
from smartsyncd.client.manage import CopyInfo, EngagementAdmin, GrantInfo

COPY = {"copy": "c-1", "user": "dave", "host": "laptop", "registered_at": "2026-03-01T09:00:00Z",
        "last_contact": "2026-03-02T09:00:00Z", "unsynced": 2,
        "unsynced_since": "2026-03-02T08:00:00Z", "abandoned_at": None, "abandoned_by": None}


def test_each_call_sends_its_route_and_parses_the_answer(server: Server) -> None:  # noqa: F811
    answers = {
        ("POST", "/v1/engagements/acme%202026/locks/break"): {"lock": {
            "path": "WP", "holder": "dave", "since": "2026-03-01T09:00:00Z", "expires_at": None}},
        ("GET", "/v1/engagements/acme%202026/copies"): {"copies": [COPY]},
        ("POST", "/v1/engagements/acme%202026/copies/c-1/abandon"): {"copy": {
            **COPY, "abandoned_at": "2026-03-03T09:00:00Z", "abandoned_by": "carol"}},
        ("POST", "/v1/engagements/acme%202026/finalize"): {
            "finalized": {"at": "2026-03-03T10:00:00Z", "by": "carol", "reason": "signed"},
            "unsynced_copies": [COPY]},
        ("POST", "/v1/engagements/acme%202026/reopen"): {"finalized": None},
        ("GET", "/v1/engagements/acme%202026/grants"): {"grants": [
            {"kind": "user", "principal": "local:carol", "name": "carol", "role": "admin"}]},
        ("POST", "/v1/engagements/acme%202026/grants"): {"grant": {
            "kind": "group", "principal": "S-1-5-21-7-2001", "name": "Audit Team", "role": "reader"}},
        ("POST", "/v1/engagements/acme%202026/grants/revoke"): {"revoked": [
            {"kind": "user", "principal": "local:frank", "name": "frank", "role": "editor"}]},
    }

    def handler(seen: Seen) -> tuple[int, object]:
        return 200, answers[(seen.method, seen.path)]

    server.script.handler = handler
    admin = EngagementAdmin(server.api(), "acme 2026")
    lock = server.run(admin.break_lock("WP", "on leave"))
    assert (lock.path, lock.holder) == ("WP", "dave")
    assert server.run(admin.copies()) == [CopyInfo(**COPY)]
    assert server.run(admin.abandon_copy("c-1")).abandoned_by == "carol"
    final = server.run(admin.finalize("signed", force=True))
    assert final.finalized.by == "carol" and [c.copy for c in final.unsynced_copies] == ["c-1"]
    server.run(admin.reopen("late fix"))
    assert server.run(admin.grants()) == [GrantInfo("user", "local:carol", "carol", "admin")]
    given = server.run(admin.grant("group", "audit team", "reader"))
    assert given.principal == "S-1-5-21-7-2001"
    assert [g.name for g in server.run(admin.revoke("user", "frank"))] == ["frank"]

    bodies = {(s.method, s.path): json.loads(s.body) for s in server.script.seen if s.body}
    assert bodies[("POST", "/v1/engagements/acme%202026/locks/break")] == {"path": "WP", "reason": "on leave"}
    assert bodies[("POST", "/v1/engagements/acme%202026/finalize")] == {"reason": "signed", "force": True}
    assert bodies[("POST", "/v1/engagements/acme%202026/grants")] == {"group": "audit team", "role": "reader"}
    assert bodies[("POST", "/v1/engagements/acme%202026/grants/revoke")] == {"user": "frank"}
    assert all(s.auth == "Bearer tok" for s in server.script.seen)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (403, {"error": "forbidden", "message": "needs admin", "role": "editor", "required": "admin"},
         Forbidden),
        (409, {"error": "last_admin", "message": "would leave no admin"}, LastAdmin),
        (409, {"error": "unsynced_copies", "message": "1 copy", "copies": ["c-1"]}, UnsyncedCopies),
        (404, {"error": "not_found", "message": "no grant"}, NotFound),
    ],
)
def test_refusals_are_typed(server: Server, status: int, body: dict, kind: type) -> None:  # noqa: F811
    server.script.handler = lambda seen: (status, body)
    with pytest.raises(kind) as info:
        server.run(EngagementAdmin(server.api(), "acme").revoke("user", "carol"))
    if kind is Forbidden:
        assert info.value.required == "admin"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "answer",
    [{}, {"grant": {"kind": "robot", "principal": "x", "name": "x", "role": "admin"}},
     {"grant": {"kind": "user", "principal": 7, "name": "x", "role": "admin"}}],
)
def test_malformed_answers_are_protocol_errors(server: Server, answer: dict) -> None:  # noqa: F811
    server.script.handler = lambda seen: (200, answer)
    with pytest.raises(ProtocolError):
        server.run(EngagementAdmin(server.api(), "acme").grant("user", "x", "admin"))


def test_ignore_rules_calls_send_their_route_and_check_the_answer(server: Server) -> None:  # noqa: F811
    answers = {
        ("GET", "/v1/engagements/acme/ignore"): {"rules": "*.bak\n", "digest": "ab" * 32},
        ("POST", "/v1/engagements/acme/ignore"): {"rules": None, "digest": 7},
    }
    server.script.handler = lambda seen: (200, answers[(seen.method, seen.path)])
    admin = EngagementAdmin(server.api(), "acme")
    assert server.run(admin.ignore_rules()) == ("*.bak\n", "ab" * 32)
    with pytest.raises(ProtocolError, match="digest"):
        server.run(admin.set_ignore_rules(None))
    assert json.loads(server.script.seen[-1].body) == {"rules": None}
