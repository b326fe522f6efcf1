"""A hostile member against the real daemon and the real ``smartsync`` CLI (issue 14).

One editor must not be able to break every other copy, nor reach outside a copy: manifests that
lie about chunk sizes are refused (and a copy meeting one stored by an older server skips that
file and goes on), a pulled file is never written through a symbolic link inside the copy,
finalized engagements take no chunks, batch keys are per user and bound to their request, the
delta base cap holds per request, and odd input (lone surrogates, huge integers, Windows device
and short names, bidirectional controls) gets a JSON 400.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, running_daemon
from reliability import PASSWORD, add_engagements, add_users, cid, wait_for

from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_DELTA, CODEC_RAW, delta_payload, encode_records
from smartsyncd.core.manifest import content_id_of_binary, encode_binary
from smartsyncd.core.model import ChunkRef

pytestmark = pytest.mark.integration

CHUNKS_TYPE = "application/x-smartsync-chunks"


def smartsync_command() -> list[str]:
    script = shutil.which("smartsync")
    if script and Path(script).parent == Path(sys.executable).parent:
        return [script]
    return [sys.executable, "-c", "from smartsyncd.cli.client import main; main()"]


class Cli:
    """The real CLI with its own settings folder, signed in as one user."""

    def __init__(self, home: Path, d: Daemon, user: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        done = self.run("login", d.url, "--user", user, "--password-stdin",
                        "--trust-fingerprint", d.fingerprint, input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

    def run(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SMARTSYNC_PASSWORD"}
        env.update({"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "xdg")})
        return subprocess.run(
            [*smartsync_command(), "--config-dir", str(self.home / "cfg"), *args],
            input=input, capture_output=True, text=True, timeout=120, env=env, cwd=self.home,
        )

    def report(self, *args: str) -> dict[str, Any]:
        done = self.run("--json", *args)
        assert "Traceback" not in done.stderr, done.stderr
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        assert lines, (done.returncode, done.stdout, done.stderr)
        data: dict[str, Any] = json.loads(lines[-1])
        data["exit_code"] = done.returncode
        return data


def upload(d: Daemon, token: str, eng: str, *pieces: bytes) -> tuple[int, Any]:
    body = encode_records([(chunk_hash(p), CODEC_RAW, len(p), p) for p in pieces])
    return d.request("POST", f"/v1/engagements/{eng}/chunks", body=body,
                     content_type=CHUNKS_TYPE, token=token)


def put(path: str, data: bytes, base: int | None = None) -> dict[str, Any]:
    return {"path": path, "kind": "put", "base": base, "content": cid(data), "size": len(data),
            "manifest": [[chunk_hash(data), len(data)]] if data else []}


def commit(d: Daemon, token: str, eng: str, batch: str, changes: list[dict[str, Any]]) -> Any:
    return d.request("POST", f"/v1/engagements/{eng}/commit", token=token,
                     json_body={"batch": batch, "changes": changes})


def head(d: Daemon, token: str, eng: str) -> int:
    status, answer = d.request("GET", f"/v1/engagements/{eng}/changes", token=token)
    assert status == 200, answer
    return int(answer["head"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("member"))
    try:
        add_users(d, ["alice", "mallory", "bob"])
        add_engagements(d, ["acme"], {"alice": "editor", "mallory": "editor", "bob": "editor"})
        yield d
    finally:
        d.stop()


def test_a_manifest_lying_about_a_chunk_size_is_refused(server: Daemon) -> None:
    mallory = server.login("mallory", PASSWORD)
    data = b"a real chunk of a working paper " * 64
    assert upload(server, mallory, "acme", data, b"fine")[0] == 200
    before = head(server, mallory, "acme")
    h = chunk_hash(data)
    for claimed in (len(data) + 1, len(data) - 1, 1):
        body = encode_binary([ChunkRef(h, claimed)])
        lie = {"path": "Shared/TB.xlsx", "kind": "put", "base": None,
               "content": content_id_of_binary(body), "size": claimed, "manifest": [[h, claimed]]}
        status, answer = commit(server, mallory, "acme", f"lie-{claimed}",
                                [put("fine.txt", b"fine"), lie])
        assert status == 400, answer
        assert answer["error"] == "bad_request" and h in answer["message"], answer
        assert answer.get("path") == "Shared/TB.xlsx"
    assert head(server, mallory, "acme") == before  # nothing of either batch applied


def _tamper_size(d: Daemon, eng: str, path: str, data: bytes) -> None:
    """What a server before this fix stored for a lying commit: the manifest, change and head
    row of ``path`` give its one chunk a size one byte too many (content id and size agree
    with that lie). Done on the stopped daemon's SQLite database."""
    h = chunk_hash(data)
    body = encode_binary([ChunkRef(h, len(data) + 1)])
    lie = bytes.fromhex(content_id_of_binary(body))
    true = bytes.fromhex(cid(data))
    db = sqlite3.connect(d.data_dir / "metadata.sqlite3")
    try:
        with db:
            (eid,) = db.execute("SELECT id FROM engagements WHERE name = ?", (eng,)).fetchone()
            db.execute("INSERT INTO manifests (engagement_id, content, size, chunk_count, body)"
                       " VALUES (?, ?, ?, 1, ?)", (eid, lie, len(data) + 1, body))
            for table in ("files", "changes"):
                n = db.execute(f"UPDATE {table} SET content = ?, size = ? WHERE engagement_id = ?"
                               " AND path = ? AND content = ?",
                               (lie, len(data) + 1, eid, path, true)).rowcount
                assert n == 1, table
    finally:
        db.close()


