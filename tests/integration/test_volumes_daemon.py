"""Storage volumes through the real daemon and CLIs: two volume folders, an engagement created
on each, ``smartsync-admin engagement move`` while a ``smartsync`` client pushes and pulls in a
loop, then every file intact, fsck clean, the old folder gone and /healthz listing both volumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon import Daemon, admin_command, running_daemon
from test_cli_client import PASSWORD, Client, login

pytestmark = pytest.mark.integration

DEADLINE = 180.0


def admin_ok(d: Daemon, *args: str, stdin: str | None = None) -> str:
    done = d.admin(*args, input=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def engagement_id(d: Daemon, name: str) -> int:
    listed = json.loads(admin_ok(d, "engagement", "list", "--json"))
    return next(int(e["id"]) for e in listed if e["name"] == name)


class SyncLoop(threading.Thread):
    """Writes a new file and rewrites an old one in copy A, syncs A, pulls into copy B; again
    and again until told to stop (and at least ``after_stop`` more rounds once told)."""

    def __init__(self, client: Client, a: Path, b: Path) -> None:
        super().__init__(daemon=True)
        self.client, self.a, self.b = client, a, b
        self.expected: dict[str, bytes] = {}
        self.rounds = 0
        self.failures: list[str] = []
        self.stop_after = -1  # round count at which to stop; -1: keep going
        self.progress = threading.Condition()

    def run(self) -> None:
        try:
            while self.stop_after < 0 or self.rounds < self.stop_after:
                self._round(self.rounds)
                with self.progress:
                    self.rounds += 1
                    self.progress.notify_all()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.failures.append(repr(e))
        with self.progress:
            self.stop_after = self.rounds
            self.progress.notify_all()

    def _round(self, n: int) -> None:
        name = f"Working papers/round-{n:03}.bin"
        data = os.urandom(200_000) + f"round {n}".encode()
        (self.a / name).parent.mkdir(exist_ok=True)
        (self.a / name).write_bytes(data)
        self.expected[name] = data
        if n:
            edited = f"Working papers/round-{n - 1:03}.bin"
            self.expected[edited] = self.expected[edited] + b" edited"
            (self.a / edited).write_bytes(self.expected[edited])
        for copy in (self.a, self.b):
            done = self.client.run("sync", str(copy))
            if done.returncode != 0:
                self.failures.append(f"sync {copy.name} round {n}: {done.returncode} {done.stderr}")

    def wait_rounds(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        with self.progress:
            while self.rounds < count and not self.failures and self.stop_after < 0:
                left = deadline - time.monotonic()
                assert left > 0, f"sync loop stuck at round {self.rounds}"
                self.progress.wait(left)


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".smartsync" not in p.relative_to(folder).parts
    }


def test_engagement_moves_between_volumes_while_a_client_syncs(tmp_path: Path) -> None:
    nas1, nas2 = tmp_path / "nas1", tmp_path / "nas2"
    d = running_daemon(tmp_path, config_text=f"[storage]\nvolumes = nas1:{nas1} nas2:{nas2}\n")
    try:
        admin_ok(d, "user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        admin_ok(d, "engagement", "create", "acme", "--volume", "nas1")
        admin_ok(d, "engagement", "add", "beta", "--volume", "nas2")
        for name in ("acme", "beta"):
            admin_ok(d, "grant", name, "--user", "alice", "--role", "editor")
        listed = {v["name"]: v for v in json.loads(admin_ok(d, "volume", "list", "--json"))}
        assert sorted(listed) == ["default", "nas1", "nas2"]
        assert [listed[v]["engagements"] for v in ("default", "nas1", "nas2")] == [0, 1, 1]
        assert listed["nas1"]["path"] == str(nas1) and listed["nas1"]["free_bytes"] > 0

        client = Client(tmp_path / "home")
        client.home.mkdir()
        assert login(client, d, "--trust-fingerprint", d.fingerprint).returncode == 0
        a, b, beta = tmp_path / "a", tmp_path / "b", tmp_path / "beta"
        for url, folder in ((f"{d.url}/acme", a), (f"{d.url}/acme", b), (f"{d.url}/beta", beta)):
            cloned = client.run("clone", url, str(folder))
            assert cloned.returncode == 0, cloned.stderr
        (beta / "notes.txt").write_text("beta lives on nas2\n")
        assert client.run("sync", str(beta)).returncode == 0
        acme, beta_id = engagement_id(d, "acme"), engagement_id(d, "beta")
        assert any((nas2 / str(beta_id)).rglob("*.pack"))

        loop = SyncLoop(client, a, b)
        loop.start()
        loop.wait_rounds(2)
        assert any((nas1 / str(acme)).rglob("*.pack")), "acme's packs are on nas1 before the move"
        moved_at = loop.rounds
        out = admin_ok(d, "engagement", "move", "acme", "--volume", "nas2")
        assert "moved acme from volume nas1 to nas2" in out
        loop.wait_rounds(loop.rounds + 2)  # pushes and pulls after the switch too
        with loop.progress:
            loop.stop_after = loop.rounds
        loop.join(DEADLINE)
        assert not loop.is_alive() and loop.failures == []
        assert loop.rounds >= moved_at + 2

        for copy in (a, b):
            assert client.run("sync", str(copy)).returncode == 0
        fresh = tmp_path / "fresh"
        assert client.run("clone", f"{d.url}/acme", str(fresh)).returncode == 0
        for copy in (a, b, fresh):
            assert files_of(copy) == loop.expected, copy.name
        assert files_of(beta) == {"notes.txt": b"beta lives on nas2\n"}

        assert not (nas1 / str(acme)).exists()
        assert any((nas2 / str(acme)).rglob("*.pack"))
        checked = d.admin("fsck")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        listed = {v["name"]: v for v in json.loads(admin_ok(d, "volume", "list", "--json"))}
        assert [listed[v]["engagements"] for v in ("default", "nas1", "nas2")] == [0, 0, 2]

        # a config that lost a volume: the listing still names it, without a folder
        partial = tmp_path / "partial.ini"
        partial.write_text(f"[storage]\nvolumes = nas1:{nas1}\n")
        done = subprocess.run(
            [*admin_command(), "--config", str(partial), "--data-dir", str(d.data_dir), "volume", "list", "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "which [storage] volumes does not list" in done.stderr
        lost = next(v for v in json.loads(done.stdout) if v["name"] == "nas2")
        assert (lost["path"], lost["engagements"]) == (None, 2)

        status, health = d.request("GET", "/healthz")
        assert status == 200, health
        for label in ("chunks", "volume:nas1", "volume:nas2"):
            assert health["disk"][label]["free_bytes"] > 0, health
    finally:
        d.stop()
