"""The pure sync planner: push/pull decisions from (local, base, remote), incl. randomized safety."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.model import Change
from smartsyncd.core.planner import (
    Adopt,
    BaseEntry,
    LocalEntry,
    PullDelete,
    PullWrite,
    PushDelete,
    PushPut,
    plan,
)

T = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)


def cid(n: int) -> str:
    return f"{n:064x}"


def put(seq: int, path: str, content: str, size: int = 1, prev: int | None = None) -> Change:
    return Change(seq, path, "put", content, size, prev, "bob", None, T)


def delete(seq: int, path: str, prev: int | None = None) -> Change:
    return Change(seq, path, "delete", None, 0, prev, "bob", None, T)


def test_local_only_changes_are_pushed_with_their_base() -> None:
    base = {"a": BaseEntry(3, cid(1), 1), "b": BaseEntry(4, cid(2), 1), "c": BaseEntry(5, cid(3), 1)}
    local = {"a": LocalEntry(cid(1), 1), "b": LocalEntry(cid(9), 7), "new": LocalEntry(cid(5), 2)}
    p = plan(local, base, [])
    assert p.push_puts == [PushPut("b", 4, cid(9), 7), PushPut("new", None, cid(5), 2)]
    assert p.push_deletes == [PushDelete("c", 5)]
    assert p.pull_empty


def test_incomplete_scan_plans_no_delete() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({}, base, [], complete=False)
    assert p.push_empty and p.pull_empty


def test_rename_is_delete_plus_put_of_same_content() -> None:
    base = {"old": BaseEntry(3, cid(1), 10)}
    p = plan({"new": LocalEntry(cid(1), 10)}, base, [])
    assert p.push_deletes == [PushDelete("old", 3)]
    assert p.push_puts == [PushPut("new", None, cid(1), 10)]


def test_remote_put_on_unchanged_file_is_written() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({"a": LocalEntry(cid(1), 1)}, base, [put(7, "a", cid(2), 5)])
    assert p.pull_writes == [PullWrite("a", 7, cid(2), 5, cid(1))]
    assert not p.conflicts and p.push_empty


def test_own_commit_seen_again_is_skipped() -> None:
    base = {"a": BaseEntry(7, cid(2), 5)}
    p = plan({"a": LocalEntry(cid(2), 5)}, base, [put(7, "a", cid(2), 5)])
    assert p.pull_empty and p.push_empty


def test_remote_put_on_local_edit_is_a_conflict() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({"a": LocalEntry(cid(9), 1)}, base, [put(7, "a", cid(2), 5)])
    assert [c.path for c in p.conflicts] == ["a"]
    assert p.conflicts[0].remote == PullWrite("a", 7, cid(2), 5, cid(1))
    assert not p.pull_writes


def test_same_edit_on_both_sides_is_adopted() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({"a": LocalEntry(cid(2), 5)}, base, [put(7, "a", cid(2), 5)])
    assert p.adopt == [Adopt("a", 7, cid(2), 5)]
    assert not p.conflicts and not p.pull_writes


def test_remote_delete_of_unchanged_file_deletes_it() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({"a": LocalEntry(cid(1), 1)}, base, [delete(8, "a", 3)])
    assert p.pull_deletes == [PullDelete("a", 8)]


def test_remote_delete_of_local_edit_keeps_the_file() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({"a": LocalEntry(cid(4), 1)}, base, [delete(8, "a", 3)])
    assert not p.pull_deletes
    assert p.forget == ["a"]  # no base any more: pushed next round as a new file
    follow_up = plan({"a": LocalEntry(cid(4), 1)}, {}, [])
    assert follow_up.push_puts == [PushPut("a", None, cid(4), 1)]


def test_remote_edit_beats_local_delete() -> None:
    base = {"a": BaseEntry(3, cid(1), 1)}
    p = plan({}, base, [put(9, "a", cid(2), 2)])
    assert p.pull_writes == [PullWrite("a", 9, cid(2), 2, cid(1))]
    assert p.push_empty


def test_last_change_per_path_wins() -> None:
    p = plan({}, {}, [put(5, "a", cid(1)), delete(6, "a"), put(7, "a", cid(3))])
    assert [(w.path, w.seq, w.content) for w in p.pull_writes] == [("a", 7, cid(3))]


# -- randomized safety --------------------------------------------------------------------------

PATHS = ["a", "b", "c", "d/e"]
contents = st.integers(min_value=0, max_value=3).map(cid)


@st.composite
def trees(draw: st.DrawFn) -> tuple[dict, dict, list[Change], bool]:
    base = {}
    local = {}
    remote: list[Change] = []
    seq = 10
    for path in PATHS:
        if draw(st.booleans()):
            base[path] = BaseEntry(draw(st.integers(1, 9)), draw(contents), 1)
        if draw(st.booleans()):
            local[path] = LocalEntry(draw(contents), 1)
        for _ in range(draw(st.integers(0, 2))):
            seq += 1
            if draw(st.booleans()):
                remote.append(put(seq, path, draw(contents)))
            else:
                remote.append(delete(seq, path))
    return local, base, remote, draw(st.booleans())


@settings(max_examples=400, deadline=None)
@given(trees())
def test_never_overwrites_or_deletes_an_unpushed_local_edit(case: tuple) -> None:
    local, base, remote, complete = case
    p = plan(local, base, remote, complete=complete)
    edited = {
        path for path, entry in local.items()
        if path not in base or base[path].content != entry.content
    }
    for w in p.pull_writes:
        assert w.path not in edited, f"would overwrite local edit of {w.path}"
    for d in p.pull_deletes:
        assert d.path not in edited, f"would delete local edit of {d.path}"
        assert d.path in local and local[d.path].content == base[d.path].content
    for path in p.forget:
        # forgetting the base of an edited file is only allowed when it is kept on disk
        assert path not in local or path in edited
    # every conflict is an edited file hit by a different remote version
    for c in p.conflicts:
        assert c.path in edited and local[c.path].content != c.remote.content
    # each path gets at most one action
    touched = (
        [w.path for w in p.pull_writes] + [d.path for d in p.pull_deletes]
        + [c.path for c in p.conflicts] + [a.path for a in p.adopt] + p.forget
        + [x.path for x in p.push_puts] + [x.path for x in p.push_deletes]
    )
    assert len(touched) == len(set(touched))


@settings(max_examples=300, deadline=None)
@given(trees())
def test_incomplete_scan_never_plans_deletes(case: tuple) -> None:
    local, base, remote, _ = case
    p = plan(local, base, remote, complete=False)
    assert not p.push_deletes
    for d in p.pull_deletes:
        assert d.path in local  # only files that were seen unchanged


@settings(max_examples=300, deadline=None)
@given(trees())
def test_without_remote_changes_nothing_is_pulled(case: tuple) -> None:
    local, base, _, complete = case
    p = plan(local, base, [], complete=complete)
    assert p.pull_empty
    for x in p.push_puts:
        assert local[x.path].content == x.content
        assert x.base == (base[x.path].seq if x.path in base else None)


def test_case_only_rename_on_a_case_insensitive_copy_is_applied_in_place() -> None:
    from smartsyncd.core.planner import BaseEntry, CaseRename, LocalEntry

    c = "a" * 64
    local = {"Memo.txt": LocalEntry(c, 3)}
    base = {"Memo.txt": BaseEntry(1, c, 3)}
    remote = [Change(2, "Memo.txt", "delete", None, 0, 1, "bob", None, T),
              Change(3, "memo.txt", "put", c, 3, None, "bob", None, T)]
    p = plan(local, base, remote, case_insensitive=True)
    assert p.renames == [CaseRename("Memo.txt", "memo.txt", 3, c, 3)]
    assert not p.pull_deletes and not p.pull_writes and not p.adopt
    # the edit racing the rename stays a local edit of the new name
    p = plan({"Memo.txt": LocalEntry("b" * 64, 4)}, base, remote, case_insensitive=True)
    assert p.renames and not p.pull_deletes and not p.conflicts
    assert [x.path for x in p.push_puts] == ["memo.txt"]
