"""Guard: the client's file-system calls go through ``osfs``/``longpath`` (long Windows paths).

Walks smartsyncd/client and cli/client*.py with ``ast`` and counts direct calls (``open``,
``os.<path call>``, ``os.path.<lookup>``, ``shutil.*``, ``Path`` file methods). The wrapper
modules may make them; every other module must make none beyond the counts in
``NOT_YET_ROUTED``, which record the remaining debt and may only go down, so a new bypass
fails here.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import smartsyncd

ROOT = Path(smartsyncd.__file__).parent
# The wrappers themselves: every other client module goes through them.
ALLOWED = {"client/osfs.py", "client/longpath.py"}
OS_PATH_CALLS = {
    "open", "mkdir", "makedirs", "rmdir", "removedirs", "unlink", "remove", "rename",
    "replace", "stat", "lstat", "scandir", "listdir", "utime", "chmod", "walk", "link",
    "symlink", "readlink", "access", "truncate",
}
# os.path calls that look a path up (on Windows a long one without the prefix reads as missing)
OS_PATH_LOOKUPS = {
    "exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime", "getatime",
    "getctime", "realpath", "samefile",
}
PATH_METHODS = {
    "mkdir", "rmdir", "unlink", "rename", "touch", "write_bytes", "write_text",
    "read_bytes", "read_text", "open", "iterdir", "chmod", "exists", "is_dir", "is_file",
    "glob", "rglob",
}
# ``replace`` is left out of PATH_METHODS: str.replace would read as a file call; so is
# ``stat``, which ``os.DirEntry`` shares (its entries come from ``osfs.scandir``, long paths
# included). ``DirEntry.is_dir``/``is_file`` are told apart by their ``follow_symlinks``
# argument, which ``Path``'s have not (Python 3.11). ``SyncCopy.open``-style constructors of the
# client's own classes are not file calls.
# Direct calls still left per module (issue 16): lower these as calls move to osfs. All routed
# now; a module that needs a direct call again must route it through osfs instead.
NOT_YET_ROUTED: dict[str, int] = {}


def _is_direct(node: ast.Call, own_classes: frozenset[str]) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "open"
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value
    owner_name = owner.id if isinstance(owner, ast.Name) else None
    if owner_name == "os":
        return func.attr in OS_PATH_CALLS
    if owner_name == "shutil":
        return True
    if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name):
        if owner.value.id == "os" and owner.attr == "path":
            return func.attr in OS_PATH_LOOKUPS
    if func.attr not in PATH_METHODS or owner_name in {"osfs", "self", "cls"} | own_classes:
        return False
    dir_entry_call = func.attr in {"is_dir", "is_file"} and any(
        k.arg == "follow_symlinks" for k in node.keywords
    )
    return not dir_entry_call


def _direct_calls(tree: ast.AST, own_classes: frozenset[str] = frozenset()) -> int:
    return sum(
        1 for node in ast.walk(tree) if isinstance(node, ast.Call) and _is_direct(node, own_classes)
    )


def _classes_with_file_like_methods(trees: list[ast.Module]) -> frozenset[str]:
    """The client's classes that define a method named like a file call (``SyncCopy.open``)."""
    return frozenset(
        node.name for tree in trees for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(
            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in PATH_METHODS
            for item in node.body
        )
    )


def _counts() -> Counter[str]:
    files = list((ROOT / "client").rglob("*.py")) + list((ROOT / "cli").glob("client*.py"))
    trees = {file.relative_to(ROOT).as_posix(): ast.parse(file.read_text("utf-8"), str(file))
             for file in files}
    own = _classes_with_file_like_methods(list(trees.values()))
    found: Counter[str] = Counter()
    for name, tree in trees.items():
        if name in ALLOWED:
            continue
        calls = _direct_calls(tree, own)
        if calls:
            found[name] = calls
    return found


def test_no_new_direct_file_call_bypasses_the_long_path_wrappers() -> None:
    found = _counts()
    over = {m: (n, NOT_YET_ROUTED.get(m, 0)) for m, n in found.items() if n > NOT_YET_ROUTED.get(m, 0)}
    assert not over, f"direct file calls (found, allowed) outside osfs: {over}"


def test_the_checker_sees_each_kind_of_direct_call() -> None:
    source = "open(p)\nos.replace(a, b)\nshutil.rmtree(p)\npath.write_bytes(b'')\nosfs.replace(a, b)\n"
    assert _direct_calls(ast.parse(source)) == 4


def test_the_checker_sees_lookups_that_fail_quietly_on_a_long_path() -> None:
    """``exists``-style look-ups answer False for a long path Windows refuses, and a hard
    link fails there: counted too."""
    source = (
        "os.path.lexists(p)\nos.path.isdir(p)\nos.path.realpath(p)\npath.exists()\n"
        "path.is_dir()\n(root / 'a').is_file()\nos.path.join(a, b)\nosfs.exists(p)\n"
        "os.link(a, b)\n"
    )
    assert _direct_calls(ast.parse(source)) == 7


def test_the_checker_leaves_dir_entries_and_the_clients_own_classes_alone() -> None:
    """A ``DirEntry``'s cached type check (it passes ``follow_symlinks``, which ``Path``'s
    cannot in 3.11) and ``SyncCopy.open`` (a client class's constructor) are no file calls;
    ``Path.open(p)`` still is."""
    source = (
        "entry.is_dir(follow_symlinks=False)\nentry.is_file(follow_symlinks=False)\n"
        "SyncCopy.open(root)\nPath.open(p)\n"
    )
    tree = ast.parse(source)
    own = _classes_with_file_like_methods([ast.parse("class SyncCopy:\n    def open(cls): ...\n")])
    assert own == {"SyncCopy"}
    assert _direct_calls(tree, own) == 1
    assert _direct_calls(tree) == 2


def test_every_module_routes_its_file_calls_through_osfs() -> None:
    """The debt is paid: no module of the client makes a direct file call."""
    assert NOT_YET_ROUTED == {}
    assert _counts() == {}
