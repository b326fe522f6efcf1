"""core.jsonscan: the depth pre-scan is exact on valid JSON, refuses what nests too deep, and
does bounded work per byte on any input (a deterministic count of bytes touched, no clock)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.errors import BadRequest
from smartsyncd.core.jsonscan import scan_depth
from smartsyncd.web.bodies import MAX_JSON_DEPTH, parse_json

# replace x2 + translate + split/join + one pass per level, each at most one read of the body
WORK_PER_BYTE = 7 + MAX_JSON_DEPTH


def true_depth(value: Any) -> int:
    """Nesting depth of a decoded value, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


tricky_text = st.text(alphabet=st.sampled_from('ab"\\[]{}/\n\t\x00é€\U0001f600'), max_size=12)
scalars = st.none() | st.booleans() | st.integers() | tricky_text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans(), st.sampled_from([None, 0, 2]))
def test_depth_of_valid_json_is_exact(value: Any, ascii_only: bool, indent: int | None) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
    expected = true_depth(value)
    for limit in (expected, max(expected - 1, 0), 64):
        scan = scan_depth(body, limit)
        assert scan.depth == (expected if expected <= limit else None)


def adversarial(n: int) -> list[bytes]:
    return [
        b'"' + b'\\"' * n,  # the shape that froze the old regex for 8 s at 48 KB
        b'{"user":"' + b'\\"' * n + b'"}',
        b'["' + b"\\\\" * n + b'"]',
        b'"' + b"\\" * (2 * n + 1),
        b"[" * n + b"]" * n,
        b"[" * (2 * n),
        b'{"a":' * n + b"1" + b"}" * n,
        (b"[" * 31 + b"0" + b"]" * 31 + b",") * (n // 32 + 1),
        b"[" + b"[]," * n + b"[]]",
        b'"' * (2 * n),
        b'["' + b'\\u0022[' * n + b'"]',
        b"[{" * n,
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=4000),
        st.text(alphabet=st.sampled_from('"\\[]{}:,a0 '), max_size=4000).map(lambda t: t.encode()),
        st.tuples(st.integers(0, 11), st.integers(1, 3000)).map(lambda p: adversarial(p[1])[p[0]]),
    )
)
def test_work_per_byte_is_bounded_on_any_body(body: bytes) -> None:
    scan = scan_depth(body, MAX_JSON_DEPTH)
    assert scan.work <= WORK_PER_BYTE * len(body)
    try:
        parse_json(body)
    except BadRequest:
        pass  # anything else (RecursionError, a traceback) fails the test


@pytest.mark.parametrize("shape", range(12))
def test_adversarial_shapes_at_the_largest_limit_stay_linear(shape: int) -> None:
    # 64 MiB is the commit limit; 1 MiB keeps the test quick, the bound is per byte either way
    body = adversarial(1 << 19)[shape]
    scan = scan_depth(body, MAX_JSON_DEPTH)
    assert scan.work <= WORK_PER_BYTE * len(body)


def test_the_escaped_quote_body_is_read_correctly() -> None:
    assert scan_depth(b'"' + b'\\"' * 1000, 32).depth is None  # never closed
    assert scan_depth(b'["' + b'\\"' * 1000 + b'"]', 32).depth == 1
    assert scan_depth(b'["\\\\", [["\\\\\\"]"]]]', 32).depth == 3
    with pytest.raises(BadRequest):
        parse_json(b'{"user":"' + b'\\"' * 24_000)