def test_a_stored_lying_manifest_is_skipped_and_the_pull_goes_on(
    server: Daemon, tmp_path: Path
) -> None:
    add_engagements(server, ["old"], {"alice": "editor", "mallory": "editor"})
    alice = Cli(tmp_path / "alice", server, "alice")
    copy = tmp_path / "copy"
    assert alice.run("clone", f"{server.url}/old", str(copy)).returncode == 0
    mallory = server.login("mallory", PASSWORD)
    files = {"a.txt": b"first", "m.bin": b"the poisoned one " * 10, "z.txt": b"last"}
    assert upload(server, mallory, "old", *files.values())[0] == 200
    status, answer = commit(server, mallory, "old", "three",
                            [put(p, data) for p, data in files.items()])
    assert status == 200, answer
    port = server.port
    server.stop()
    _tamper_size(server, "old", "m.bin", files["m.bin"])
    server.listen = f"ssl:{port}:interface=127.0.0.1"
    server.start()

    report = alice.report("sync", str(copy))
    assert report.get("downloaded") == 2 and report["exit_code"] == 6, report
    skipped = {s["path"]: s["reason"] for s in report.get("skipped", [])}
    assert "m.bin" in skipped and "manifest" in skipped["m.bin"], report
    assert (copy / "a.txt").read_bytes() == b"first"
    assert (copy / "z.txt").read_bytes() == b"last"
    assert not (copy / "m.bin").exists()
    # the copy is not stuck at that change: the next one arrives
    mallory = server.login("mallory", PASSWORD)
    assert upload(server, mallory, "old", b"later")[0] == 200
    assert commit(server, mallory, "old", "later", [put("later.txt", b"later")])[0] == 200
    report = alice.report("sync", str(copy))
    assert report.get("downloaded") == 1 and not report.get("skipped"), report
    assert (copy / "later.txt").read_bytes() == b"later"
    # and a new clone finishes, with that one file reported: exit 6 ("partial"), as the
    # sync above, so a script can tell a copy with a file missing from a whole one
    fresh = tmp_path / "fresh"
    report = alice.report("clone", f"{server.url}/old", str(fresh))
    assert report["exit_code"] == 6 and report["partial"], report
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert list(skipped) == ["m.bin"] and "manifest" in skipped["m.bin"], report
    assert sorted(p.name for p in fresh.iterdir() if p.name != ".smartsync") == [
        "a.txt", "later.txt", "z.txt"]


def test_a_pull_never_writes_through_a_symlinked_folder(server: Daemon, tmp_path: Path) -> None:
    add_engagements(server, ["links"], {"alice": "editor", "mallory": "editor"})
    alice = Cli(tmp_path / "alice", server, "alice")
    copy = tmp_path / "copy"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"not the copy's")
    assert alice.run("clone", f"{server.url}/links", str(copy)).returncode == 0
    (copy / "Shared").symlink_to("../outside")
    mallory = server.login("mallory", PASSWORD)
    assert upload(server, mallory, "links", b"evil", b"fine")[0] == 200
    status, answer = commit(server, mallory, "links", "evil", [
        put("Shared/evil.txt", b"evil"), put("Shared/keep.txt", b"evil"),
        put("Shared/deep/er.txt", b"evil"), put("fine.txt", b"fine")])
    assert status == 200, answer

    report = alice.report("sync", str(copy))
    assert sorted(os.listdir(outside)) == ["keep.txt"], report
    assert (outside / "keep.txt").read_bytes() == b"not the copy's"
    skipped = {s["path"] for s in report.get("skipped", [])}
    assert {"Shared/evil.txt", "Shared/keep.txt", "Shared/deep/er.txt"} <= skipped, report
    assert (copy / "fine.txt").read_bytes() == b"fine"
    assert (copy / "Shared").is_symlink()


