"""The real ``smartsync-admin`` against a running daemon's data folder, checked over HTTPS."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from blake3 import blake3
from daemon import Daemon, admin_command
from twisted.internet import reactor

from smartsyncd.auth.ldap import LdapConfig
from smartsyncd.cli.admin import Admin, AdminError, main
from smartsyncd.core.manifest import content_id
from smartsyncd.core.model import ChunkRef
from smartsyncd.service.config import load_config
from smartsyncd.storage.api import Grant
from smartsyncd.storage.sqlite import open_server_store
from smartsyncd.testing.ldapserver import firm_directory, make_test_pki, start_directory

pytestmark = pytest.mark.integration


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert result.returncode == code, f"exit {result.returncode}: {result.stdout} {result.stderr}"
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr
    return result.stderr


def test_user_add_list_passwd(daemon: Daemon) -> None:
    ok(daemon.admin("user", "add", "alice", "--password-stdin", input="first pw\n"))
    ok(daemon.admin("user", "add", "bob", "--password-stdin", input="bob pw\n"))
    listing = ok(daemon.admin("user", "list")).splitlines()
    assert [line.split("\t")[0] for line in listing] == ["alice", "bob"]

    assert daemon.login("alice", "first pw")
    ok(daemon.admin("user", "passwd", "alice", "--password-stdin", input="second pw\n"))
    status, answer = daemon.request(
        "POST", "/v1/login", json_body={"user": "alice", "password": "first pw"}
    )
    assert status == 401, answer
    assert daemon.login("alice", "second pw")

    refused(
        daemon.admin("user", "add", "alice", "--password-stdin", input="x\n"), 1, "already exists"
    )
    refused(
        daemon.admin("user", "passwd", "nobody", "--password-stdin", input="x\n"), 1, "unknown user"
    )
    refused(
        daemon.admin("user", "add", "carol", "--password-stdin", input="\n"), 1, "empty password"
    )
    assert "carol" not in ok(daemon.admin("user", "list"))


def test_engagement_create_and_list(daemon: Daemon) -> None:
    ok(daemon.admin("engagement", "create", "acme-2026", "--title", "ACME Ltd 2026 audit"))
    ok(daemon.admin("engagement", "create", "zeta.co_1"))
    rows = [line.split("\t") for line in ok(daemon.admin("engagement", "list")).splitlines()]
    assert rows == [
        ["acme-2026", "head 0", "ACME Ltd 2026 audit"],
        ["zeta.co_1", "head 0", "zeta.co_1"],
    ]

    refused(daemon.admin("engagement", "create", "acme-2026"), 1, "already exists")
    refused(daemon.admin("engagement", "create", ".hidden"), 2, "invalid engagement name")
    assert len(ok(daemon.admin("engagement", "list")).splitlines()) == 2


@pytest.mark.parametrize("bad", [".hidden", "a/b", "with space", "x" * 65, "ünïcode", "", ".."])
def test_bad_engagement_names_are_refused_before_anything_opens(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: validation happens before the store or the reactor is touched.
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(tmp_path / "data"), "engagement", "create", bad])
    assert exited.value.code == 2
    assert "invalid engagement name" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_grant_revoke_and_grants_decide_what_a_user_sees(daemon: Daemon) -> None:
    ok(daemon.admin("user", "add", "alice", "--password-stdin", input="pw\n"))
    ok(daemon.admin("engagement", "create", "acme-2026"))
    token = daemon.login("alice", "pw")
    assert daemon.request("GET", "/v1/engagements", token=token) == (200, {"engagements": []})

    ok(daemon.admin("grant", "acme-2026", "--user", "alice", "--role", "editor"))
    ok(daemon.admin("grant", "acme-2026", "--group", "Audit Team", "--role", "reader"))
    status, answer = daemon.request("GET", "/v1/engagements", token=token)
    assert status == 200
    assert [(e["name"], e["role"]) for e in answer["engagements"]] == [("acme-2026", "editor")]

    rows = sorted(line.split("\t") for line in ok(daemon.admin("grants")).splitlines())
    assert rows == [
        ["acme-2026", "group", "Audit Team", "reader"],
        ["acme-2026", "user", "alice", "editor"],
    ]
    assert ok(daemon.admin("grants", "acme-2026")) == ok(daemon.admin("grants"))

    refused(
        daemon.admin("grant", "nope", "--user", "alice", "--role", "reader"),
        1,
        "unknown engagement",
    )
    refused(
        daemon.admin("grant", "acme-2026", "--user", "mallory", "--role", "reader"),
        1,
        "unknown user",
    )
    refused(daemon.admin("grants", "nope"), 1, "unknown engagement")
    bad_role = daemon.admin("grant", "acme-2026", "--user", "alice", "--role", "owner")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr

    ok(daemon.admin("revoke", "acme-2026", "--user", "alice"))
    assert daemon.request("GET", "/v1/engagements", token=token) == (200, {"engagements": []})
    refused(daemon.admin("revoke", "acme-2026", "--user", "alice"), 1, "has no grant")
    ok(daemon.admin("revoke", "acme-2026", "--group", "audit team"))
    assert ok(daemon.admin("grants")).strip() == "(no grants)"


def _upload_one_file(daemon: Daemon, token: str, engagement: str, data: bytes) -> None:
    digest = blake3(data).hexdigest()
    record = bytes.fromhex(digest) + bytes([0]) + struct.pack(">II", len(data), len(data)) + data
    status, answer = daemon.request(
        "POST",
        f"/v1/engagements/{engagement}/chunks",
        body=record,
        content_type="application/x-smartsync-chunks",
        token=token,
    )
    assert status == 200, answer
    chunks = [ChunkRef(digest, len(data))]
    change = {
        "path": "Working papers/B-1 Cash.txt",
        "kind": "put",
        "base": None,
        "content": content_id(chunks),
        "size": len(data),
        "manifest": [[digest, len(data)]],
    }
    status, answer = daemon.request(
        "POST",
        f"/v1/engagements/{engagement}/commit",
        json_body={"batch": str(uuid.uuid4()), "changes": [change]},
        token=token,
    )
    assert status == 200, answer
    assert answer["results"][0]["status"] == "applied"


def test_fsck_is_clean_then_finds_a_corrupted_pack_byte(daemon: Daemon) -> None:
    ok(daemon.admin("user", "add", "alice", "--password-stdin", input="pw\n"))
    ok(daemon.admin("engagement", "create", "acme-2026"))
    ok(daemon.admin("grant", "acme-2026", "--user", "alice", "--role", "editor"))
    data = os.urandom(20_000)
    _upload_one_file(daemon, daemon.login("alice", "pw"), "acme-2026", data)

    assert "no problems" in ok(daemon.admin("fsck"))

    packs = list((daemon.data_dir / "chunks").rglob("*.pack"))
    assert len(packs) == 1
    blob = bytearray(packs[0].read_bytes())
    where = blob.find(data[10_000:10_032])
    assert where > 0, "the chunk's bytes should be in the pack (stored raw: random data)"
    blob[where] ^= 0xFF
    packs[0].write_bytes(bytes(blob))

    result = daemon.admin("fsck")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "acme-2026" in result.stdout
    assert "problem(s) found" in result.stdout


def test_read_commands_refuse_a_data_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [*admin_command(), "--data-dir", str(missing), "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    refused(result, 1, "no server data", str(missing))
    assert not missing.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["grant", "acme"],
        ["grant", "acme", "--user", "a", "--group", "g", "--role", "reader"],
        ["--config", "missing.ini", "--data-dir", "d", "user", "list"],
        ["--config", "missing.ini", "user", "list"],
        ["user", "add", "bad name", "--password-stdin"],
    ],
)
def test_usage_errors_exit_2(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(("usage:", "smartsync-admin: error:")), err
    assert not (tmp_path / "data").exists()


def test_config_file_finds_the_same_data_as_the_daemon(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "smartsync.ini"
    config.parent.mkdir()
    config.write_text("[server]\ndata_dir = ../srv\n")
    run = [*admin_command(), "--config", str(config)]
    ok(
        subprocess.run(
            [*run, "engagement", "create", "e1"], capture_output=True, text=True, timeout=60
        )
    )
    assert (tmp_path / "srv" / "metadata.sqlite3").exists()
    listing = subprocess.run(
        [*admin_command(), "--data-dir", str(tmp_path / "srv"), "engagement", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok(listing).startswith("e1\t")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_group_grants_store_the_directory_id_with_the_name(tmp_path: Path) -> None:
    # In-process against the in-memory directory fixture (a real LDAP server on loopback).
    pki = make_test_pki(str(tmp_path / "pki"))
    server = start_directory(reactor, firm_directory(), pki=pki)
    store = await open_server_store(str(tmp_path / "data"), reactor=reactor)
    try:
        ldap = LdapConfig(
            urls=[server.url],
            base_dn="DC=firm,DC=example",
            ca_file=pki.ca_file,
            bind_dn="CN=SmartSync Service,CN=Users,DC=firm,DC=example",
            bind_password="svc-secret",
            netbios_domain="FIRM",
            upn_suffix="firm.example",
            group_mode="memberof",
            timeout=2.0,
            connect_timeout=2.0,
        )
        config = replace(load_config(data_dir=str(tmp_path / "data")), ldap=ldap)
        out = io.StringIO()
        admin = Admin(store, config, reactor, out)
        await admin.engagement_create("acme-2026", None)
        await admin.grant("acme-2026", None, "Audit Team", "reader")
        await admin.grant("acme-2026", "FIRM\\Alice", None, "editor")  # a directory-only user
        assert sorted(await store.list_grants("acme-2026"), key=lambda g: g.kind) == [
            Grant("acme-2026", "group", "S-1-5-21-1000-2000-3000-2001", "Audit Team", "reader"),
            # the account's SID: a local "alice" is another principal (issue 14)
            Grant("acme-2026", "user", "ad:S-1-5-21-1000-2000-3000-1101", "alice", "editor"),
        ]
        assert "(S-1-5-21-1000-2000-3000-2001)" in out.getvalue()

        with pytest.raises(AdminError, match="No Such Group"):
            await admin.grant("acme-2026", None, "No Such Group", "reader")
        with pytest.raises(AdminError, match="not found in the directory"):
            await admin.grant("acme-2026", "nobody", None, "reader")
        # Revoking by the display name needs no directory lookup.
        await admin.revoke("acme-2026", None, "audit team")
        assert [g.kind for g in await store.list_grants("acme-2026")] == ["user"]
    finally:
        await store.close()
        await server.stop()


def test_a_reader_closing_the_pipe_gets_no_traceback(daemon: Daemon) -> None:
    ok(daemon.admin("user", "add", "pipe-reader", "--password-stdin", input="pw pipe\n"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the tool writes a byte (like `| head -0`)
    try:
        done = subprocess.run(
            [*admin_command(), "--data-dir", str(daemon.data_dir), "user", "list"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_version_and_the_system_wide_default_config(tmp_path: Path, daemon: Daemon) -> None:
    import smartsyncd

    version = subprocess.run([*admin_command(), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"smartsync-admin {smartsyncd.__version__}"
    # With no --config and no --data-dir the default config file names the data folder.
    config = tmp_path / "etc-smartsync.ini"
    config.write_text(f"[server]\ndata_dir = {daemon.data_dir}\n")
    ok(daemon.admin("user", "add", "from-default", "--password-stdin", input="pw default\n"))
    listing = subprocess.run(
        [*admin_command(), "user", "list"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env={**os.environ, "SMARTSYNC_CONFIG": str(config)},
    )
    assert listing.returncode == 0, listing.stderr
    assert "from-default" in listing.stdout
