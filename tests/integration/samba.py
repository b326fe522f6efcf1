"""Integration fixture: a real Samba AD domain controller provisioned into a temp folder.

``samba_dc`` (session scope) provisions ``FIRM`` / ``firm.example`` with a CA-signed
certificate for ``localhost``/``127.0.0.1`` (so LDAPS and StartTLS verify), creates the service
account ``svc-smartsync``, starts ``samba -F -M single`` (LDAP and the KDC) listening on loopback
only, waits for 636 and 88 and yields a ``SambaDC`` with helpers to change users and groups. Samba's LDAP ports are
fixed (389/636), so only one instance runs at a time: a stale instance from an earlier run is
stopped by the pid file in the fixed runtime folder before provisioning. If Samba cannot start,
the fixture FAILS with the tail of the Samba log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from smartsyncd.testing.ldapserver import TestPki, make_test_pki

REALM = "firm.example"
NETBIOS = "FIRM"
BASE_DN = "DC=firm,DC=example"
ADMIN_PASSWORD = "Adm1n-Passw0rd!x"
SERVICE_ACCOUNT = "svc-smartsync"
SERVICE_PASSWORD = "Svc-Passw0rd!x"
# Fixed, so a run that was killed can be cleaned up by the next one (ports are fixed anyway).
# SMARTSYNC_SAMBA_DIR names another folder for a run inside its own network namespace
# (``unshare --net``), beside an instance someone else is running.
STATE_ROOT = os.environ.get("SMARTSYNC_SAMBA_DIR") or os.path.join(
    tempfile.gettempdir(), "smartsync-samba-test"
)
KDC_PORT = 88
START_TIMEOUT = 60.0


@dataclass
class SambaDC:
    """A running Samba AD DC on 127.0.0.1 and what a client needs to use it."""

    directory: str
    pki: TestPki
    realm: str = REALM
    netbios: str = NETBIOS
    base_dn: str = BASE_DN
    bind_dn: str = f"CN={SERVICE_ACCOUNT},CN=Users,{BASE_DN}"
    bind_password: str = SERVICE_PASSWORD
    urls: list[str] = field(default_factory=lambda: ["ldaps://127.0.0.1:636"])
    starttls_urls: list[str] = field(default_factory=lambda: ["ldap://127.0.0.1:389"])

    @property
    def ca_file(self) -> str:
        return self.pki.ca_file

    @property
    def config_file(self) -> str:
        return os.path.join(self.directory, "etc", "smb.conf")

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, "samba.log")

    def tool(self, *args: str) -> str:
        """Run ``samba-tool <args> --configfile=...`` (blocking) and return its stdout."""
        return _run(["samba-tool", *args, f"--configfile={self.config_file}"])

    def add_user(self, name: str, password: str, groups: tuple[str, ...] | list[str] = ()) -> None:
        self.tool("user", "create", name, password)
        for group in groups:
            self.tool("group", "addmembers", group, name)

    def add_group(self, name: str, member_of: tuple[str, ...] | list[str] = ()) -> None:
        self.tool("group", "add", name)
        for parent in member_of:
            self.tool("group", "addmembers", parent, name)

    def remove_from_group(self, user: str, group: str) -> None:
        self.tool("group", "removemembers", group, user)

    def disable(self, user: str) -> None:
        self.tool("user", "disable", user)

    def enable(self, user: str) -> None:
        self.tool("user", "enable", user)

    def add_upn_suffix(self, suffix: str) -> None:
        """Allow UPNs ending in ``@suffix`` (e-mail style), as an admin does in "Domains and
        Trusts"; over LDAPS as Administrator (samba-tool's way needs the RPC services)."""
        ldif = (
            f"dn: CN=Partitions,CN=Configuration,{self.base_dn}\n"
            "changetype: modify\nadd: uPNSuffixes\n"
            f"uPNSuffixes: {suffix}\n"
        )
        done = subprocess.run(
            ["ldapmodify", "-x", "-H", self.urls[0], "-D", f"Administrator@{self.realm}",
             "-y", self._admin_password_file()],
            input=ldif, capture_output=True, text=True, timeout=60,
            env=dict(os.environ, LDAPTLS_CACERT=self.ca_file),
        )
        if done.returncode != 0 and "Type or value exists" not in done.stderr:
            raise RuntimeError(f"ldapmodify failed ({done.returncode}): {done.stderr}")

    def set_upn(self, user: str, upn: str) -> None:
        self.tool("user", "rename", user, f"--upn={upn}")

    def _admin_password_file(self) -> str:
        path = os.path.join(self.directory, "admin.secret")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(ADMIN_PASSWORD)  # -y reads the whole file: no newline
        return path


