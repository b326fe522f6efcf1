"""The streamed chunk upload path (web/upload.py) against the real daemon over TLS, with raw
sockets so the test controls exactly which bytes reach the server and when.

- a forged record after several good batches: 400 ``bad_chunk``, no chunk indexed, no pack and
  no temp file left, and the same connection still answers the next request;
- a body that grows past the endpoint limit without declaring its length (chunked): 413 and the
  connection closed, nothing indexed, the temp pack removed; a declared length over it: 413
  before any body byte is sent;
- a missing/foreign token, an engagement not granted, a reader: 401 / 404 / 403 answered
  while the client has sent only the headers of a 20 MB upload (the body is never read);
- a client that disconnects mid-body: the temp pack is removed, nothing indexed;
- a good streamed upload with duplicates in the body: all stored once, fetchable, fsck clean.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, running_daemon

from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_RAW, decode_to_raw, encode_records

pytestmark = pytest.mark.integration

PASSWORD = "pw-stream-1234"
CHUNK_BODY_LIMIT = 32 * 1024 * 1024  # the daemon's default Limits.chunk_body
UPLOAD = "/v1/engagements/acme/chunks"


def raw_records(n: int, size: int = 200_000, seed: int = 0) -> list[tuple[str, int, int, bytes]]:
    out = []
    for i in range(n):
        unit = f"{seed}-{i}-".encode()
        data = (unit * (size // len(unit) + 1))[:size]
        out.append((chunk_hash(data), CODEC_RAW, len(data), data))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = running_daemon(tmp_path_factory.mktemp("stream"))
    try:
        for user in ("alice", "rita", "bob"):
            assert d.admin("user", "add", user, "--password-stdin", input=PASSWORD + "\n").returncode == 0
        for eng in ("acme", "other"):
            assert d.admin("engagement", "create", eng).returncode == 0
        assert d.admin("grant", "acme", "--user", "alice", "--role", "editor").returncode == 0
        assert d.admin("grant", "acme", "--user", "rita", "--role", "reader").returncode == 0
        assert d.admin("grant", "other", "--user", "bob", "--role", "editor").returncode == 0
        yield {
            "d": d,
            "alice": d.login("alice", PASSWORD),
            "rita": d.login("rita", PASSWORD),
            "bob": d.login("bob", PASSWORD),
        }
    finally:
        d.stop()


def connect(d: Daemon) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    return d.ssl_context().wrap_socket(raw, server_hostname="localhost")


def head(path: str, token: str | None, length: int | None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/x-smartsync-chunks"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


_LEFTOVER: dict[int, bytes] = {}  # bytes read past one response, per socket


def read_response(sock: ssl.SSLSocket, deadline: float = 20.0) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 response (Content-Length or chunked body; none for 1xx)."""
    sock.settimeout(deadline)
    data = _LEFTOVER.pop(id(sock), b"")

    def need(n: int) -> None:
        nonlocal data
        while len(data) < n:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError(f"closed inside a response: {data[:200]!r}")
            data += piece

    while b"\r\n\r\n" not in data:
        need(len(data) + 1)
    header, _, data = data.partition(b"\r\n\r\n")
    status_line, *header_lines = header.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    body = b""
    if status >= 200 and headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in data:
                need(len(data) + 1)
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            need(size + 2)
            body, data = body + data[:size], data[size + 2 :]
            if size == 0:
                break
    elif status >= 200:
        length = int(headers.get("content-length", "0"))
        need(length)
        body, data = data[:length], data[length:]
    _LEFTOVER[id(sock)] = data
    parsed: Any = body
    if headers.get("content-type", "").startswith("application/json"):
        parsed = json.loads(body)
    return status, headers, parsed


def missing(d: Daemon, token: str, hashes: list[str]) -> list[str]:
    status, answer = d.request(
        "POST", "/v1/engagements/acme/chunks/missing", json_body={"chunks": hashes}, token=token
    )
    assert status == 200, answer
    return list(answer["missing"])


def chunk_files(d: Daemon) -> list[str]:
    """Every file (packs and temp files) under the chunk store's engagement folders."""
    root = Path(d.data_dir) / "chunks"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".health-probe")


def wait_until(condition: Any, what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_bad_chunk_mid_stream_refuses_everything_and_keeps_the_connection(server: dict[str, Any]) -> None:
    d, alice = server["d"], server["alice"]
    before = chunk_files(d)
    good = raw_records(60, seed=1)  # 12 MB: several 4 MiB batches are verified and written first
    forged_data = b"forged" * 1000
    forged = ("ab" * 32, CODEC_RAW, len(forged_data), forged_data)
    body = encode_records([*good, forged, *raw_records(5, seed=2)])
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, alice, len(body)))
        for start in range(0, len(body), 256 * 1024):
            sock.sendall(body[start : start + 256 * 1024])
        status, _, answer = read_response(sock)
        assert status == 400 and answer["error"] == "bad_chunk", answer
        assert answer["chunk"] == "ab" * 32
        # the same connection still serves the next request
        ok_body = encode_records(raw_records(1, seed=3))
        sock.sendall(head(UPLOAD, alice, len(ok_body)) + ok_body)
        status, _, answer = read_response(sock)
        assert status == 200 and answer == {"stored": 1, "present": 0}, answer
    assert missing(d, alice, [r[0] for r in good]) == [r[0] for r in good]
    after = chunk_files(d)
    assert not [f for f in after if f.endswith(".tmp")], after
    assert len(set(after) - set(before)) == 1  # only the pack of the good request


