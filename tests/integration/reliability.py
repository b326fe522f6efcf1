"""Helpers shared by the reliability tests (issue 5): batched admin set-up, crash restarts,
copy-tree snapshots with content ids, and the figures file that bench/reliability_figures.py
turns into the table of docs/reliability.md.

Nothing here replaces the thing under test: the daemon is the real ``twistd`` process, the
client is the real library, and the admin commands run the real ``run_admin`` code (several
commands in one interpreter, so setting up 40 engagements costs one process start, not 80).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from daemon import Daemon

from smartsyncd.client.localfs import TEMP_PREFIX
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.manifest import content_id

PASSWORD = "correct horse battery"

_ADMIN_BATCH = r"""
import io, json, sys
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from smartsyncd.cli.admin import build_parser, run_admin
from smartsyncd.service.config import load_config

commands = json.load(sys.stdin)

async def main(reactor):
    for argv, password in commands:
        args = build_parser().parse_args(argv)
        config = load_config(args.config, data_dir=args.data_dir)
        out = io.StringIO()
        code = await run_admin(reactor, args, config, password, out)
        if code:
            raise SystemExit(f"smartsync-admin {argv}: exit {code}: {out.getvalue()}")

react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""


def admin_batch(daemon: Daemon, commands: Sequence[tuple[Sequence[str], str | None]]) -> None:
    """Run several ``smartsync-admin`` commands (argv, password) in one interpreter."""
    config = ["--config", str(daemon.config_path)] if daemon.config_path else []
    payload = [
        ([*config, "--data-dir", str(daemon.data_dir), *argv], password)
        for argv, password in commands
    ]
    done = subprocess.run(
        [sys.executable, "-c", _ADMIN_BATCH],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=daemon.base,
    )
    assert done.returncode == 0, f"admin batch failed:\n{done.stdout}\n{done.stderr}"


def add_users(daemon: Daemon, users: Iterable[str]) -> None:
    admin_batch(daemon, [(("user", "add", u, "--password-stdin"), PASSWORD) for u in users])


def add_engagements(
    daemon: Daemon, names: Iterable[str], grants: dict[str, str], *, title: str = "test"
) -> None:
    """Create engagements and grant ``{user: role}`` on each."""
    commands: list[tuple[Sequence[str], str | None]] = []
    for name in names:
        commands.append((("engagement", "create", name, "--title", title), None))
        for user, role in grants.items():
            commands.append((("grant", name, "--user", user, "--role", role), None))
    admin_batch(daemon, commands)


def fsck(daemon: Daemon) -> str:
    """Run the real ``smartsync-admin fsck``; fail with its output unless it is clean."""
    done = daemon.admin("fsck")
    assert done.returncode == 0 and "no problems" in done.stdout, (
        f"fsck found problems:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def crash_restart(daemon: Daemon) -> None:
    """SIGKILL the daemon (no cleanup runs) and start it again on the same port."""
    port = daemon.port
    daemon.kill()
    daemon.listen = f"ssl:{port}:interface=127.0.0.1"
    daemon.start()


def cid(data: bytes) -> str:
    """The protocol's content id of ``data`` (what the server's log records)."""
    return content_id([ref for ref, _ in chunk_buffer(data)])


def copy_files(root: Path) -> dict[str, bytes]:
    """Every user-visible file of a copy (not ``.smartsync``, not the client's temp files)."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".smartsync" in dirnames:
            dirnames.remove(".smartsync")
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                continue
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def temp_files(root: Path) -> list[str]:
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in filenames if n.startswith(TEMP_PREFIX)]
    return found


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- figures for docs/reliability.md -------------------------------------------------------------


def record_figures(test: str, **counts: int) -> None:
    """Append counts (steps, kills, bad inputs...) to ``$SMARTSYNC_FIGURES`` when it is set
    (bench/reliability_figures.py sets it and aggregates the file into the docs table)."""
    target = os.environ.get("SMARTSYNC_FIGURES")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, **counts}) + "\n")


def long_run() -> bool:
    return os.environ.get("SMARTSYNC_LONG", "") not in ("", "0")