def _run(command: list[str], timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def _pid_files(directory: str) -> list[str]:
    run = os.path.join(directory, "run")
    if not os.path.isdir(run):
        return []
    return [os.path.join(run, n) for n in os.listdir(run) if n.endswith(".pid")]


def _stop_by_pid_files(directory: str) -> None:
    """Stop a Samba started from ``directory`` (by its pid files), waiting until it is gone."""
    for pid_file in _pid_files(directory):
        try:
            with open(pid_file) as f:
                pid = int(f.read().strip() or "0")
        except (OSError, ValueError):
            continue
        if pid <= 1:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _log_tail(path: str, lines: int = 60) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no samba log)"


def provision(directory: str) -> SambaDC:
    """Provision a fresh domain into ``directory`` (which is emptied first)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.join(directory, "run"))
    pki = make_test_pki(os.path.join(directory, "tls"))
    dc = SambaDC(directory=directory, pki=pki)
    options = {
        "interfaces": "lo",
        "bind interfaces only": "yes",
        "server services": "ldap kdc",  # kdc: Kerberos sign-in (tests/integration/kerberos.py)
        "pid directory": os.path.join(directory, "run"),
        "tls enabled": "yes",
        "tls certfile": pki.cert_file,
        "tls keyfile": pki.key_file,
        "tls cafile": pki.ca_file,
        "log file": dc.log_file,
        "log level": "1",
    }
    command = [
        "samba-tool",
        "domain",
        "provision",
        f"--targetdir={directory}",
        f"--realm={REALM.upper()}",
        f"--domain={NETBIOS}",
        "--server-role=dc",
        "--dns-backend=NONE",
        f"--adminpass={ADMIN_PASSWORD}",
        "--host-ip=127.0.0.1",
    ]
    command += [f"--option={k}={v}" for k, v in options.items()]
    _run(command)
    dc.tool(
        "domain",
        "passwordsettings",
        "set",
        "--complexity=off",
        "--min-pwd-length=1",
        "--history-length=0",
        "--min-pwd-age=0",
        "--max-pwd-age=0",
    )
    dc.add_user(SERVICE_ACCOUNT, SERVICE_PASSWORD)
    return dc


def start(dc: SambaDC) -> subprocess.Popen[bytes]:
    """Start samba in the foreground (as a child) and wait until LDAPS answers."""
    for port in (389, 636, KDC_PORT):
        if _port_open(port):
            raise RuntimeError(f"port {port} is already in use on 127.0.0.1 (another directory?)")
    log = open(os.path.join(dc.directory, "samba.stdout"), "wb")
    process = subprocess.Popen(
        ["samba", "-s", dc.config_file, "-F", "--no-process-group", "-M", "single"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _port_open(636) and _port_open(389) and _port_open(KDC_PORT):
            return process
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError("samba did not start")


def stop(dc: SambaDC, process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _stop_by_pid_files(dc.directory)


@pytest.fixture(scope="session")
def samba_dc() -> Iterator[SambaDC]:
    """A provisioned, running Samba AD DC for the whole test session (fails, never skips)."""
    if shutil.which("samba") is None or shutil.which("samba-tool") is None:
        pytest.fail("samba is not installed (.ci/install-system-deps installs samba-ad-dc)")
    _stop_by_pid_files(STATE_ROOT)
    try:
        dc = provision(STATE_ROOT)
    except Exception as e:
        pytest.fail(f"samba provisioning failed: {e}")
    process = None
    try:
        process = start(dc)
    except Exception as e:
        stop(dc, process)
        pytest.fail(
            f"{e}\n--- samba log ---\n{_log_tail(dc.log_file)}"
            f"\n--- samba stdout ---\n{_log_tail(os.path.join(dc.directory, 'samba.stdout'))}"
        )
    try:
        yield dc
    finally:
        stop(dc, process)
