"""Integration fixture: Kerberos against the test Samba AD DC's KDC, all under a temp folder.

``kerberos`` (session scope) builds on ``samba_dc``: it writes a private krb5.conf for the realm
``FIRM.EXAMPLE`` (KDC 127.0.0.1:88, no DNS, no reverse lookups), creates the service account
``svc-http`` with the SPN ``HTTP/localhost`` and exports its keytab with ``samba-tool domain
exportkeytab``, as a domain administrator does for the daemon. A second account holds
``HTTP/other.example`` (a service that is not the daemon's, for "ticket for another service").

Nothing touches /etc: every process gets ``KRB5_CONFIG`` (and ``KRB5CCNAME`` for a user's
ticket cache) through ``env()``; ``kinit`` and ``kvno`` are krb5-user's real commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from samba import SambaDC, samba_dc  # noqa: F401  (samba_dc is the session fixture)

SERVICE_HOST = "localhost"
SERVICE_ACCOUNT = "svc-http"
SERVICE_PASSWORD = "Svc-Http-Passw0rd!x"
OTHER_HOST = "other.example"
OTHER_PASSWORD = "Svc-Other-Passw0rd!x"  # another key: RC4 keys are unsalted password hashes


@dataclass
class KerberosRealm:
    """The test realm's client configuration and the daemon's keytab."""

    dc: SambaDC
    directory: Path
    realm: str
    krb5_conf: Path
    keytab: Path
    service_host: str = SERVICE_HOST

    @property
    def service(self) -> str:
        """The GSSAPI host-based name the daemon accepts (``[kerberos] service``)."""
        return f"HTTP@{self.service_host}"

    def env(self, ccache: Path | None = None) -> dict[str, str]:
        """Environment for a process of this realm (a user's ticket cache if given)."""
        env = dict(os.environ, KRB5_CONFIG=str(self.krb5_conf))
        env.pop("KRB5_KTNAME", None)
        if ccache is not None:
            env["KRB5CCNAME"] = f"FILE:{ccache}"
        else:
            env.pop("KRB5CCNAME", None)
        return env

    def kinit(self, principal: str, password: str, ccache: Path, *args: str) -> None:
        """Get a TGT for ``principal`` into ``ccache`` with the real kinit (password on stdin)."""
        if "@" not in principal:
            principal = f"{principal}@{self.realm}"
        done = subprocess.run(
            ["kinit", *args, principal], input=password + "\n", capture_output=True, text=True,
            env=self.env(ccache), timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kinit {principal} failed: {done.stdout}{done.stderr}")

    def service_ticket(self, ccache: Path, spn: str | None = None) -> None:
        """Get the service ticket into ``ccache`` now, with the real kvno."""
        spn = spn or f"HTTP/{self.service_host}"
        done = subprocess.run(
            ["kvno", spn], capture_output=True, text=True, env=self.env(ccache), timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"kvno {spn} failed: {done.stdout}{done.stderr}")

    def add_service(self, account: str, password: str, spn: str) -> None:
        self.dc.add_user(account, password)
        self.dc.tool("spn", "add", spn, account)

    def export_keytab(self, spn: str, path: Path) -> Path:
        self.dc.tool("domain", "exportkeytab", str(path), f"--principal={spn}")
        path.chmod(0o600)
        return path


# Makes one initiator token with python-gssapi in a child process (its own KRB5_CONFIG and
# KRB5CCNAME, and under faketime when asked): argv = service, mech (spnego/krb5).
_TOKEN_SCRIPT = """
import base64, sys, gssapi
service, mech = sys.argv[1], sys.argv[2]
oid = gssapi.OID.from_int_seq("1.3.6.1.5.5.2" if mech == "spnego" else "1.2.840.113554.1.2.2")
name = gssapi.Name(service, gssapi.NameType.hostbased_service)
ctx = gssapi.SecurityContext(name=name, usage="initiate", mech=oid)
print(base64.b64encode(ctx.step()).decode())
"""


def make_token(
    realm: KerberosRealm,
    ccache: Path,
    service: str | None = None,
    *,
    mech: str = "spnego",
    clock_offset: str | None = None,
) -> str:
    """A base64 Negotiate token from the user's ticket cache, as a browser or pyspnego sends it.

    ``clock_offset`` (``+10m``) runs the initiator under faketime: its authenticator then
    carries a skewed time (get the service ticket first: the KDC refuses a skewed client)."""
    command = [sys.executable, "-c", _TOKEN_SCRIPT, service or realm.service, mech]
    if clock_offset is not None:
        command = ["faketime", "-f", clock_offset, *command]
    done = subprocess.run(command, capture_output=True, text=True, env=realm.env(ccache), timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"making a token failed: {done.stderr}")
    return done.stdout.strip()


def write_krb5_conf(path: Path, realm: str, kdc: str = "127.0.0.1", extra: str = "") -> Path:
    """A krb5.conf for one realm. The realm block must be on several lines (MIT's parser does
    not understand ``REALM = { kdc = ... }`` on one line)."""
    path.write_text(
        "[libdefaults]\n"
        f"    default_realm = {realm}\n"
        "    dns_lookup_kdc = false\n"
        "    dns_lookup_realm = false\n"
        "    rdns = false\n"
        "    dns_canonicalize_hostname = false\n"
        f"{extra}"
        "[realms]\n"
        f"    {realm} = {{\n"
        f"        kdc = {kdc}\n"
        "    }\n"
    )
    return path


@pytest.fixture(scope="session")
def kerberos(
    samba_dc: SambaDC,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KerberosRealm]:
    base = tmp_path_factory.mktemp("kerberos")
    realm = samba_dc.realm.upper()
    krb = KerberosRealm(
        dc=samba_dc, directory=base, realm=realm,
        krb5_conf=write_krb5_conf(base / "krb5.conf", realm), keytab=base / "http.keytab",
    )
    krb.add_service(SERVICE_ACCOUNT, SERVICE_PASSWORD, f"HTTP/{SERVICE_HOST}")
    krb.export_keytab(f"HTTP/{SERVICE_HOST}", krb.keytab)
    krb.add_service("svc-other", OTHER_PASSWORD, f"HTTP/{OTHER_HOST}")
    yield krb
