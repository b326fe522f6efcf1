"""Folder entries (issue 16, docs/protocol.md "Folder entries"): the commit rules and the
planner, pure; a hypothesis property that no folder delete ever removes a file."""

from __future__ import annotations

from datetime import UTC, datetime

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.commit_rules import MemoryHead, plan_commit
from smartsyncd.core.errors import BadRequest, PathClash
from smartsyncd.core.ignore import IgnoreRules
from smartsyncd.core.model import FOLDER_CONTENT, Change, FileState, ProposedChange, is_folder
from smartsyncd.core.planner import BaseEntry, LocalEntry, PullWrite, PushDelete, PushPut, plan

T = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
FOLDER = LocalEntry(FOLDER_CONTENT, 0)


def cid(n: int) -> str:
    return f"{n:064x}"


def folder_put(path: str, base: int | None = None) -> ProposedChange:
    return ProposedChange(path, "put", base, FOLDER_CONTENT, 0)


def file_put(path: str, base: int | None = None, n: int = 1) -> ProposedChange:
    return ProposedChange(path, "put", base, cid(n), 10)


def commit(head: MemoryHead, proposals: list[ProposedChange]) -> list[str]:
    outcomes = plan_commit(proposals, head, "alice", T)
    head.apply(outcomes)
    return [o.status for o in outcomes]


def test_folder_content_id_is_the_blake3_of_its_domain_tag() -> None:
    assert FOLDER_CONTENT == blake3.blake3(b"smartsync-folder-v1\n").hexdigest()
    assert is_folder(FOLDER_CONTENT) and not is_folder(None) and not is_folder(cid(1))


def test_a_folder_entry_is_a_put_without_content_and_clashes_like_a_file() -> None:
    head = MemoryHead()
    assert commit(head, [folder_put("Tax"), folder_put("Audit/Planning")]) == ["applied", "applied"]
    assert head.files["Tax"].content == FOLDER_CONTENT
    # same entry again: unchanged, whatever the base (two copies made the same template)
    assert commit(head, [folder_put("Tax")]) == ["unchanged"]
    with pytest.raises(PathClash):
        commit(head, [folder_put("TAX")])  # one spelling per folder
    with pytest.raises(PathClash):
        commit(head, [file_put("tax")])  # a file clashes with it as with a file
    with pytest.raises(PathClash):
        commit(head, [file_put("AUDIT/x.txt")])  # its folders keep their spelling too
    with pytest.raises(BadRequest):
        commit(head, [ProposedChange("Other", "put", None, FOLDER_CONTENT, 3)])


def test_files_and_folders_go_inside_a_folder_entry_which_stays() -> None:
    head = MemoryHead()
    commit(head, [folder_put("Tax")])
    assert commit(head, [file_put("Tax/a.xlsx"), folder_put("Tax/Sub")]) == ["applied", "applied"]
    a_seq = head.files["Tax/a.xlsx"].seq
    # the file leaves again: the entry is still the folder
    assert commit(head, [ProposedChange("Tax/a.xlsx", "delete", a_seq)]) == ["applied"]
    assert head.files["Tax"].content == FOLDER_CONTENT


def test_a_folder_entry_may_name_a_folder_that_holds_files_in_its_spelling() -> None:
    head = MemoryHead([FileState("Tax/a.xlsx", 1, cid(1), 10)])
    assert commit(head, [folder_put("Tax")]) == ["applied"]
    with pytest.raises(PathClash):
        commit(head, [folder_put("TAX/a.xlsx/x")])


def test_a_new_file_at_a_folder_entry_path_is_a_conflict_copy_and_vice_versa() -> None:
    head = MemoryHead()
    commit(head, [folder_put("Memo")])
    outcomes = plan_commit([file_put("Memo")], head, "bob", T)
    assert outcomes[0].status == "conflict" and outcomes[0].write_path != "Memo"
    head2 = MemoryHead([FileState("Memo", 1, cid(1), 10)])
    outcomes = plan_commit([folder_put("Memo")], head2, "bob", T)
    assert outcomes[0].status == "conflict"
    assert outcomes[0].content == FOLDER_CONTENT


def test_deleting_a_folder_entry_deletes_nothing_inside() -> None:
    head = MemoryHead()
    commit(head, [folder_put("Tax")])
    entry = head.files["Tax"].seq
    commit(head, [file_put("Tax/added.txt")])  # another copy adds a file meanwhile
    assert commit(head, [ProposedChange("Tax", "delete", entry)]) == ["applied"]
    assert head.files["Tax"].content is None
    assert head.files["Tax/added.txt"].content == cid(1)


def test_case_only_rename_of_an_empty_folder_is_one_batch() -> None:
    head = MemoryHead()
    commit(head, [folder_put("Lead")])
    seq = head.files["Lead"].seq
    assert commit(head, [ProposedChange("Lead", "delete", seq), folder_put("LEAD")]) == [
        "applied", "applied",
    ]
    assert head.live().keys() == {"LEAD"}


