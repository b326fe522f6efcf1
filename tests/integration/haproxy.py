"""Several daemons behind a real HAProxy 2.6, on one PostgreSQL database and one chunk folder.

- ``make_tls(folder)``: a test CA and one certificate (localhost, 127.0.0.1, smartsync-backend)
  used by the daemons and by HAProxy's frontend; clients and HAProxy trust the CA.
- ``render_sample(...)``: the repository's ``conf/haproxy.cfg`` with only its paths, listen
  address and server lines replaced, so the tests prove the shipped sample works.
- ``HAProxy``: ``haproxy -db -f cfg`` in the foreground, checked with ``haproxy -c`` first,
  ready once a request through it reaches a healthy daemon; stopped by PID.
- ``Cluster``: daemons ``app1``, ``app2`` (real twistd, ``[database] url``, ``[storage] path``)
  and HAProxy. ``start_cluster`` fails with the logs when something does not come up.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon import Daemon
from pg import free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "conf" / "haproxy.cfg"
HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT_S = 20.0
BACKEND_NAME = "smartsync-backend"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(folder: Path) -> Path:
    """Write ca.pem, server.pem, server.key (0600) and frontend.pem (cert+key) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("smartsync test CA"))
        .issuer_name(_name("smartsync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(BACKEND_NAME),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name, data in (("server.key", key_pem), ("frontend.pem", cert.public_bytes(pem) + key_pem)):
        path = folder / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
    (folder / "backend-ca.pem").write_bytes(ca.public_bytes(pem))
    return folder


def render_sample(tls_dir: Path, port: int, servers: list[tuple[str, int]]) -> str:
    """conf/haproxy.cfg with its paths, listen address and servers replaced (nothing else)."""
    text = SAMPLE.read_text()
    text = text.replace("/etc/haproxy/smartsync/", f"{tls_dir}/")
    text, n = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>127.0.0.1:{port}", text)
    assert n == 1, "the sample should have one bind line"
    server_lines = "\n".join(
        f"    server {name} 127.0.0.1:{p} check cookie {name}" for name, p in servers
    )
    text, n = re.subn(r"(?m)^\s*server .*\n?", "", text)
    assert n >= 1, "the sample should have server lines"
    return text.rstrip("\n") + "\n" + server_lines + "\n"


class HAProxy:
    def __init__(self, folder: Path, config_text: str, port: int) -> None:
        self.folder = folder
        self.config = folder / "haproxy.cfg"
        self.logfile = folder / "haproxy.log"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text)

    def start(self, ready: Any) -> HAProxy:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the config:\n{check.stdout}{check.stderr}")
        log = open(self.logfile, "ab")
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy did not become ready:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class CADaemon(Daemon):
    """A daemon whose certificate is issued by the test CA (``ca.pem`` is what clients trust)."""

    ca_file: Path

    @property
    def cert_path(self) -> Path:
        return self.ca_file


def daemon_config(tls_dir: Path, database_url: str, storage: Path, extra: str = "") -> str:
    return (
        "[server]\n"
        # HAProxy connects from here; its X-Forwarded-For names the client (conf/smartsync.ini)
        "trusted_proxies = 127.0.0.1\n"
        f"tls_cert = {tls_dir / 'server.pem'}\n"
        f"tls_key = {tls_dir / 'server.key'}\n"
        "[database]\n"
        f"url = {database_url}\n"
        "[storage]\n"
        f"path = {storage}\n"
        f"{extra}"
    )


def start_daemon(
    base: Path, name: str, tls_dir: Path, database_url: str, storage: Path, extra: str = ""
) -> CADaemon:
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "smartsync.ini"
    config.write_text(daemon_config(tls_dir, database_url, storage, extra))
    d = CADaemon(folder, config_path=config)
    d.ca_file = tls_dir / "ca.pem"
    return d.start()


@dataclass
class Cluster:
    tls_dir: Path
    storage: Path
    database_url: str
    daemons: dict[str, CADaemon]
    haproxy: HAProxy
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.haproxy.port}"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, *, json_body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None,
                source: str | None = None) -> tuple[int, Any, dict[str, str]]:
        """One request through HAProxy: (status, JSON body or bytes, response headers);
        ``source``: the client's own address (any 127.x.y.z works on Linux loopback)."""
        sent = dict(headers or {})
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.haproxy.port, context=self.context(), timeout=30,
            source_address=(source, 0) if source else None,
        )
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
            if got.get("content-type", "").startswith("application/json"):
                return response.status, json.loads(data), got
            return response.status, data, got
        finally:
            conn.close()

    def logs(self) -> str:
        parts = [f"--- {n} ---\n{d.log_text()}" for n, d in self.daemons.items()]
        return "\n".join([*parts, f"--- haproxy ---\n{self.haproxy.log_text()}"])

    def stop(self) -> None:
        self.haproxy.stop()
        for d in self.daemons.values():
            d.stop()


def start_cluster(
    base: Path, database_url: str, names: tuple[str, ...] = ("app1", "app2"), extra: str = ""
) -> Cluster:
    """``extra``: more config sections for every daemon (``[ldap]``, ``[kerberos]``...)."""
    tls_dir = make_tls(base / "tls")
    storage = base / "shared-chunks"
    daemons: dict[str, CADaemon] = {}
    try:
        for name in names:
            daemons[name] = start_daemon(base, name, tls_dir, database_url, storage, extra)
        port = free_port()
        proxy = HAProxy(
            base / "haproxy",
            render_sample(tls_dir, port, [(n, d.port) for n, d in daemons.items()]),
            port,
        )
        cluster = Cluster(tls_dir, storage, database_url, daemons, proxy)

        def ready() -> bool:
            try:
                return cluster.request("GET", "/healthz")[0] == 200
            except (OSError, ssl.SSLError, http.client.HTTPException):
                return False

        proxy.start(ready)
        return cluster
    except BaseException:
        for d in daemons.values():
            d.stop()
        raise
