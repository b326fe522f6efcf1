"""The size limits the project keeps (docs/architecture.md): no module in smartsyncd over 600
lines and no function over 80 (from its ``def`` to its last line), checked with ``ast`` so a
change that grows past them fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import smartsyncd

ROOT = Path(smartsyncd.__file__).parent
MODULE_LINES = 600
FUNCTION_LINES = 80


def _sources() -> list[tuple[str, str]]:
    return [(f.relative_to(ROOT).as_posix(), f.read_text("utf-8")) for f in sorted(ROOT.rglob("*.py"))]


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, text in _sources() if (n := len(text.splitlines())) > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines: {long}"


def test_no_function_is_over_80_lines() -> None:
    long = {}
    for name, text in _sources():
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long[f"{name}:{node.name}"] = lines
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"
