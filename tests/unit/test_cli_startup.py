"""What the ``smartsync`` command imports before it needs it (issue 15: every command's start
was paying for rich, and the argument parser's ``smartsyncd.client.errors`` pulled in the whole
client library). Checked in a fresh interpreter through ``sys.modules``, never by timing.
And its end: an exiting command does not wait a round trip for the server's close."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock

from smartsyncd.cli.client_args import build_parser
from smartsyncd.cli.client_session import Output, Session


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


def test_the_command_module_leaves_the_engine_until_a_command_needs_it() -> None:
    """Issue 15: what a clone's or sync's TLS handshake does not need is imported after its
    ClientHello left (cli/client.py ``_open_early``), not before; every command still runs
    (the next test)."""
    modules = _modules_after(
        "import smartsyncd.cli.client as c\n"
        "assert all(f.__name__.startswith('cmd_') for f in c.COMMANDS.values())\n"
    )
    for later in ("smartsyncd.client.engine", "smartsyncd.client.state",
                  "smartsyncd.client.scanner", "smartsyncd.client.copyservice",
                  "smartsyncd.client.watch", "smartsyncd.client.sso", "smartsyncd.client.wipe",
                  "smartsyncd.cli.client_manage", "smartsyncd.cli.client_review",
                  "smartsyncd.cli.client_workflow", "smartsyncd.cli.client_wipe",
                  "filelock", "sqlite3"):
        assert later not in modules, later
    assert "smartsyncd.client.http" in modules  # the handshake's own needs stay up front


def test_each_command_imported_later_names_a_function_that_exists() -> None:
    import importlib

    from smartsyncd.cli import client

    for command, (module, name) in client._ELSEWHERE.items():
        found = getattr(importlib.import_module(f"smartsyncd.cli.{module}"), name)
        assert callable(found) and client.COMMANDS[command].__name__ == name, command


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


class _Closing:
    """An API whose connections take a round trip to close: ``close`` ends when told."""

    def __init__(self) -> None:
        self.answered: Deferred[None] = Deferred()
        self.asked = False

    async def close(self) -> None:
        self.asked = True
        await self.answered


def _session(tmp_path: Path, apis: list[_Closing]) -> Session:
    args = build_parser().parse_args(["--quiet", "--config-dir", str(tmp_path), "engagements",
                                      "https://sync.example"])
    session = Session(Clock(), args, Output(args, io.StringIO(), io.StringIO()))
    session._apis.extend(cast(Any, apis))
    return session


def test_an_exiting_command_does_not_wait_for_the_servers_close(tmp_path: Path) -> None:
    """``main`` closes without waiting for the server's answer to each close (a round trip
    at the end of every command); ``run`` called in-process still waits by default."""
    apis = [_Closing(), _Closing()]
    done = Deferred.fromCoroutine(_session(tmp_path, apis).close(wait=False))
    assert all(api.asked for api in apis) and done.called
    apis[0].answered.errback(ConnectionDone())  # the reactor's end drops what is left: quiet
    waiting = [_Closing(), _Closing()]
    done = Deferred.fromCoroutine(_session(tmp_path, waiting).close())
    assert not done.called
    for api in waiting:
        api.answered.callback(None)
    assert done.called


def test_opening_early_leaves_every_error_to_the_command(tmp_path: Path) -> None:
    """Issue 15: TLS begun before the engine imports never raises: an untrusted server or a
    missing CA file is reported when the command asks, in its own order, as before."""
    from smartsyncd.client import preconnect

    def unreachable(address: tuple[str, int], timeout: float) -> Any:
        raise OSError("no network in unit tests")

    began = preconnect.start("sync.example", 443, connect=unreachable)
    try:
        for extra in ([], ["--ca-file", str(tmp_path / "missing.pem")]):
            args = build_parser().parse_args(["--config-dir", str(tmp_path), *extra,
                                              "engagements", "https://sync.example"])
            session = Session(Clock(), args, Output(args, io.StringIO(), io.StringIO()))
            assert session.open_early("https://sync.example") is False
            assert session._apis == [] and preconnect.pending("sync.example", 443) == 1
        args = build_parser().parse_args(["--config-dir", str(tmp_path), "engagements",
                                          "https://elsewhere.example"])
        session = Session(Clock(), args, Output(args, io.StringIO(), io.StringIO()))
        assert session.open_early("https://elsewhere.example") is False  # none begun there
    finally:
        began[0].join(10)
        preconnect.discard_all()


def test_the_command_exits_without_the_teardown_and_loses_no_output() -> None:
    """``main`` leaves through ``_leave``: its output is flushed (a pipe buffers it), its
    exit code kept, and the interpreter's teardown (atexit, freeing every object) skipped."""
    probe = ("import atexit, sys\n"
             "from smartsyncd.cli.client import _leave\n"
             "atexit.register(lambda: print('teardown ran'))\n"
             "sys.stdout.write('Cloned acme into copy.')\n"
             "sys.stderr.write('a note')\n"
             "_leave(3)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "Cloned acme into copy.", "a note")
    done = subprocess.run([sys.executable, "-c", probe.replace("_leave(3)", "_leave(None)")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "teardown" not in done.stdout


def test_the_collector_is_off_only_while_the_command_imports() -> None:
    probe = ("import gc\n{before}\n"
             "from smartsyncd.cli import startup\n"
             "off = not gc.isenabled()\n"
             "import smartsyncd.cli.client\n"
             "print(off, gc.isenabled())\n")
    for before, after in (("", "True True"), ("gc.disable()", "True False")):
        done = subprocess.run([sys.executable, "-c", probe.format(before=before)],
                              capture_output=True, text=True, check=True)
        assert done.stdout.split() == after.split()
