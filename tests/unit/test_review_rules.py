"""The review queue's pure rules (core/review.py): what each choice commits, and the refusals
of a stale or already resolved item."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smartsyncd.core.conflicts import conflict_name, conflict_origin
from smartsyncd.core.errors import BadRequest, ConflictResolved, ConflictStale
from smartsyncd.core.model import FileState, ProposedChange
from smartsyncd.core.review import (
    ConflictItem,
    Version,
    check_choice,
    resolution_changes,
    resolve_digest,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
THEIRS, OURS, MERGE = "a" * 64, "b" * 64, "c" * 64
COPY = "WP/cash (conflict bob 2026-12-01 0900).xlsx"


def item(**kw: object) -> ConflictItem:
    fields: dict[str, object] = dict(
        id=7, path="WP/cash.xlsx", copy_path=COPY,
        theirs=Version(6, "alice", THEIRS, 10), ours=Version(7, "bob", OURS, 11), created_at=T0,
    )
    fields.update(kw)
    return ConflictItem(**fields)  # type: ignore[arg-type]


FILE = FileState("WP/cash.xlsx", 6, THEIRS, 10)
COPY_STATE = FileState(COPY, 7, OURS, 11)


def test_ours_puts_the_copy_content_over_the_file_and_deletes_the_copy() -> None:
    changes = resolution_changes(item(), "ours", FILE, COPY_STATE, 6, 7)
    assert changes == [
        ProposedChange("WP/cash.xlsx", "put", 6, OURS, 11),
        ProposedChange(COPY, "delete", 7),
    ]


def test_theirs_only_deletes_the_copy() -> None:
    assert resolution_changes(item(), "theirs", FILE, COPY_STATE, 6, 7) == [
        ProposedChange(COPY, "delete", 7)
    ]


def test_merged_puts_the_merge_and_deletes_the_copy() -> None:
    changes = resolution_changes(item(), "merged", FILE, COPY_STATE, 6, 7, merged=(MERGE, 30))
    assert changes == [
        ProposedChange("WP/cash.xlsx", "put", 6, MERGE, 30),
        ProposedChange(COPY, "delete", 7),
    ]


def test_a_copy_deleted_meanwhile_is_not_deleted_again_and_cannot_be_chosen() -> None:
    gone = FileState(COPY, 9, None, 0)
    assert resolution_changes(item(), "theirs", FILE, gone, 6, 9) == []
    with pytest.raises(ConflictStale):
        resolution_changes(item(), "ours", FILE, gone, 6, 9)


def test_a_file_edited_since_the_reviewer_looked_is_stale() -> None:
    newer = FileState("WP/cash.xlsx", 12, "d" * 64, 5)
    with pytest.raises(ConflictStale) as refused:
        resolution_changes(item(), "ours", newer, COPY_STATE, 6, 7)
    assert refused.value.status == 409
    assert refused.value.details["path_seq"] == 12 and refused.value.details["copy_seq"] == 7
    # naming the versions now decides against them
    assert resolution_changes(item(), "ours", newer, COPY_STATE, 12, 7)[0].base == 12


def test_an_edited_copy_is_stale_until_listed_again() -> None:
    edited = FileState(COPY, 15, "e" * 64, 3)
    with pytest.raises(ConflictStale):
        resolution_changes(item(), "theirs", FILE, edited, 6, 7)
    assert resolution_changes(item(), "ours", FILE, edited, 6, 15)[0].content == "e" * 64


def test_a_resolved_item_is_refused() -> None:
    done = item(resolved_at=T0, resolved_by="rita", resolution="theirs", resolved_seq=9)
    with pytest.raises(ConflictResolved) as refused:
        resolution_changes(done, "ours", FILE, COPY_STATE, 6, 7)
    assert refused.value.status == 409 and refused.value.details["resolved_by"] == "rita"


def test_a_merge_goes_with_merged_only() -> None:
    with pytest.raises(BadRequest):
        resolution_changes(item(), "merged", FILE, COPY_STATE, 6, 7)
    with pytest.raises(BadRequest):
        resolution_changes(item(), "ours", FILE, COPY_STATE, 6, 7, merged=(MERGE, 1))


def test_choice_is_checked_and_digests_differ_per_request() -> None:
    assert check_choice("theirs") == "theirs"
    for bad in ("mine", None, 1, ["ours"]):
        with pytest.raises(BadRequest):
            check_choice(bad)
    assert resolve_digest(7, "ours", None) != resolve_digest(7, "theirs", None)
    assert resolve_digest(7, "merged", (MERGE, 1)) != resolve_digest(8, "merged", (MERGE, 1))


def test_who_an_item_involves() -> None:
    assert item().involves("alice") and item().involves("bob")
    assert not item().involves("carol")


@pytest.mark.parametrize(
    "path",
    ["WP/cash.xlsx", "noext", ".profile", "a/b/Memo v2.final.docx", "Ü/naïve résumé.txt"],
)
def test_a_conflict_copy_name_reads_back_to_its_file(path: str) -> None:
    first = conflict_name(path, "bob smith", T0, lambda p: False)
    assert conflict_origin(first) == path
    taken = conflict_name(path, "bob", T0, lambda p: False)
    second = conflict_name(path, "bob", T0, lambda p: p == taken)
    assert " 0900 2)" in second and conflict_origin(second) == path
    # a copy of a copy points at the copy it was made beside
    assert conflict_origin(conflict_name(first, "carol", T0, lambda p: False)) == first


def test_other_names_have_no_origin() -> None:
    for path in ("WP/cash.xlsx", "notes (conflict).txt", "x (conflict bob 2026-12-01).txt",
                 "x (conflict  2026-12-01 0900 y).txt"):
        assert conflict_origin(path) is None, path
