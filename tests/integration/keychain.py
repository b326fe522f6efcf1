"""A real OS keychain for tests: GNOME Keyring's Secret Service on a private D-Bus session bus.

``private_keychain`` starts ``dbus-daemon --session`` (what ``dbus-run-session`` does) and
``gnome-keyring-daemon --unlock --components=secrets`` on it, fed the keyring's password on
stdin, with its own HOME so the keyring file lives in the test's folder; programs given
``env`` talk to that keychain only. ``lock`` locks its collection as a screen lock would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Keychain:
    env: dict[str, str]

    def lookup(self, service: str, username: str) -> str | None:
        """The secret stored under ``service``/``username``, read with ``secret-tool``."""
        done = subprocess.run(
            ["secret-tool", "lookup", "service", service, "username", username],
            capture_output=True, text=True, env=self.env, timeout=30,
        )
        return done.stdout if done.returncode == 0 and done.stdout else None

    def lock(self) -> None:
        """Lock the default ('login') collection, where keyring stores (the in-memory
        'session' collection cannot be locked)."""
        code = (
            "import secretstorage\n"
            "bus = secretstorage.dbus_init()\n"
            "login = secretstorage.get_default_collection(bus)\n"
            "login.lock()\n"
            "assert login.is_locked()\n"
        )
        subprocess.run([_python(), "-c", code], check=True, env=self.env, timeout=30)


def _python() -> str:
    import sys

    return sys.executable


@contextmanager
def private_keychain(base: Path, password: str = "keyring pass") -> Iterator[Keychain]:
    for tool in ("dbus-daemon", "gnome-keyring-daemon", "secret-tool"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run .ci/install-system-deps")
    home = base / "keychain-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "GNOME_KEYRING"))}
    env.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
                "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / "config")})
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        started = subprocess.run(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets"],
            input=password + "\n", capture_output=True, text=True, env=env, timeout=60,
        )
        if started.returncode != 0:
            raise RuntimeError(f"gnome-keyring-daemon failed: {started.stderr}")
        for line in started.stdout.splitlines():
            name, _, value = line.partition("=")
            if name and value:
                env[name] = value
        keychain = Keychain(env)
        _wait_for_secret_service(keychain)
        yield keychain
    finally:
        bus.terminate()  # gnome-keyring-daemon leaves when its bus goes away
        bus.wait(timeout=30)


def _wait_for_secret_service(keychain: Keychain) -> None:
    """Poll until the Secret Service answers on the bus (it starts in the background)."""
    deadline = time.monotonic() + 30
    while True:
        probe = subprocess.run(
            ["secret-tool", "search", "service", "smartsync-probe"],
            capture_output=True, text=True, env=keychain.env, timeout=30,
        )
        if probe.returncode in (0, 1) and "org.freedesktop" not in probe.stderr:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Secret Service did not start: {probe.stderr}")
        time.sleep(0.05)  # polling interval, not synchronisation: the loop checks the condition
