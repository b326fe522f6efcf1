"""Commit rules: every decision of plan_commit, driven through MemoryHead."""

from __future__ import annotations

from datetime import UTC, datetime

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.commit_rules import MemoryHead, plan_commit, validate_batch
from smartsyncd.core.errors import BadRequest, InvalidPath, PathClash
from smartsyncd.core.model import FileState, Outcome, ProposedChange
from smartsyncd.core.paths import fold_key, normalize_path

NOW = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)


def cid(n: int) -> str:
    return blake3.blake3(b"content %d" % n).hexdigest()


def put(path: str, base: int | None, n: int, size: int = 10) -> ProposedChange:
    return ProposedChange(path=path, kind="put", base=base, content=cid(n), size=size)


def delete(path: str, base: int | None) -> ProposedChange:
    return ProposedChange(path=path, kind="delete", base=base)


def head_with(*files: tuple[str, int, int | None]) -> MemoryHead:
    return MemoryHead(
        [
            FileState(p, seq, None if n is None else cid(n), 0 if n is None else 10)
            for p, seq, n in files
        ]
    )


def commit(head: MemoryHead, proposals: list[ProposedChange], user: str = "alice") -> list[Outcome]:
    outcomes = plan_commit(proposals, head, user, NOW)
    assert [o.path for o in outcomes] == [normalize_path(p.path) for p in proposals]
    head.apply(outcomes)
    return outcomes


CONFLICT = " (conflict alice 2026-11-26 1530)"


# ---------------------------------------------------------------- puts


def test_new_file_applied() -> None:
    head = MemoryHead()
    [o] = commit(head, [put("a/b.txt", None, 1)])
    assert (o.status, o.write_path, o.prev_seq, o.content) == ("applied", "a/b.txt", None, cid(1))
    assert head.state("a/b.txt") == FileState("a/b.txt", 1, cid(1), 10)


def test_edit_with_current_base_applied() -> None:
    head = head_with(("x.txt", 4, 1))
    [o] = commit(head, [put("x.txt", 4, 2)])
    assert (o.status, o.write_path, o.prev_seq) == ("applied", "x.txt", 4)
    assert head.state("x.txt").content == cid(2)  # type: ignore[union-attr]


def test_same_content_is_unchanged_whatever_base() -> None:
    head = head_with(("x.txt", 4, 1))
    for base in (4, 2, None):
        [o] = commit(head, [put("x.txt", base, 1)])
        assert (o.status, o.write_path, o.current_seq) == ("unchanged", None, 4)
    assert head.head == 4


def test_same_edit_on_two_copies() -> None:
    head = head_with(("x.txt", 4, 1))
    [first] = commit(head, [put("x.txt", 4, 2)], user="alice")
    [second] = commit(head, [put("x.txt", 4, 2)], user="bob")
    assert first.status == "applied"
    assert (second.status, second.current_seq) == ("unchanged", 5)


def test_stale_edit_becomes_conflict_copy() -> None:
    head = head_with(("d/x.txt", 4, 1))
    commit(head, [put("d/x.txt", 4, 2)], user="bob")  # seq 5
    [o] = commit(head, [put("d/x.txt", 4, 3)])
    assert o.status == "conflict"
    assert o.write_path == f"d/x{CONFLICT}.txt"
    assert o.prev_seq is None
    assert head.state("d/x.txt").content == cid(2)  # type: ignore[union-attr]
    assert head.state(o.write_path).content == cid(3)  # type: ignore[union-attr]


def test_new_file_onto_live_file_is_conflict() -> None:
    head = head_with(("x.txt", 4, 1))
    [o] = commit(head, [put("x.txt", None, 2)])
    assert (o.status, o.write_path) == ("conflict", f"x{CONFLICT}.txt")


def test_conflict_names_unique_within_batch_and_head() -> None:
    head = head_with(
        ("a.txt", 1, 1),
        ("b/a.txt", 2, 1),
        (f"a{CONFLICT}.txt", 3, 9),  # taken by a live file
        (f"b/a{CONFLICT}.txt", 4, None),  # a tombstone there: also avoided
    )
    outcomes = commit(
        head,
        [
            put("a.txt", None, 5),
            put("b/a.txt", None, 6),
            put(f"A{CONFLICT[:-1]} 2).txt", None, 7),  # a new file the first copy must not take
        ],
    )
    assert [o.status for o in outcomes] == ["conflict", "conflict", "applied"]
    assert outcomes[0].write_path == f"a{CONFLICT[:-1]} 3).txt"
    assert outcomes[1].write_path == f"b/a{CONFLICT[:-1]} 2).txt"
    assert len({o.write_path for o in outcomes}) == 3