def change(seq: int, path: str, content: str | None) -> Change:
    kind = "delete" if content is None else "put"
    size = 0 if content is None or is_folder(content) else 1
    return Change(seq, path, kind, content, size, None, "bob", None, T)


def test_planner_pushes_new_and_removed_folder_entries() -> None:
    base = {"Old": BaseEntry(3, FOLDER_CONTENT, 0), "Kept": BaseEntry(4, FOLDER_CONTENT, 0)}
    local = {"New": FOLDER, "Kept": FOLDER}
    p = plan(local, base, [])
    assert p.push_puts == [PushPut("New", None, FOLDER_CONTENT, 0)]
    assert p.push_deletes == [PushDelete("Old", 3)]


def test_planner_pulls_folder_entries_and_adopts_one_made_here_too() -> None:
    remote = [change(5, "Tax", FOLDER_CONTENT), change(6, "Audit", FOLDER_CONTENT)]
    p = plan({"Audit": FOLDER}, {}, remote)
    assert p.pull_writes == [PullWrite("Tax", 5, FOLDER_CONTENT, 0, None)]
    assert [a.path for a in p.adopt] == ["Audit"]


def test_a_local_file_where_a_folder_entry_arrives_is_a_conflict() -> None:
    p = plan({"Memo": LocalEntry(cid(1), 3)}, {}, [change(5, "Memo", FOLDER_CONTENT)])
    assert [c.path for c in p.conflicts] == ["Memo"] and not p.pull_writes


def test_case_rename_of_an_empty_folder_applies_in_place() -> None:
    base = {"Lead": BaseEntry(3, FOLDER_CONTENT, 0)}
    remote = [change(4, "Lead", None), change(5, "LEAD", FOLDER_CONTENT)]
    p = plan({"Lead": FOLDER}, base, remote, case_insensitive=True)
    assert [(r.old, r.new, r.seq) for r in p.renames] == [("Lead", "LEAD", 5)]
    assert not p.pull_deletes and not p.pull_writes


def test_ignore_rules_apply_to_folder_entries_as_folders() -> None:
    rules = IgnoreRules.parse("drafts/\n")
    base = {"drafts": BaseEntry(3, FOLDER_CONTENT, 0)}  # synced before the rule
    remote = [change(5, "a/drafts", FOLDER_CONTENT)]
    # the walk skips the ignored folder, so it is not in ``local``: never a delete
    p = plan({}, base, remote, ignored=rules.ignores)
    assert p.push_empty and p.pull_empty
    p = plan({"drafts": FOLDER, "New": FOLDER}, {}, [], ignored=rules.ignores)
    assert [x.path for x in p.push_puts] == ["New"] and p.ignored == ["drafts"]


# -- property: a folder delete never removes a file -----------------------------------------

NAMES = st.sampled_from(["A", "A/x.txt", "A/B", "A/B/y.txt", "C", "C/z.txt"])
CONTENTS = st.sampled_from([FOLDER_CONTENT, cid(1), cid(2)])


@settings(max_examples=400, deadline=None)
@given(
    local=st.dictionaries(NAMES, CONTENTS, max_size=6),
    base=st.dictionaries(NAMES, CONTENTS, max_size=6),
    remote=st.lists(st.tuples(NAMES, st.one_of(st.none(), CONTENTS)), max_size=8),
    complete=st.booleans(),
)
def test_no_folder_delete_ever_removes_a_file(
    local: dict[str, str], base: dict[str, str], remote: list[tuple[str, str | None]], complete: bool,
) -> None:
    changes = [change(100 + i, path, content) for i, (path, content) in enumerate(remote)]
    p = plan(
        {k: LocalEntry(v, 0 if is_folder(v) else 1) for k, v in local.items()},
        {k: BaseEntry(10, v, 0 if is_folder(v) else 1) for k, v in base.items()},
        changes, complete=complete,
    )
    newest = {c.path: c for c in changes}  # in seq order: the last one wins
    for d in p.pull_deletes:
        # a delete here is only ever of the path the server deleted, as synced here
        assert newest[d.path].kind == "delete"
        assert local[d.path] == base[d.path]
        # a folder-entry delete touches that path only: every file in it is another path
        if is_folder(base[d.path]):
            inside = [q for q in local if q.startswith(d.path + "/")]
            assert all(q not in {x.path for x in p.pull_deletes} or newest[q].kind == "delete"
                       for q in inside)
    for path in p.forget:
        assert path not in local or path in base  # never drops a row of an unsynced file
    # a local file the server did not delete at its own path is never planned away
    deleted = {d.path for d in p.pull_deletes}
    for path, content in local.items():
        if not is_folder(content) and path in deleted:
            assert newest[path].kind == "delete" and base.get(path) == content
