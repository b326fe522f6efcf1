"""The engagement content root (core/contentroot.py): the documented encoding, order
independence, any change changes the root, and the listing comparison."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.contentroot import (
    EMPTY_DOMAIN,
    Difference,
    RootStatement,
    classify,
    compare,
    content_root,
    leaf_hash,
    statement_bytes,
)

SEGMENT = st.text(
    alphabet=st.sampled_from("abcXYZ019_-é日ß"), min_size=1, max_size=6
).filter(lambda s: not s.startswith("~"))
PATH = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
CONTENT = st.binary(min_size=32, max_size=32).map(bytes.hex)
FILES = st.dictionaries(PATH, CONTENT, max_size=40)


def _rfc6962(leaves: list[bytes]) -> bytes:
    """The reference shape: split at the largest power of two below the count."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    left, right = _rfc6962(leaves[:k]), _rfc6962(leaves[k:])
    return blake3.blake3(b"smartsync-root-node-v1\n" + left + right).digest()


def test_documented_encoding() -> None:
    content = "ab" * 32
    leaf = blake3.blake3(
        b"smartsync-root-leaf-v1\n" + (5).to_bytes(4, "big") + b"a.txt" + bytes.fromhex(content)
    ).digest()
    assert leaf_hash("a.txt", content) == leaf
    assert content_root([("a.txt", content)]) == leaf.hex()
    assert content_root([]) == blake3.blake3(EMPTY_DOMAIN).hexdigest()
    other = leaf_hash("b.txt", content)
    node = blake3.blake3(b"smartsync-root-node-v1\n" + leaf + other).digest()
    assert content_root([("b.txt", content), ("a.txt", content)]) == node.hex()


@given(FILES)
def test_tree_shape_is_rfc6962(files: dict[str, str]) -> None:
    items = sorted(files.items())
    if not items:
        return
    assert content_root(items) == _rfc6962([leaf_hash(p, c) for p, c in items]).hex()


@given(FILES, st.randoms(use_true_random=False))
def test_order_of_input_does_not_matter(files: dict[str, str], rnd) -> None:  # noqa: ANN001
    items = list(files.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)
    assert content_root(items) == content_root(shuffled)


@settings(max_examples=200)
@given(FILES, st.data())
def test_any_change_changes_the_root(files: dict[str, str], data: st.DataObject) -> None:
    before = content_root(files.items())
    changed = dict(files)
    action = data.draw(st.sampled_from(["add", "remove", "edit", "rename"] if files else ["add"]))
    if action == "add":
        path = data.draw(PATH.filter(lambda p: p not in files))
        changed[path] = data.draw(CONTENT)
    else:
        path = data.draw(st.sampled_from(sorted(files)))
        content = changed.pop(path)
        if action == "edit":
            changed[path] = data.draw(CONTENT.filter(lambda c: c != content))
        elif action == "rename":
            changed[data.draw(PATH.filter(lambda p: p not in files))] = content
    assert content_root(changed.items()) != before


def test_paths_are_not_split_ambiguously() -> None:
    # "ab" + id vs "a" + "b..." : the length prefix keeps leaves apart
    a = content_root([("ab", "cd" * 32)])
    b = content_root([("a", "bc" * 32)])
    assert a != b
    # a leaf is never a node: one file whose leaf equals a two-file root is impossible to forge
    two = content_root([("a", "00" * 32), ("b", "00" * 32)])
    assert two not in {leaf_hash("a", "00" * 32).hex(), leaf_hash("b", "00" * 32).hex()}


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ([("a", "00" * 32), ("a", "11" * 32)], "listed twice"),
        ([("e\u0301.txt", "00" * 32)], "normalized"),
        ([("a", "XYZ")], "64 lowercase hex"),
    ],
)
def test_bad_input_is_refused(files: list[tuple[str, str]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        content_root(files)


def test_bad_path_is_refused() -> None:
    with pytest.raises(Exception, match="absolute"):
        content_root([("/etc/passwd", "00" * 32)])


def test_statement_bytes_are_canonical() -> None:
    s = RootStatement("store-1", 2, "acme", 7, 3, "ab" * 32, "2026-12-05T12:00:00Z")
    assert statement_bytes(s) == (
        b"smartsync-root-statement-v1\n"
        b'{"engagement":"acme","files":3,"generation":2,"root":"' + b"ab" * 32
        + b'","seq":7,"signed_at":"2026-12-05T12:00:00Z","store":"store-1"}'
    )


@given(FILES, FILES)
def test_compare_finds_exactly_the_differences(local: dict[str, str], server: dict[str, str]) -> None:
    diffs = compare(local, sorted(server.items()))
    assert [d.path for d in diffs] == sorted(d.path for d in diffs)
    by_path = {d.path: d for d in diffs}
    for path in set(local) | set(server):
        if local.get(path) == server.get(path):
            assert path not in by_path
        else:
            d = by_path[path]
            assert (d.local, d.server) == (local.get(path), server.get(path))
    assert (not diffs) == (content_root(local.items()) == content_root(server.items()))


def test_classify_names_unsynced_work() -> None:
    a, b, c = "aa" * 32, "bb" * 32, "cc" * 32
    assert classify(Difference("p", "only_here", a, None), None) == "unsynced_new"
    assert classify(Difference("p", "only_here", a, None), a) == "local_only"
    assert classify(Difference("p", "only_here", a, None), b) == "unsynced_edit"
    assert classify(Difference("p", "only_on_server", None, a), a) == "unsynced_delete"
    assert classify(Difference("p", "only_on_server", None, a), None) == "server_only"
    assert classify(Difference("p", "only_on_server", None, a), None, ignored=True) == "ignored_here"
    assert classify(Difference("p", "different_content", a, b), a) == "server_differs"
    assert classify(Difference("p", "different_content", c, b), a) == "unsynced_edit"
