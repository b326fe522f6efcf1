"""Path rules of docs/protocol.md: a corpus of every rule, plus properties of accepted paths."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartsyncd.core.errors import InvalidPath
from smartsyncd.core.paths import (
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    RESERVED_TOP,
    ancestors,
    fold_key,
    name_of,
    normalize_path,
    parent_of,
)

# (path, a word the error message must contain)
REFUSED = [
    ("", "empty"),
    ("../etc/passwd", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("..", "'..'"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    (".", "'.'"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("C:/x", "drive letter"),
    ("c:x", "drive letter"),
    ("//server/share", "UNC"),
    ("a\\b", "backslash"),
    ("\\\\server\\share", "backslash"),
    ("a\x00b", "NUL"),
    ("a\x01b", "control"),
    ("a\nb", "control"),
    ("a\tb", "control"),
    ("a\x1fb", "control"),
    ("a\x7fb", "control"),
    ("a/b:c", "':'"),
    ("a*b", "'*'"),
    ("a?b", "'?'"),
    ('a"b', "'\"'"),
    ("a<b", "'<'"),
    ("a>b", "'>'"),
    ("a|b", "'|'"),
    ("con", "reserved"),
    ("CON", "reserved"),
    ("con.txt", "reserved"),
    ("dir/Lpt9", "reserved"),
    ("COM1.tar.gz", "reserved"),
    ("prn", "reserved"),
    ("Aux.doc", "reserved"),
    ("nul", "reserved"),
    ("x/NUL.txt/y", "reserved"),
    ("com9", "reserved"),
    ("lpt1", "reserved"),
    ("CON .txt", "reserved"),
    ("name.", "dot or space"),
    ("name ", "dot or space"),
    ("dir./x", "dot or space"),
    ("dir /x", "dot or space"),
    ("a" * (MAX_SEGMENT_BYTES + 1), "255"),
    ("\u00e9" * 128, "255"),  # 256 UTF-8 bytes in 128 characters
    ("/".join(["a" * 200] * 21), "4096"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    (".smartsync", "reserved"),
    (".smartsync/x", "reserved"),
    (".SmartSync/state.db", "reserved"),
    ("\ud800x", "surrogate"),
    ("CONIN$", "reserved"),
    ("conout$.txt", "reserved"),
    ("dir/CONOUT$", "reserved"),
    ("invoice\u202efdp.exe", "bidirectional"),
    ("a\u2066b", "bidirectional"),
    ("a\u200fb", "bidirectional"),
    ("a\u200db", "invisible"),
    ("a\u200bb", "invisible"),
    ("\ufeffreport.docx", "invisible"),
    ("soft\u00adhyphen", "invisible"),
    ("dir\u2060/x", "invisible"),
    ("PROGRA~1", "short name"),
    ("progra~1/x", "short name"),
    ("REPO~123.DOC", "short name"),
    ("a~1.b", "short name"),
    ("x/DOCUME~1.txt", "short name"),
]


@pytest.mark.parametrize(("path", "word"), REFUSED)
def test_refused_paths_name_the_rule(path: str, word: str) -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path(path)
    assert word in info.value.message
    # shown as sent, a lone surrogate escaped (it cannot travel as UTF-8)
    assert info.value.details["path"] == path.encode("utf-8", "backslashreplace").decode()
    assert info.value.to_json()["error"] == "invalid_path"


@pytest.mark.parametrize("value", [None, b"a.txt", 42, ["a"]])
def test_non_strings_refused(value: object) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(value)  # type: ignore[arg-type]


ACCEPTED = [
    "a.txt",
    "Working papers/B-1 Cash.xlsx",
    ".profile",
    "a/.smartsync/x",  # reserved only at the top
    ".smartsyncx",
    "console.txt",
    "COM10",
    "LPT0.txt",
    "CONX.txt",
    "x/com",
    "a" * MAX_SEGMENT_BYTES,
    "\u00e9" * 127,
    "/".join(["a" * 200] * 20),
    "a b/c d.e",
    "Spaß/Ünïcödé 日本語.docx",
    "...a",
    "console$.txt",
    "Draft~1.docx",  # a four-letter extension is no short name
    "~$report.docx",
    "backup~",
    "LONGERNAME~1",
    "a~b.txt",
    "\U0001f4c4 scan.pdf",
    "\u05e9\u05dc\u05d5\u05dd.txt",  # right-to-left letters themselves are fine
]


@pytest.mark.parametrize("path", ACCEPTED)
def test_accepted_paths_unchanged(path: str) -> None:
    assert normalize_path(path) == path


def test_exactly_max_path_bytes_accepted() -> None:
    path = "/".join(["a" * 250] * 16)
    path = path + "/" + "b" * (MAX_PATH_BYTES - len(path) - 1)
    assert len(path.encode()) == MAX_PATH_BYTES
    assert normalize_path(path) == path
    with pytest.raises(InvalidPath):
        normalize_path(path + "b")


def test_nfd_input_returned_as_nfc() -> None:
    nfd = "Cafe\u0301/Re\u0301sume\u0301.docx"
    out = normalize_path(nfd)
    assert out == "Caf\u00e9/R\u00e9sum\u00e9.docx"
    assert unicodedata.is_normalized("NFC", out)


def test_segment_limit_counts_nfc_bytes() -> None:
    # 127 NFD "é" are 381 bytes, but 254 bytes once composed: accepted.
    assert normalize_path("e\u0301" * 127) == "\u00e9" * 127


def test_fold_key_matches_case_and_normalization_twins() -> None:
    assert fold_key("Report.DOCX") == fold_key("report.docx")
    assert fold_key("Cafe\u0301") == fold_key("CAF\u00c9")
    assert fold_key("STRASSE") == fold_key("stra\u00dfe")
    assert fold_key("a/B") != fold_key("a/C")


def test_parent_name_ancestors() -> None:
    assert parent_of("a/b/c") == "a/b"
    assert parent_of("c") == ""
    assert name_of("a/b/c") == "c"
    assert name_of("c") == "c"
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert ancestors("c") == []


@given(st.text(min_size=1, max_size=80))
def test_accepted_paths_are_nfc_and_idempotent(path: str) -> None:
    try:
        out = normalize_path(path)
    except InvalidPath:
        return
    assert unicodedata.is_normalized("NFC", out)
    assert out == unicodedata.normalize("NFC", path)
    assert normalize_path(out) == out
    assert out.encode("utf-8").decode("utf-8") == out
    assert "/".join(ancestors(out) + [name_of(out)]).endswith(name_of(out))
    if parent_of(out):
        assert parent_of(out) + "/" + name_of(out) == out


_segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='/\\:*?"<>|'),
    min_size=1,
    max_size=20,
)


@given(st.lists(_segment, min_size=1, max_size=6))
def test_generated_segment_paths_round_trip(segments: list[str]) -> None:
    path = "/".join(segments)
    try:
        out = normalize_path(path)
    except InvalidPath as exc:
        # only the rules that plain characters can still break
        assert any(
            w in exc.message for w in ("dot or space", "reserved", "'.'", "'..'", "255", "drive",
            "invisible", "bidirectional", "short name")
        ), exc.message
        return
    assert out.split("/") == [unicodedata.normalize("NFC", s) for s in segments]
    assert normalize_path(out) == out
    assert RESERVED_TOP != fold_key(out.split("/")[0])
