"""What the ``smartsync`` command imports before it needs it (issue 15: every command's start
was paying for rich, and the argument parser's ``smartsyncd.client.errors`` pulled in the whole
client library). Checked in a fresh interpreter through ``sys.modules``, never by timing."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def _under(modules: set[str], package: str) -> set[str]:
    return {m for m in modules if m == package or m.startswith(package + ".")}


def test_the_command_module_does_not_import_rich() -> None:
    modules = _modules_after("import smartsyncd.cli.client")
    assert _under(modules, "rich") == set()


def test_a_quiet_session_draws_nothing_and_imports_no_rich() -> None:
    modules = _modules_after(
        "import argparse, io\n"
        "from smartsyncd.cli.client_session import Output\n"
        "from smartsyncd.client.progress import RichProgress\n"
        "p = RichProgress(quiet=True)\n"
        "p.start('download', 100); p.advance(50); p.finish()\n"
    )
    assert _under(modules, "rich") == set()


def test_the_client_errors_do_not_import_the_client_library() -> None:
    modules = _modules_after("import smartsyncd.client.errors")
    assert "smartsyncd.client.engine" not in modules
    assert "smartsyncd.client.http" not in modules
    assert _under(modules, "treq") == set()


def test_the_client_package_still_offers_its_names() -> None:
    modules = _modules_after(
        "import smartsyncd.client as c\n"
        "assert c.SyncCopy.__name__ == 'SyncCopy' and c.ServerAPI.__name__ == 'ServerAPI'\n"
        "from smartsyncd.client import UsageError, wipe\n"
        "assert sorted(c.__all__) == sorted(n for n in c.__all__ if hasattr(c, n))\n"
    )
    assert "smartsyncd.client.engine" in modules