def test_two_conflicts_in_one_batch_get_distinct_names() -> None:
    head = head_with(("Report.docx", 3, 1), ("report (conflict alice 2026-11-26 1530).docx", 4, 2))
    [o] = commit(head, [put("Report.docx", 1, 3)])
    # the live conflict copy differs only in case: still taken
    assert o.write_path == "Report (conflict alice 2026-11-26 1530 2).docx"


# ---------------------------------------------------------------- edit vs delete


def test_edit_after_delete_is_applied() -> None:
    head = head_with(("x.txt", 4, 1))
    [d] = commit(head, [delete("x.txt", 4)], user="bob")
    assert (d.status, d.prev_seq) == ("applied", 4)
    [o] = commit(head, [put("x.txt", 4, 2)])
    assert (o.status, o.write_path, o.prev_seq) == ("applied", "x.txt", 5)
    assert head.state("x.txt") == FileState("x.txt", 6, cid(2), 10)


def test_delete_after_edit_is_stale() -> None:
    head = head_with(("x.txt", 4, 1))
    commit(head, [put("x.txt", 4, 2)], user="bob")
    [d] = commit(head, [delete("x.txt", 4)])
    assert (d.status, d.write_path, d.current_seq) == ("stale", None, 5)
    assert head.state("x.txt").content == cid(2)  # type: ignore[union-attr]


def test_delete_of_tombstone_or_unseen_is_unchanged() -> None:
    head = head_with(("gone.txt", 7, None))
    a, b = commit(head, [delete("gone.txt", 3), delete("never.txt", 1)])
    assert (a.status, a.current_seq, a.write_path) == ("unchanged", 7, None)
    assert (b.status, b.current_seq, b.write_path) == ("unchanged", None, None)
    assert head.head == 7


def test_put_of_new_file_over_tombstone_keeps_prev_seq() -> None:
    head = head_with(("gone.txt", 7, None))
    [o] = commit(head, [put("gone.txt", None, 3)])
    assert (o.status, o.prev_seq) == ("applied", 7)


# ---------------------------------------------------------------- names and clashes


def test_case_twin_refused() -> None:
    head = head_with(("Dir/Report.docx", 1, 1))
    with pytest.raises(PathClash) as info:
        plan_commit([put("Dir/report.DOCX", None, 2)], head, "alice", NOW)
    assert info.value.details == {"path": "Dir/report.DOCX", "existing": "Dir/Report.docx"}
    assert info.value.status == 409


def test_nfd_twin_is_the_same_path() -> None:
    head = head_with(("Caf\u00e9.txt", 1, 1))
    [o] = commit(head, [put("Cafe\u0301.txt", 1, 2)])
    assert (o.status, o.write_path) == ("applied", "Caf\u00e9.txt")


def test_case_only_rename_allowed() -> None:
    head = head_with(("d/a.txt", 3, 1))
    d, p = commit(head, [delete("d/a.txt", 3), put("d/A.txt", None, 1)])
    assert (d.status, p.status) == ("applied", "applied")
    assert head.live_path_with_key("d/a.txt") == "d/A.txt"
    assert sorted(head.live()) == ["d/A.txt"]


def test_case_only_rename_over_a_newer_edit_keeps_both() -> None:
    head = head_with(("a.txt", 3, 1))
    commit(head, [put("a.txt", 3, 2)], user="bob")  # seq 4
    d, p = commit(head, [delete("a.txt", 3), put("A.txt", None, 1)])
    assert d.status == "stale"
    assert (p.status, p.write_path) == ("conflict", f"A{CONFLICT}.txt")
    assert sorted(head.live()) == [f"A{CONFLICT}.txt", "a.txt"]


def test_rename_in_wrong_order_refused() -> None:
    head = head_with(("a.txt", 3, 1))
    with pytest.raises(BadRequest, match="more than once"):
        plan_commit([put("A.txt", None, 1), delete("a.txt", 3)], head, "alice", NOW)


def test_folder_spelled_differently_refused() -> None:
    head = head_with(("Clients/Acme/tb.xlsx", 1, 1))
    with pytest.raises(PathClash) as info:
        plan_commit([put("clients/Acme/new.xlsx", None, 2)], head, "alice", NOW)
    assert info.value.details["existing"] == "Clients"
    with pytest.raises(PathClash) as info:
        plan_commit([put("Clients/ACME/new.xlsx", None, 2)], head, "alice", NOW)
    assert info.value.details["existing"] == "Clients/Acme"
    [o] = commit(head, [put("Clients/Acme/new.xlsx", None, 2)])
    assert o.status == "applied"


