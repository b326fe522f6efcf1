"""The command's early TCP connection (issue 15): which commands begin one and to where, and
that one discarded while still connecting is closed; no timing. Its use by the reactor's
connections: tests/integration/test_early_connection.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smartsyncd.cli.startup import server_to_reach
from smartsyncd.client import preconnect


def test_the_server_is_taken_from_a_clone_or_the_copys_marker(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert server_to_reach(["--quiet", "--config-dir", "/c", "clone",
                            "https://Files.Example:8443/acme", "dir"], env, "linux") == (
        "files.example", 8443, 2)
    assert server_to_reach(["clone", "https://files.example/acme", "d"], env, "linux") == (
        "files.example", 443, 2)
    (tmp_path / ".smartsync").mkdir()
    (tmp_path / ".smartsync" / "copy.json").write_text(
        '{"server": "https://127.0.0.1:9443", "engagement": "acme", "copy_id": "c1"}')
    assert server_to_reach(["sync", str(tmp_path)], env, "linux") == ("127.0.0.1", 9443, 1)
    assert server_to_reach(["--json", "status", str(tmp_path)], env, "linux") == (
        "127.0.0.1", 9443, 1)
    assert server_to_reach(["engagements", "https://f.example"], env, "linux") == (
        "f.example", 443, 1)


@pytest.mark.parametrize("argv, env, platform", [
    (["clone", "https://f.example/acme", "d"], {"HTTPS_PROXY": "http://p:3128"}, "linux"),
    (["clone", "https://f.example/acme", "d"], {"all_proxy": "http://p:3128"}, "linux"),
    (["clone", "https://f.example/acme", "d"], {}, "darwin"),  # the system's settings decide
    (["--proxy", "http://p:3128", "clone", "https://f.example/acme", "d"], {}, "linux"),
    (["clone", "--unknown", "https://f.example/acme", "d"], {}, "linux"),
    (["clone", "http://f.example/acme", "d"], {}, "linux"),  # refused by the command
    (["clone", "https://[::1]:9443/acme", "d"], {}, "linux"),
    (["login", "https://f.example", "--user", "a"], {}, "linux"),  # a prompt may come first
    (["sync", "/nowhere/at/all"], {}, "linux"),
    (["watch", "."], {}, "linux"),
])
def test_no_early_connection_when_in_doubt(argv: list[str], env: dict[str, str],
                                           platform: str) -> None:
    assert server_to_reach(argv, env, platform) is None


def test_proxy_direct_still_connects_early() -> None:
    argv = ["--proxy", "direct", "clone", "https://f.example/acme", "d"]
    assert server_to_reach(argv, {"HTTPS_PROXY": "http://p:3128"}, "darwin") == (
        "f.example", 443, 2)
    assert server_to_reach(argv, {}, "win32") is None


def test_discarded_while_connecting_the_socket_is_closed_when_it_connects() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    go = threading.Event()
    made: list[socket.socket] = []

    def slow_connect(address: tuple[str, int], timeout: float) -> socket.socket:
        go.wait(10)
        made.append(socket.create_connection(address, timeout))
        return made[-1]

    try:
        early, = preconnect.start("127.0.0.1", listener.getsockname()[1], connect=slow_connect)
        preconnect.discard_all()
        go.set()
        early.join(10)
        assert made and made[0].fileno() == -1  # closed by the thread, not leaked
    finally:
        listener.close()


def test_only_the_command_connects_early_on_import() -> None:
    """Importing the command module from a program (not its console script) opens nothing,
    and the start-up module loads no Twisted before the connection is under way."""
    probe = ("import sys\n"
             "from smartsyncd.cli import startup\n"
             "print(any(m.startswith('twisted') for m in sys.modules))\n"
             "from smartsyncd.client import preconnect\n"
             "print(len(preconnect._pending))\n")
    done = subprocess.run([sys.executable, "-c", probe, "clone", "https://127.0.0.1:9/a", "d"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "0"]


def test_the_console_script_connects_early_to_the_server_it_names(tmp_path: Path) -> None:
    """Run as ``smartsync clone URL DIR`` (the console script's name), importing the command
    begins two connections to the server (a clone's two) before the rest is imported."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        script = tmp_path / "smartsync"
        script.write_text(
            "import sys\n"
            "from smartsyncd.cli import startup\n"
            "from smartsyncd.client import preconnect\n"
            f"began = preconnect._pending[('127.0.0.1', {port})]\n"
            "[early.join(10) for early in began]\n"
            "print(len(began), sum(early._sock is not None for early in began),\n"
            "      any(m.startswith('twisted') for m in sys.modules))\n")
        done = subprocess.run([sys.executable, str(script), "--quiet", "clone",
                               f"https://127.0.0.1:{port}/acme", str(tmp_path / "copy")],
                              capture_output=True, text=True, check=True)
        assert done.stdout.split() == ["2", "2", "False"]
    finally:
        listener.close()
