"""Conflict copy names: format, UTC, numbering, sanitizing and length limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartsyncd.core.conflicts import conflict_name
from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.paths import MAX_SEGMENT_BYTES, name_of, normalize_path

WHEN = datetime(2026, 11, 26, 15, 30, 12, tzinfo=UTC)


def free(_: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("New.docx", "New (conflict alice 2026-11-26 1530).docx"),
        ("a/b/Cash.xlsx", "a/b/Cash (conflict alice 2026-11-26 1530).xlsx"),
        ("a.tar.gz", "a.tar (conflict alice 2026-11-26 1530).gz"),
        (".profile", ".profile (conflict alice 2026-11-26 1530)"),
        ("dir/noext", "dir/noext (conflict alice 2026-11-26 1530)"),
        ("v1.2/notes", "v1.2/notes (conflict alice 2026-11-26 1530)"),
    ],
)
def test_format(path: str, expected: str) -> None:
    assert conflict_name(path, "alice", WHEN, free) == expected


def test_time_is_shown_in_utc() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=-5)))
    assert local.hour == 10
    assert conflict_name("x.txt", "bob", local, free) == "x (conflict bob 2026-11-26 1530).txt"
    with pytest.raises(ValueError):
        conflict_name("x.txt", "bob", datetime(2026, 1, 1), free)


def test_taken_names_get_numbers() -> None:
    used = {
        "d/x (conflict bob 2026-11-26 1530).txt",
        "d/x (conflict bob 2026-11-26 1530 2).txt",
    }
    seen: list[str] = []

    def taken(candidate: str) -> bool:
        seen.append(candidate)
        return candidate in used

    assert (
        conflict_name("d/x.txt", "bob", WHEN, taken) == "d/x (conflict bob 2026-11-26 1530 3).txt"
    )
    assert seen[0] == "d/x (conflict bob 2026-11-26 1530).txt"
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        ("DOMAIN\\jane", "DOMAIN_jane"),
        ("a/b", "a_b"),
        ('x:*?"<>|y', "x_______y"),
        ("tab\tuser", "tab_user"),
        ("", "_"),
        ("Ze\u0301lie", "Z\u00e9lie"),
    ],
)
def test_user_is_sanitized(user: str, shown: str) -> None:
    name = conflict_name("f.txt", user, WHEN, free)
    assert name == f"f (conflict {shown} 2026-11-26 1530).txt"
    assert normalize_path(name) == name


def test_long_names_are_shortened_to_fit() -> None:
    stem = "\u00e9" * 120  # 240 bytes: the segment is at the limit with ".pdf"
    path = f"folder/{stem}.pdf"
    assert normalize_path(path) == path
    name = conflict_name(path, "carol", WHEN, free)
    assert normalize_path(name) == name
    assert len(name_of(name).encode()) <= MAX_SEGMENT_BYTES
    assert name.endswith(" (conflict carol 2026-11-26 1530).pdf")
    assert name.startswith("folder/\u00e9\u00e9")


def test_pathological_extension_is_folded_into_the_stem() -> None:
    path = "a." + "x" * 250
    name = conflict_name(path, "dave", WHEN, free)
    assert normalize_path(name) == name
    assert name.endswith(" (conflict dave 2026-11-26 1530)")


def test_long_user_name_is_capped() -> None:
    name = conflict_name("f.txt", "u" * 1000, WHEN, free)
    assert normalize_path(name) == name


def test_no_room_in_path_is_refused_not_wrong() -> None:
    folder = "/".join(["d" * 250] * 16 + ["e" * 64])  # 4080 bytes of folders
    path = normalize_path(folder + "/x.txt")
    with pytest.raises(InvalidPath, match="4096"):
        conflict_name(path, "erin", WHEN, free)


_names = st.text(min_size=1, max_size=120).filter(lambda s: "/" not in s)


@given(_names, st.text(max_size=40), st.integers(0, 3))
def test_result_is_always_a_valid_path(name: str, user: str, n_taken: int) -> None:
    try:
        path = normalize_path("dir/" + name)
    except InvalidPath:
        return
    results: list[str] = []
    for _ in range(n_taken + 1):
        results.append(conflict_name(path, user, WHEN, lambda c: c in results))
    assert len(set(results)) == len(results)
    for result in results:
        assert normalize_path(result) == result
        assert result.startswith("dir/")
        assert result != path