def _raw(d: Daemon, token: str, method: str, path: str, body: str) -> tuple[int, Any, bytes]:
    """A request whose JSON text is sent as written (``\\ud800`` escapes, huge integers)."""
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=d.ssl_context(), timeout=30)
    try:
        conn.request(method, path, body=body.encode(), headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    parsed = json.loads(raw) if resp.getheader("Content-Type", "").startswith(
        "application/json") else None
    return resp.status, parsed, raw


def test_lone_surrogates_and_huge_integers_get_a_json_400(server: Daemon) -> None:
    token = server.login("alice", PASSWORD)
    lone, huge, eng = '"a\\ud800"', str(2**64), "/v1/engagements/acme"
    cases = [
        ("POST", f"{eng}/commit", '{"batch": "s1", "changes": [{"path": LONE, "kind": "put",'
         ' "base": null, "content": "EMPTY", "size": 0, "manifest": []}]}'),
        ("POST", f"{eng}/commit", '{"batch": LONE, "changes": []}'),
        ("POST", f"{eng}/locks", '{"path": LONE}'),
        ("POST", f"{eng}/copies", '{"copy": "c1", "host": LONE}'),
        ("POST", f"{eng}/copies/c1/report", '{"host": LONE, "unsynced": 1}'),
        ("POST", f"{eng}/copies/c1/report", '{"host": "h", "unsynced": HUGE}'),
        ("POST", f"{eng}/copies/c1/report", '{"host": "h", "unsynced": I64}'),
        ("POST", f"{eng}/locks", '{"path": "a.txt", "seconds": HUGE}'),
    ]
    words = {"LONE": lone, "HUGE": huge, "I64": str(2**63), "EMPTY": cid(b"")}
    for method, path, template in cases:
        body = re.sub("|".join(words), lambda m: words[m.group(0)], template)
        status, parsed, raw = _raw(server, token, method, path, body)
        assert status == 400, (path, body, status, raw[:200])
        assert isinstance(parsed, dict) and parsed["error"] in ("bad_request", "invalid_path"), raw
        assert b"Traceback" not in raw
    assert server.request("GET", "/healthz")[0] == 200
    assert "Traceback" not in server.log_text()


def test_windows_device_short_names_and_invisible_characters_are_refused(server: Daemon) -> None:
    token = server.login("alice", PASSWORD)
    before = head(server, token, "acme")
    for bad in ("CONIN$", "dir/conout$.txt", "invoice\u202efdp.exe", "a\u200db.docx",
                "\u2066x\u2069.txt", "PROGRA~1/x.txt", "REPORT~1.DOC", "zero\u200bwidth"):
        status, answer = commit(server, token, "acme", f"bad-{bad!r}", [put(bad, b"")])
        assert status == 400 and answer["error"] == "invalid_path", (bad, answer)
    assert head(server, token, "acme") == before


def test_a_finalized_engagement_takes_no_chunks(server: Daemon) -> None:
    add_engagements(server, ["signed"], {"alice": "editor"})
    token = server.login("alice", PASSWORD)
    assert upload(server, token, "signed", b"before sign-off")[0] == 200
    done = server.admin("engagement", "finalize", "signed", "--force", "--reason", "signed off")
    assert done.returncode == 0, done.stderr
    big = os.urandom(200_000)
    status, answer = upload(server, token, "signed", big)
    assert status == 423 and answer["error"] == "finalized", answer
    status, answer = server.request("POST", "/v1/engagements/signed/chunks/missing", token=token,
                                    json_body={"chunks": [chunk_hash(big)]})
    assert status == 423 and answer["error"] == "finalized", answer
    # reading stays open, and reopening takes chunks again
    assert server.request("GET", "/v1/engagements/signed/changes", token=token)[0] == 200
    assert server.admin("engagement", "reopen", "signed", "--reason", "amended").returncode == 0
    assert upload(server, token, "signed", big)[0] == 200


def test_batch_keys_are_per_user_and_bound_to_their_request(server: Daemon) -> None:
    add_engagements(server, ["keys"], {"alice": "editor", "mallory": "editor"})
    alice, mallory = server.login("alice", PASSWORD), server.login("mallory", PASSWORD)
    assert upload(server, alice, "keys", b"alice's", b"mallory's", b"other")[0] == 200
    first = commit(server, alice, "keys", "k-1", [put("a.txt", b"alice's")])
    assert first[0] == 200 and first[1]["results"][0]["status"] == "applied", first
    # another member's request with that key is a batch of its own, not alice's answer
    status, answer = commit(server, mallory, "keys", "k-1", [put("m.txt", b"mallory's")])
    assert status == 200 and answer["results"][0]["path"] == "m.txt", answer
    assert answer["results"][0]["status"] == "applied"
    # alice's key with other changes: 409, nothing applied
    before = head(server, alice, "keys")
    status, answer = commit(server, alice, "keys", "k-1", [put("b.txt", b"other")])
    assert status == 409 and answer["error"] == "batch_reused", answer
    assert head(server, alice, "keys") == before
    # the very same request again is the replay it always was
    again = commit(server, alice, "keys", "k-1", [put("a.txt", b"alice's")])
    assert again == first


def test_the_delta_base_cap_holds_per_request_not_per_slice(server: Daemon) -> None:
    # each ~4 MiB slice of this upload names 40 MiB of base ranges (under the 64 MiB cap);
    # the request as a whole names 80 MiB: refused, nothing stored
    add_engagements(server, ["deltas"], {"mallory": "editor"})
    token = server.login("mallory", PASSWORD)
    pieces = [os.urandom(256 << 10) for _ in range(8)]  # a 2 MiB version to name ranges of
    assert upload(server, token, "deltas", *pieces)[0] == 200
    whole = b"".join(pieces)
    refs = [[chunk_hash(p), len(p)] for p in pieces]
    body_ = encode_binary([ChunkRef(h, n) for h, n in refs])
    base = content_id_of_binary(body_)
    status, answer = commit(server, token, "deltas", "base", [
        {"path": "base.bin", "kind": "put", "base": None, "content": base, "size": len(whole),
         "manifest": refs}])
    assert status == 200, answer
    records: list[tuple[str, int, int, bytes]] = []
    pads: list[bytes] = []
    for slice_no in range(2):
        for i in range(40):
            offset = slice_no * 40 + i
            prefix = whole[offset : offset + (1 << 20)]
            raw = prefix[:2000] + bytes([slice_no, i])
            records.append((chunk_hash(raw), CODEC_DELTA, len(raw),
                            delta_payload(base, offset, prefix, raw)))
        for _ in range(17):  # fill the slice past 4 MiB with plain chunks
            pad = os.urandom(256 << 10)
            pads.append(pad)
            records.append((chunk_hash(pad), CODEC_RAW, len(pad), pad))
    status, answer = server.request("POST", "/v1/engagements/deltas/chunks",
                                    body=encode_records(records), content_type=CHUNKS_TYPE,
                                    token=token)
    assert status == 413 and answer["error"] == "too_large", (status, answer)
    status, answer = server.request("POST", "/v1/engagements/deltas/chunks/missing", token=token,
                                    json_body={"chunks": [chunk_hash(p) for p in pads]})
    assert status == 200 and len(answer["missing"]) == len(pads), answer
    assert server.request("GET", "/healthz")[0] == 200


def _handshake(d: Daemon, ciphers: str) -> str | None:
    """The cipher a TLS 1.2 handshake with only ``ciphers`` agrees on, None if refused."""
    context = d.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                cipher = tls.cipher()
                return cipher[0] if cipher else None
    except ssl.SSLError:
        return None


def test_tls_1_2_offers_only_aead_ciphers(server: Daemon) -> None:
    cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA"
    assert _handshake(server, cbc) is None
    assert _handshake(server, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384") is None
    assert _handshake(server, "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert _handshake(server, "ECDHE-ECDSA-CHACHA20-POLY1305") == "ECDHE-ECDSA-CHACHA20-POLY1305"


def _open_to_others(root: Path) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in [".", *files]:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            if os.stat(full).st_mode & 0o077:
                found.append(f"{full} {oct(os.stat(full).st_mode & 0o777)}")
    return found


def test_the_data_folder_and_log_are_private_under_an_open_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what twistd inherits from a typical shell or unit file
    try:
        d = running_daemon(tmp_path)
    finally:
        os.umask(old)
    try:
        add_users(d, ["alice"])
        add_engagements(d, ["acme"], {"alice": "editor"})
        token = d.login("alice", PASSWORD)
        assert upload(d, token, "acme", b"a working paper")[0] == 200
        assert commit(d, token, "acme", "b", [put("a.txt", b"a working paper")])[0] == 200
        assert _open_to_others(d.data_dir) == []
        assert os.stat(d.logfile).st_mode & 0o077 == 0
        assert "readable by other accounts" not in d.log_text()
        # an older data folder (made under umask 022) and a key others can read
        port = d.port
        d.stop()
        os.chmod(d.data_dir, 0o755)
        os.chmod(d.key_path, 0o644)
        d.listen = f"ssl:{port}:interface=127.0.0.1"
        d.start()
        assert stat.S_IMODE(os.stat(d.data_dir).st_mode) == 0o700
        log = wait_for(lambda: "readable by other accounts" in d.log_text() and d.log_text(),
                       10, "the start-up warning")
        assert f"TLS private key {d.key_path} is readable by other accounts (mode 0644)" in log
    finally:
        d.stop()
