"""The review queue's typed client calls (client/http.py, client/wire.py, client/review.py)
against a scripted server: what they send, strict parsing of the answers, typed refusals, and a
merge uploading only the chunks the server lacks."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_client_http import ENG, ENG_PATH, Seen, Server, server  # noqa: F401 - fixture

from smartsyncd.client.errors import ConflictResolved, ConflictStale, ProtocolError
from smartsyncd.client.review import describe, upload_merge
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.chunkstream import decode_records
from smartsyncd.core.manifest import chunks_to_json

ITEM: dict[str, Any] = {
    "id": 3, "path": "WP/cash.xlsx", "copy_path": "WP/cash (conflict bob 2026-12-01 0900).xlsx",
    "created_at": "2026-12-01T09:00:00.000000Z",
    "theirs": {"seq": 2, "user": "alice", "content": "a" * 64, "size": 10},
    "ours": {"seq": 3, "user": "bob", "content": "b" * 64, "size": 11},
    "path_seq": 2, "copy_seq": 3, "copy_live": True, "state": "open", "resolved_at": None,
    "resolved_by": None, "resolution": None, "resolved_seq": None,
}


def test_conflicts_asks_all_and_parses_items(server: Server) -> None:  # noqa: F811
    server.script.handler = lambda seen: (200, {"conflicts": [ITEM]})
    api = server.api()
    [item] = server.run(api.conflicts(ENG, everyone=True))
    assert (item.id, item.theirs.user, item.ours.seq, item.copy_live) == (3, "alice", 3, True)
    assert item.to_json() == ITEM
    seen = server.script.seen[0]
    assert seen.path == ENG_PATH + "/conflicts" and seen.query == {b"all": [b"1"]}
    assert "#3 WP/cash.xlsx: alice (seq 2) vs bob" in describe(item)


@pytest.mark.parametrize(
    "bad",
    [
        {"conflicts": [dict(ITEM, id="3")]},
        {"conflicts": [dict(ITEM, state="pending")]},
        {"conflicts": [dict(ITEM, theirs=None)]},
        {"conflicts": [dict(ITEM, copy_live=1)]},
        {"items": []},
    ],
)
def test_malformed_items_are_protocol_errors(server: Server, bad: Any) -> None:  # noqa: F811
    server.script.handler = lambda seen: (200, bad)
    with pytest.raises(ProtocolError):
        server.run(server.api().conflicts(ENG))


def test_resolve_names_the_versions_listed_and_refusals_are_typed(server: Server) -> None:  # noqa: F811
    done = dict(ITEM, state="resolved", resolved_by="rita", resolution="ours", resolved_seq=5)
    answers = [
        (200, {"conflicts": [ITEM]}),
        (200, {"conflict": done, "head": 5, "results": [{"path": "WP/cash.xlsx", "status": "applied", "seq": 4}]}),
        (409, {"error": "conflict_resolved", "message": "already", "resolved_by": "rita"}),
        (409, {"error": "conflict_stale", "message": "moved", "path_seq": 7, "copy_seq": 3}),
    ]
    server.script.handler = lambda seen: answers.pop(0)
    api = server.api()
    [item] = server.run(api.conflicts(ENG))
    answer = server.run(api.resolve_conflict(ENG, item, "ours", "k1"))
    assert answer.head == 5 and answer.conflict.resolution == "ours"
    sent = server.script.seen[1]
    assert sent.path == ENG_PATH + "/conflicts/3/resolve"
    assert json.loads(sent.body) == {"choice": "ours", "batch": "k1", "path_seq": 2, "copy_seq": 3}
    with pytest.raises(ConflictResolved):
        server.run(api.resolve_conflict(ENG, item, "theirs", "k2"))
    with pytest.raises(ConflictStale) as stale:
        server.run(api.resolve_conflict(ENG, item, "theirs", "k3"))
    assert stale.value.details["path_seq"] == 7


def test_a_merge_uploads_only_missing_chunks_once(server: Server) -> None:  # noqa: F811
    part = random.Random(20).randbytes(200_000)
    pieces = chunk_buffer(part + part)  # the second half repeats the first half's chunks
    hashes = list(dict.fromkeys(ref.hash for ref, _ in pieces))
    assert len(hashes) > 2

    def answer(seen: Seen) -> tuple[int, Any]:
        if seen.path.endswith("/chunks/missing"):
            return 200, {"missing": hashes[1:]}
        return 200, {"present": 0}

    server.script.handler = answer
    refs = server.run(upload_merge(server.api(), ENG, pieces))
    assert chunks_to_json(refs) == chunks_to_json([ref for ref, _ in pieces])
    assert json.loads(server.script.seen[0].body)["chunks"] == hashes  # each asked once
    [upload] = server.script.seen[1:]
    assert upload.path == ENG_PATH + "/chunks"
    sent = [r[0] for r in decode_records(upload.body)]
    assert sent == hashes[1:]  # only the missing ones, each once