def test_folder_spelling_within_one_batch() -> None:
    with pytest.raises(PathClash):
        plan_commit([put("New/a.txt", None, 1), put("NEW/b.txt", None, 2)], MemoryHead(), "a", NOW)


def test_folder_respelled_in_case_with_all_its_files() -> None:
    # a folder's case-only rename (Q1 -> q1) is a rename of every file in it: the new spelling
    # must not clash with the old one the same batch empties (issue 16)
    head = head_with(("Q1/x.txt", 1, 1), ("Q1/sub/y.txt", 2, 2), ("top.txt", 3, 3))
    outcomes = commit(
        head,
        [
            delete("Q1/x.txt", 1), delete("Q1/sub/y.txt", 2),
            put("q1/x.txt", None, 1), put("q1/sub/y.txt", None, 2),
        ],
    )
    assert [o.status for o in outcomes] == ["applied"] * 4
    assert sorted(head.live()) == ["q1/sub/y.txt", "q1/x.txt", "top.txt"]
    assert head.folder_spelling("q1") == "q1"


def test_folder_respelled_while_a_file_stays_in_the_old_spelling_refused() -> None:
    head = head_with(("Q1/x.txt", 1, 1), ("Q1/y.txt", 2, 2))
    with pytest.raises(PathClash) as info:
        plan_commit([delete("Q1/x.txt", 1), put("q1/x.txt", None, 1)], head, "alice", NOW)
    assert info.value.details["existing"] == "Q1"
    # the same folder re-spelled twice in one batch is refused too
    with pytest.raises(PathClash):
        plan_commit(
            [
                delete("Q1/x.txt", 1), delete("Q1/y.txt", 2),
                put("q1/x.txt", None, 1), put("Q1/z.txt", None, 2),
            ],
            head, "alice", NOW,
        )


def test_folder_respelled_over_an_edit_keeps_one_spelling() -> None:
    # bob edited Q1/x.txt after alice's copy renamed Q1 to q1: her delete of Q1/x.txt is
    # stale, so Q1 keeps a live file and the re-spelling cannot apply; the refusal names the
    # folder (the client holds the rename back) rather than a conflict copy under "q1" that
    # would leave the server with two spellings of one folder
    head = head_with(("Q1/x.txt", 1, 1), ("Q1/y.txt", 2, 2))
    commit(head, [put("Q1/x.txt", 1, 5)], user="bob")  # seq 3
    with pytest.raises(PathClash) as info:
        plan_commit(
            [
                delete("Q1/x.txt", 1), delete("Q1/y.txt", 2),
                put("q1/x.txt", None, 1), put("q1/y.txt", None, 2),
            ],
            head, "alice", NOW,
        )
    assert info.value.details["existing"] == "Q1"
    # one file alone re-spelled over the edit: its conflict copy goes in the live spelling
    d, p = commit(head, [delete("Q1/x.txt", 1), put("q1/x.txt", None, 1)])
    assert d.status == "stale"
    assert (p.status, p.write_path) == ("conflict", f"Q1/x{CONFLICT}.txt")
    assert {anc.split("/")[0] for anc in head.live()} == {"Q1"}


def test_file_where_folder_is_and_folder_where_file_is() -> None:
    head = head_with(("a/b.txt", 1, 1), ("f", 2, 1))
    with pytest.raises(PathClash, match="existing folder") as info:
        plan_commit([put("A", None, 2)], head, "alice", NOW)
    assert info.value.details["existing"] == "a"
    with pytest.raises(PathClash, match="existing file") as info:
        plan_commit([put("F/x.txt", None, 2)], head, "alice", NOW)
    assert info.value.details["existing"] == "f"
    with pytest.raises(PathClash):
        plan_commit([put("g", None, 1), put("g/x", None, 2)], MemoryHead(), "a", NOW)
    with pytest.raises(PathClash):
        plan_commit([put("g/x", None, 1), put("g", None, 2)], MemoryHead(), "a", NOW)


def test_deleted_file_frees_its_name_for_a_folder() -> None:
    head = head_with(("f", 2, 1))
    d, p = commit(head, [delete("f", 2), put("f/x.txt", None, 3)])
    assert (d.status, p.status) == ("applied", "applied")


# ---------------------------------------------------------------- refusals apply nothing


def test_invalid_path_names_it() -> None:
    head = head_with(("x.txt", 1, 1))
    with pytest.raises(InvalidPath) as info:
        plan_commit([put("x.txt", 1, 2), put("a/../b", None, 3)], head, "alice", NOW)
    assert info.value.details["path"] == "a/../b"


