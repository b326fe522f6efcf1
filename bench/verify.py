"""What ``smartsync verify`` costs (issue 20): the content root alone, and the real command.

    python bench/verify.py [--files 2000] [--roots 100000]

1. ``core.contentroot.content_root`` over ``--roots`` (path, content id) pairs (the server's
   CPU-pool work for an engagement of that many live files, once per seq: it is cached).
2. A real daemon (SQLite, TLS on loopback) and the real CLI: a copy of ``--files`` files of
   4 KiB in folders of 100 is synced, then ``smartsync verify`` runs three times (the first
   makes the store's key and computes the root; then the root is cached; then with one file
   edited, so the listing is paged in and the difference named), beside ``smartsync status``
   on the same copy (the same scan through the stat cache, plus the change feed).
Prints wall-clock seconds per command, process start included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from daemon import running_daemon  # noqa: E402
from test_cli_client import PASSWORD, Client  # noqa: E402

from smartsyncd.core.contentroot import content_root  # noqa: E402


def timed(label: str, fn) -> object:  # noqa: ANN001
    start = time.perf_counter()
    result = fn()
    print(f"{label:<58} {time.perf_counter() - start:6.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--roots", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{platform.platform()}, Python {platform.python_version()}")
    pairs = [(f"Working papers/section {i // 100}/paper {i}.xlsx", os.urandom(32).hex())
             for i in range(args.roots)]
    timed(f"content_root over {args.roots} files", lambda: content_root(pairs))

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        daemon = running_daemon(base)
        try:
            daemon.admin("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
            daemon.admin("engagement", "create", "bench")
            daemon.admin("grant", "bench", "--user", "alice", "--role", "editor")
            (base / "home").mkdir()
            client = Client(base / "home")
            client.run("login", daemon.url, "--user", "alice", "--password-stdin",
                       "--trust-fingerprint", daemon.fingerprint, input=PASSWORD + "\n").check_returncode()
            copy = base / "copy"
            client.run("clone", f"{daemon.url}/bench", str(copy)).check_returncode()
            for i in range(args.files):
                folder = copy / f"section {i // 100}"
                folder.mkdir(exist_ok=True)
                (folder / f"paper {i}.txt").write_bytes(os.urandom(4096))
            timed(f"sync of {args.files} new files", lambda: client.run("sync", str(copy)))
            for label in ("verify, identical (key made, root computed)", "verify, identical (root cached)"):
                done = timed(label, lambda: client.run("--json", "verify", str(copy)))
                assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
            (copy / "section 0" / "paper 0.txt").write_bytes(b"edited")
            done = timed("verify, one file edited (listing paged in)",
                         lambda: client.run("--json", "verify", str(copy)))
            report = json.loads(done.stdout)  # type: ignore[attr-defined]
            assert report["unsynced"] == 1, report
            timed("status, same copy", lambda: client.run("--json", "status", str(copy)))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
