"""The commit handler's cheap paths give exactly what the full checks give.

``parse_commit`` takes the plain shapes (a delete; a put with a full manifest only) through
``_plain_change`` without building field names; anything else, valid or not, goes through the
full checks. Property: for any change item, parsing with the shortcut and with the full checks
alone gives the same changes and manifests, or the same error (type, message, details).
``_result_json`` writes the same JSON as the generic dataclass form it replaced.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.errors import SyncError
from smartsyncd.storage.api import CommitResultItem
from smartsyncd.web import parse as web_parse
from smartsyncd.web.limits import Limits
from smartsyncd.web.parse import parse_commit
from smartsyncd.web.shapes import result_json

HASH = "ab" * 32
HASH2 = "0f" * 32

paths = st.sampled_from(
    ["a.txt", "Folder/b.pdf", "x/y/z.bin", "", "/abs", "a//b", "con.txt", "Caf\u00e9/e\u0301.txt", "a\\b", "dot./x"]
)
ints = st.sampled_from([None, -1, 0, 3, True, False, 1.5, "3"])
hashes = st.sampled_from([HASH, HASH2, "AB" * 32, "ab" * 31, 7, None])
sizes = st.sampled_from([-1, 0, 1, 4096, 262144, 262145, True, 2.0, None])
entry = st.one_of(st.tuples(hashes, sizes).map(list), st.just([HASH]), st.just("x"), st.just([HASH, 1, 2]))
mtimes = st.sampled_from([None, -1, 0, 1742031012345678900, 2**63 - 1, 2**63, True, 1.5, "2025-03-15"])
manifests: st.SearchStrategy[Any] = st.one_of(st.lists(entry, max_size=3), st.none(), st.just("not a list"), st.just({}))


@st.composite
def items(draw: Any) -> Any:
    """Mostly plain puts and deletes, each with up to two fields changed or removed."""
    item: dict[str, Any] = {"path": draw(paths.filter(bool)), "kind": "put", "base": None}
    if draw(st.booleans()):
        item["manifest"] = [[draw(st.sampled_from([HASH, HASH2, HASH, 7])), draw(sizes)] for _ in range(draw(st.integers(1, 2)))]
    else:
        item.update(kind="delete", base=draw(st.integers(0, 5)))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(
            ["path", "kind", "base", "manifest", "content", "size", "delta", "mtime", "readonly"]
        ))
        if draw(st.integers(0, 3)) == 0:
            item.pop(key, None)
            continue
        item[key] = draw(
            {
                "path": st.one_of(paths, st.just(3)),
                "kind": st.sampled_from(["put", "delete", "move", None]),
                "base": ints,
                "manifest": st.one_of(st.tuples(hashes, sizes).map(lambda e: [list(e)]), manifests),
                "content": hashes,
                "size": sizes,
                "delta": st.just({"base": HASH2, "ops": []}),
                "mtime": mtimes,
                "readonly": st.sampled_from([None, True, False, 0, "yes"]),
            }[key]
        )
    return draw(st.one_of(st.just(item), st.just(item), st.just(item), st.just(item), st.just([item])))


def _outcome(body: bytes) -> Any:
    try:
        parsed = parse_commit(body, Limits())
    except SyncError as e:
        return (type(e).__name__, str(e), e.details)
    return parsed


@settings(max_examples=400, deadline=None)
@given(st.lists(items(), min_size=1, max_size=3))
def test_the_shortcut_parses_as_the_full_checks(change_items: list[Any]) -> None:
    body = json.dumps({"batch": "b", "changes": change_items}).encode()
    fast = _outcome(body)
    saved = web_parse._plain_change
    web_parse._plain_change = lambda raw, *_: None  # every item through the full checks
    try:
        full = _outcome(body)
    finally:
        web_parse._plain_change = saved
    assert fast == full


def test_the_shortcut_takes_the_plain_shapes() -> None:
    put = web_parse._plain_change({"path": "a/b.txt", "kind": "put", "base": None, "manifest": [[HASH, 4096]]})
    assert put is not None and put[0].size == 4096 and put[1] is not None and put[1].chunks is not None
    assert web_parse._plain_change({"path": "a/b.txt", "kind": "delete", "base": 3}) is not None
    assert web_parse._plain_change({"path": "a", "kind": "put", "base": None, "content": HASH, "size": 1}) is None


@pytest.mark.parametrize(
    "item",
    [
        CommitResultItem(path="a", status="applied", seq=3),
        CommitResultItem(path="a", status="unchanged", seq=None, current_seq=2),
        CommitResultItem(path="a", status="conflict", seq=4, conflict_path="a (conflict).txt"),
        CommitResultItem(path="a", status="stale", seq=None, conflict_path=None, current_seq=9),
    ],
)
def test_result_json_is_the_generic_form(item: CommitResultItem) -> None:
    generic = {f.name: getattr(item, f.name) for f in fields(item)}
    generic = {k: v for k, v in generic.items() if v is not None or k == "seq"}
    assert json.dumps(result_json(item)) == json.dumps(generic)


@pytest.mark.parametrize("size", [0, True, False, 262145, 2.0, -1])
def test_a_chunk_size_outside_1_to_max_is_refused_on_both_paths(size: Any) -> None:
    """Explicit cases beside the property: the shortcut leaves a bad chunk size to the full
    checks (it never accepts one), and those refuse it naming the manifest entry."""
    item = {"path": "a.txt", "kind": "put", "base": None, "manifest": [[HASH, size]]}
    assert web_parse._plain_change(item) is None
    with pytest.raises(SyncError) as refused:
        parse_commit(json.dumps({"batch": "b", "changes": [item]}).encode(), Limits())
    assert refused.value.status == 400
    assert "changes[0].manifest[0]" in str(refused.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("mtime", -1), ("mtime", 2**63), ("mtime", 1.5), ("mtime", True), ("mtime", "2025-03-15T00:00:00Z"),
     ("readonly", "yes"), ("readonly", 1)],
)
def test_a_nonsense_date_or_read_only_flag_is_a_400_naming_the_field(key: str, value: Any) -> None:
    item = {"path": "a.txt", "kind": "put", "base": None, "manifest": [[HASH, 3]], key: value}
    error = _outcome(json.dumps({"batch": "b", "changes": [item]}).encode())
    assert error[0] == "BadRequest" and error[2]["field"] == f"changes[0].{key}"


def test_dates_and_read_only_flags_reach_the_proposed_change() -> None:
    item = {"path": "a.txt", "kind": "put", "base": None, "manifest": [[HASH, 3]],
            "mtime": 1742031012345678900, "readonly": True}
    parsed = parse_commit(json.dumps({"batch": "b", "changes": [item, {**item, "path": "b.txt", "mtime": None}]}).encode(), Limits())
    assert [(c.mtime_ns, c.readonly) for c in parsed.changes] == [(1742031012345678900, True), (None, True)]