@pytest.mark.parametrize(
    ("proposals", "word"),
    [
        ([put("a", None, 1), put("a", None, 2)], "more than once"),
        ([put("a", None, 1), put("A", None, 2)], "more than once"),
        ([delete("a", 1), delete("A", 1)], "more than once"),
        ([delete("a", None)], "base"),
        ([ProposedChange("a", "put", None, None, 1)], "content"),
        ([ProposedChange("a", "put", None, "AB" * 32, 1)], "content"),
        ([ProposedChange("a", "put", None, cid(1), -1)], "size"),
        ([ProposedChange("a", "move", None, cid(1), 1)], "kind"),  # type: ignore[arg-type]
        ([ProposedChange("a", "put", "3", cid(1), 1)], "base"),  # type: ignore[arg-type]
        ([ProposedChange("a", "put", True, cid(1), 1)], "base"),
    ],
)
def test_malformed_batch_refused(proposals: list[ProposedChange], word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        plan_commit(proposals, MemoryHead(), "alice", NOW)


def test_validated_paths_are_planned_as_given() -> None:
    proposals = [put("Caf\u0065\u0301/a.txt", None, 1), put("b.txt", None, 2)]
    paths = validate_batch(proposals)
    assert paths == ["Caf\u00e9/a.txt", "b.txt"]  # NFC, checked once
    assert plan_commit(proposals, MemoryHead(), "alice", NOW, paths=paths) == plan_commit(
        proposals, MemoryHead(), "alice", NOW
    )
    with pytest.raises(ValueError):  # paths of another batch
        plan_commit(proposals, MemoryHead(), "alice", NOW, paths=paths[:1])


def test_too_many_changes_refused() -> None:
    proposals = [put(f"f{i}", None, i) for i in range(11)]
    with pytest.raises(BadRequest, match="at most 10"):
        plan_commit(proposals, MemoryHead(), "alice", NOW, max_changes=10)
    assert len(plan_commit(proposals[:10], MemoryHead(), "alice", NOW, max_changes=10)) == 10


def test_outcomes_keep_proposal_order() -> None:
    head = head_with(("a", 1, 1), ("b", 2, 1), ("c", 3, 1))
    outcomes = commit(
        head, [put("c", 3, 5), delete("a", 1), put("new", None, 1), put("b", 1, 9), delete("b2", 1)]
    )
    assert [o.status for o in outcomes] == [
        "applied",
        "applied",
        "applied",
        "conflict",
        "unchanged",
    ]
    assert head.apply([]) == []
    assert head.head == 7


# ---------------------------------------------------------------- randomized: nothing is lost

_PATHS = ["a.txt", "A.txt", "d/x", "D/x", "d", "e/f/g"]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_batches_lose_nothing(data: st.DataObject) -> None:
    head = MemoryHead()
    known: list[dict[str, int]] = [{}, {}, {}]  # each copy's base per path
    content_no = 0
    for _ in range(data.draw(st.integers(1, 12))):
        copy = data.draw(st.integers(0, 2))
        if data.draw(st.booleans()):  # pull: the copy learns the head
            known[copy] = {p: s.seq for p, s in head.files.items()}
        proposals: list[ProposedChange] = []
        for path in data.draw(st.lists(st.sampled_from(_PATHS), max_size=3, unique=True)):
            base = known[copy].get(path)
            if base is not None and data.draw(st.booleans()):
                proposals.append(delete(path, base))
            else:
                content_no += 1
                proposals.append(put(path, base, content_no % 4))
        before = dict(head.files)
        try:
            outcomes = plan_commit(proposals, head, f"user{copy}", NOW)
        except (PathClash, BadRequest) as refused:
            assert head.files == before
            with pytest.raises(type(refused)):  # storage's way: validated first, then planned
                plan_commit(proposals, head, f"user{copy}", NOW, paths=validate_batch(proposals))
            continue
        assert plan_commit(proposals, head, f"user{copy}", NOW, paths=validate_batch(proposals)) == outcomes
        for p, o in zip(proposals, outcomes, strict=True):
            replaced = before.get(o.write_path) if o.write_path else None
            if replaced is not None and replaced.content is not None:
                # a live version is only replaced by someone who had seen it
                assert o.status == "applied" and p.base == replaced.seq
            if o.kind == "put" and o.status != "unchanged":
                assert o.write_path is not None
        seqs = head.apply(outcomes)
        for o, seq in zip(outcomes, seqs, strict=True):
            if o.write_path is not None and seq is not None:
                known[copy][o.write_path] = seq
            if o.kind == "put":
                # whatever the status, the proposed content is live somewhere afterwards
                assert any(s.content == o.content for s in head.live().values())
        keys = [fold_key(p) for p in head.live()]
        assert len(keys) == len(set(keys)), "case twins among live files"
