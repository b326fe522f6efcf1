"""The nesting depth of a JSON text in linear time, before any parser sees it (pure).

``json.loads`` recurses once per ``[``/``{`` (in C, up to the recursion limit), so a request
body is measured first and refused when it nests deeper than the endpoint allows. The scan is a
fixed sequence of whole-buffer byte operations (``replace``, ``translate``, ``split``), each
linear and run in C; no regular expression, no backtracking, no Python loop per byte:

1. Escapes go: every ``\\\\`` pair, then every ``\\"`` (inside a valid string, pairing
   backslashes from the left is exactly how JSON reads them), so each remaining ``"`` opens or
   closes a string.
2. Everything but ``"[]{}`` goes, and ``{}`` become ``[]`` (only the depth matters here; a
   mismatched pair is the parser's to refuse).
3. The text between quote pairs goes (window by window, so a body of many tiny strings never
   becomes one huge list).
4. What is left is a bracket skeleton. Each pass deletes every adjacent ``[]`` (the innermost
   containers), which is exactly one level; the depth is the number of passes that empty it.
   At most ``max_depth`` passes run, so the whole scan is O((6 + max_depth) * n).

``scan_depth`` reports the bytes its operations touched (``work``), so tests can bound the
work per byte without a clock. For a valid JSON text the depth is exact; for an invalid one it
is a best effort (the parser refuses those anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

_KEEP = b'"[]{}'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_WINDOW = 1 << 20


@dataclass(frozen=True)
class DepthScan:
    """``depth``: the nesting depth, or None when it is over the limit or the brackets or
    quotes do not balance. ``work``: bytes read by the scan's operations."""

    depth: int | None
    work: int


def scan_depth(body: bytes, max_depth: int) -> DepthScan:
    """The nesting depth of ``body`` if it is at most ``max_depth`` (see the module docstring)."""
    work = 0
    s = body
    if b"\\" in s:  # one read (memchr)
        work += 3 * len(s)
        s = s.replace(b"\\\\", b"")
        s = s.replace(b'\\"', b"")
    work += 2 * len(s)
    s = s.translate(_CURLY_TO_SQUARE, _DROP)
    if b'"' in s:
        outside: list[bytes] = []
        inside = False
        work += 2 * len(s)
        for start in range(0, len(s), _WINDOW):
            parts = s[start : start + _WINDOW].split(b'"')
            outside.append(b"".join(parts[1 if inside else 0 :: 2]))
            if len(parts) % 2 == 0:  # an odd number of quotes in this window
                inside = not inside
        if inside:
            return DepthScan(None, work)  # a string that never ends
        s = b"".join(outside)
    depth = 0
    while s:
        if depth == max_depth:
            return DepthScan(None, work)
        work += len(s)
        shorter = s.replace(b"[]", b"")
        if len(shorter) == len(s):
            return DepthScan(None, work)  # brackets that do not pair up
        s = shorter
        depth += 1
    return DepthScan(depth, work)
