"""The real ``smartsync`` CLI through a real HTTP CONNECT proxy (Debian's tinyproxy) to the real
daemon: from HTTPS_PROXY and from --proxy, with proxy credentials, bypassed with --proxy direct,
and clear errors (nothing changed) when the proxy refuses or is down. TLS runs end to end inside
the tunnel, so certificate pinning works unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connectproxy import ConnectProxy
from daemon import Daemon
from pg import free_port
from test_cli_client import PASSWORD, Client, provisioned

pytestmark = pytest.mark.integration

NO_SYSTEM_PROXY = {"HTTPS_PROXY": "", "https_proxy": "", "NO_PROXY": "", "no_proxy": ""}


def system_proxy(url: str) -> dict[str, str]:
    """The environment of a machine whose proxy is ``url`` (both spellings: the lower-case one
    wins in urllib, and an empty one removes the setting)."""
    return {**NO_SYSTEM_PROXY, "HTTPS_PROXY": url, "https_proxy": url}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = provisioned(tmp_path_factory.mktemp("proxied"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ConnectProxy]:
    p = ConnectProxy(tmp_path / "proxy").start()
    try:
        yield p
    finally:
        p.stop()


def new_client(home: Path) -> Client:
    home.mkdir()
    return Client(home)


def target(server: Daemon) -> str:
    return server.url.removeprefix("https://")


def sign_in(client: Client, server: Daemon, *extra: str, env: dict[str, str] | None = None):
    return client.run(
        "login", server.url, "--user", "alice", "--password-stdin",
        "--trust-fingerprint", server.fingerprint, *extra,
        input=PASSWORD + "\n", env={**NO_SYSTEM_PROXY, **(env or {})},
    )


def test_https_proxy_from_the_environment_carries_login_clone_and_sync(
    server: Daemon, proxy: ConnectProxy, tmp_path: Path
) -> None:
    client = new_client(tmp_path / "home")
    env = system_proxy(proxy.url)
    done = sign_in(client, server, env=env)
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "copy"
    cloned = client.run("clone", f"{server.url}/acme-2026", str(copy), env=env)
    assert cloned.returncode == 0, cloned.stderr
    (copy / "B-1 Cash.xlsx").write_bytes(b"cash lead schedule" * 100)
    synced = client.run("sync", str(copy), env=env)
    assert synced.returncode == 0, synced.stderr
    tunnels = proxy.tunnels()
    assert tunnels and set(tunnels) == {target(server)}  # every connection went through it
    # a second copy made directly sees what the proxied copy sent
    direct = new_client(tmp_path / "direct")
    assert sign_in(direct, server).returncode == 0
    other = tmp_path / "other"
    assert direct.run("clone", f"{server.url}/acme-2026", str(other),
                      env=NO_SYSTEM_PROXY).returncode == 0
    assert (other / "B-1 Cash.xlsx").read_bytes() == b"cash lead schedule" * 100


def test_proxy_with_credentials_and_the_direct_override(
    server: Daemon, tmp_path: Path
) -> None:
    guarded = ConnectProxy(tmp_path / "guarded", basic_auth=("firmproxy", "pr0xy-pass")).start()
    try:
        client = new_client(tmp_path / "home")
        refused = sign_in(client, server, "--proxy", guarded.url, "--attempts", "1")
        assert refused.returncode != 0
        assert "refused the tunnel" in refused.stderr and "407" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not (client.config / "config.json").exists()  # nothing pinned or stored

        with_password = guarded.url.replace("http://", "http://firmproxy:pr0xy-pass@")
        done = sign_in(client, server, "--proxy", with_password)
        assert done.returncode == 0, done.stderr
        assert "pr0xy-pass" not in done.stdout + done.stderr
        assert "pr0xy-pass" not in client.settings().__repr__()  # not stored either
        before = len(guarded.tunnels())
        listed = client.run("engagements", server.url,
                            env=system_proxy(with_password))
        assert listed.returncode == 0, listed.stderr
        assert len(guarded.tunnels()) > before
        before = len(guarded.tunnels())
        direct = client.run("engagements", server.url, "--proxy", "direct",
                            env=system_proxy(with_password))
        assert direct.returncode == 0, direct.stderr
        assert len(guarded.tunnels()) == before  # --proxy direct went around it
    finally:
        guarded.stop()


def test_a_proxy_that_is_down_is_a_clear_network_error(server: Daemon, tmp_path: Path) -> None:
    client = new_client(tmp_path / "home")
    assert sign_in(client, server).returncode == 0
    copy = tmp_path / "copy"
    assert client.run("clone", f"{server.url}/acme-2026", str(copy),
                      env=NO_SYSTEM_PROXY).returncode == 0
    (copy / "kept.txt").write_bytes(b"local work")
    down = f"http://127.0.0.1:{free_port()}"
    failed = client.run("sync", str(copy), "--proxy", down, "--attempts", "1")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert (copy / "kept.txt").read_bytes() == b"local work"  # nothing changed locally


def test_system_trust_follows_the_system_store(server: Daemon, tmp_path: Path) -> None:
    """``--system-trust``: the server is trusted when the system's roots vouch for it. On Linux
    the system store is OpenSSL's default (``SSL_CERT_FILE`` points it at a file here: the
    daemon's certificate, as a firm's CA deployed to laptops would be); with the system's own
    roots only, the same server is refused, and nothing is stored."""
    client = new_client(tmp_path / "home")
    firm_store = {**NO_SYSTEM_PROXY, "SSL_CERT_FILE": str(server.cert_path)}
    refused = client.run("login", server.url, "--user", "alice", "--password-stdin",
                         "--system-trust", input=PASSWORD + "\n", env=NO_SYSTEM_PROXY)
    assert refused.returncode == 4 and "not trusted" in refused.stderr, refused.stderr
    assert not (client.config / "config.json").exists()
    done = client.run("login", server.url, "--user", "alice", "--password-stdin",
                      "--system-trust", input=PASSWORD + "\n", env=firm_store)
    assert done.returncode == 0, done.stderr
    assert client.settings()["servers"][server.url]["ca_file"] == "system"
    assert client.run("engagements", server.url, env=firm_store).returncode == 0