def test_stream_over_the_limit_is_413_and_leaves_nothing(server: dict[str, Any]) -> None:
    d, alice = server["d"], server["alice"]
    before = chunk_files(d)
    records = raw_records(180, seed=4)  # 36 MB of records, over the 32 MiB endpoint limit
    body = encode_records(records)
    assert len(body) > CHUNK_BODY_LIMIT
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, alice, None))
        status = None
        try:
            for start in range(0, len(body), 1 << 20):
                piece = body[start : start + (1 << 20)]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server closed after its answer
        status, headers, answer = read_response(sock)
        assert status == 413 and answer["error"] == "too_large" and answer["limit"] == CHUNK_BODY_LIMIT
        assert headers["connection"].lower() == "close"
    wait_until(lambda: chunk_files(d) == before, "the temp pack to be removed")
    assert missing(d, alice, [r[0] for r in records[:10]]) == [r[0] for r in records[:10]]

    # a declared length over the limit: answered before any body byte is sent
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, alice, CHUNK_BODY_LIMIT + 1))
        status, _, answer = read_response(sock)
        assert status == 413 and answer["limit"] == CHUNK_BODY_LIMIT


@pytest.mark.parametrize(
    ("who", "path", "status", "error"),
    [
        (None, UPLOAD, 401, None),
        ("bogus-token", UPLOAD, 401, None),
        ("bob", UPLOAD, 404, "not_found"),  # no role on acme: same answer as an unknown name
        ("bob", "/v1/engagements/nosuch/chunks", 404, "not_found"),
        ("rita", UPLOAD, 403, "forbidden"),  # a reader may not upload
    ],
)
def test_auth_is_refused_before_the_body_is_read(
    server: dict[str, Any], who: str | None, path: str, status: int, error: str | None
) -> None:
    d = server["d"]
    token = server.get(who, who) if who is not None else None
    with connect(d) as sock:
        # Only the headers of a 20 MB upload: the answer must come without any body byte.
        sock.sendall(head(path, token, 20_000_000))
        got, headers, answer = read_response(sock, deadline=10)
        assert got == status, answer
        if error is not None:
            assert answer["error"] == error
        assert headers["connection"].lower() == "close"
        sock.settimeout(10)
        assert sock.recv(100) == b""  # and the connection is closed


def test_expect_continue_is_sent_only_to_an_allowed_caller(server: dict[str, Any]) -> None:
    d = server["d"]
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, server["rita"], 1000, extra="Expect: 100-continue\r\n"))
        status, _, _ = read_response(sock)
        assert status == 403  # no "100 Continue" first
    body = encode_records(raw_records(2, seed=5))
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, server["alice"], len(body), extra="Expect: 100-continue\r\n"))
        status, _, _ = read_response(sock)
        assert status == 100
        sock.sendall(body)
        status, _, answer = read_response(sock)
        assert status == 200 and answer == {"stored": 2, "present": 0}


def test_disconnect_mid_body_removes_the_temp_pack(server: dict[str, Any]) -> None:
    d, alice = server["d"], server["alice"]
    before = chunk_files(d)
    records = raw_records(45, seed=6)  # 9 MB: two 4 MiB batches reach the temp pack
    body = encode_records(records)
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, alice, len(body) + 1000))
        sock.sendall(body)  # several batches reach the pack's temp file
        wait_until(lambda: any(f.endswith(".tmp") for f in chunk_files(d)), "a temp pack being written")
    wait_until(lambda: chunk_files(d) == before, "the temp pack to be removed after the disconnect")
    assert missing(d, alice, [r[0] for r in records]) == [r[0] for r in records]


def test_streamed_upload_stores_each_chunk_once(server: dict[str, Any]) -> None:
    d, alice = server["d"], server["alice"]
    records = raw_records(12, seed=7)
    body = encode_records([*records, *records[:4]])
    with connect(d) as sock:
        sock.sendall(head(UPLOAD, alice, len(body)))
        for start in range(0, len(body), 100_000):  # arbitrary cuts inside headers and payloads
            sock.sendall(body[start : start + 100_000])
        status, _, answer = read_response(sock)
    assert status == 200 and answer == {"stored": 12, "present": 4}, answer
    assert missing(d, alice, [r[0] for r in records]) == []
    status, fetched = d.request(
        "POST", "/v1/engagements/acme/chunks/fetch", json_body={"chunks": [r[0] for r in records]}, token=alice
    )
    assert status == 200
    assert decode_to_raw(fetched) == {r[0]: r[3] for r in records}
    # a second upload of the same chunks stores nothing new
    status, answer = d.request("POST", UPLOAD, body=body, content_type="application/x-smartsync-chunks", token=alice)
    assert status == 200 and answer == {"stored": 0, "present": 16}, answer
