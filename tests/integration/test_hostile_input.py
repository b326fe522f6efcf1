"""Hostile input against the real daemon: every refusal is a clear 4xx JSON error, the daemon
stays alive, and nothing in the engagement changes.

The daemon runs with a short ``request_timeout`` (2 s) so slow clients are closed quickly.
Covered: a corpus of bad paths (traversal, absolute, drive letters, UNC, NUL and control
characters, reserved names, trailing dots/spaces, over-long, NFC/NFD and case-fold twins),
bodies over each limit (declared and chunked), a zstd bomb, malformed and deeply nested JSON,
chunks whose hash does not match, tampered / logged-out / expired / other-user tokens, every
engagement endpoint of another engagement (404 with no hint, same answer as a name that does
not exist), readers on write endpoints (403), slow clients, and 2,000 connections from one
address.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from daemon import Daemon, running_daemon
from reliability import PASSWORD, add_engagements, add_users, cid, fsck, record_figures, wait_for

from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.chunkstream import CODEC_RAW, CODEC_ZSTD, encode_records

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # the daemon's request_timeout
DEADLINE = 4.0  # the daemon's request_deadline: one whole request before sign-in
LOGIN_LIMIT = 64 * 1024
SMALL_LIMIT = 1 << 20
CHUNKS_TYPE = "application/x-smartsync-chunks"
EMPTY = cid(b"")
TRIED: dict[str, int] = {}


def tried(kind: str, n: int = 1) -> None:
    TRIED[kind] = TRIED.get(kind, 0) + n


class Server:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.alice = daemon.login("alice", PASSWORD)  # editor of "acme"
        self.bob = daemon.login("bob", PASSWORD)  # editor of "other" only
        self.rita = daemon.login("rita", PASSWORD)  # reader of "acme"

    def call(
        self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
        body: bytes | None = None, content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, bytes]:
        """One request; returns (status, parsed JSON or None, raw body)."""
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
        if body is not None:
            hdrs.setdefault("Content-Type", content_type)
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.d.port, context=self.d.ssl_context(), timeout=30
        )
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            parsed = None
            if resp.getheader("Content-Type", "").startswith("application/json") and raw:
                parsed = json.loads(raw)
            return resp.status, parsed, raw
        finally:
            conn.close()

    def refused(self, status: int, code: str | None, method: str, path: str, **kw: Any) -> Any:
        got, parsed, raw = self.call(method, path, **kw)
        assert got == status, f"{method} {path}: {got} {raw[:300]!r}"
        assert b"Traceback" not in raw and b"File \"" not in raw
        assert isinstance(parsed, dict) and isinstance(parsed.get("message"), str), raw[:300]
        if code is not None:
            assert parsed["error"] == code, parsed
        return parsed

    def state(self, eng: str = "acme") -> tuple[int, list[dict[str, Any]]]:
        status, parsed, raw = self.call("GET", f"/v1/engagements/{eng}/changes", token=self.alice)
        assert status == 200, raw
        return parsed["head"], parsed["changes"]

    def alive(self) -> None:
        status, parsed, _ = self.call("GET", "/healthz")
        assert status == 200 and parsed["status"] == "ok"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = running_daemon(
        tmp_path_factory.mktemp("hostile"),
        config_text=f"[server]\nrequest_timeout = {TIMEOUT}\nrequest_deadline = {DEADLINE}\n",
    )
    try:
        add_users(d, ["alice", "bob", "rita"])
        add_engagements(d, ["acme"], {"alice": "editor", "rita": "reader"})
        add_engagements(d, ["other"], {"bob": "editor"})
        s = Server(d)
        # one real file in acme, so another user has something to guess at
        data = b"secret working paper " * 100
        h = chunk_hash(data)
        body = encode_records([(h, CODEC_RAW, len(data), data)])
        assert s.call("POST", "/v1/engagements/acme/chunks", token=s.alice, body=body,
                      content_type=CHUNKS_TYPE)[0] == 200
        status, answer, raw = s.call(
            "POST", "/v1/engagements/acme/commit", token=s.alice,
            json_body={"batch": "seed", "changes": [
                {"path": "TB.xlsx", "kind": "put", "base": None, "content": cid(data),
                 "size": len(data), "manifest": [[h, len(data)]]},
                {"path": "report.docx", "kind": "put", "base": None, "content": EMPTY,
                 "size": 0, "manifest": []},
                {"path": "Résumé.docx", "kind": "put", "base": None, "content": EMPTY,
                 "size": 0, "manifest": []},
            ]},
        )
        assert status == 200 and all(r["status"] == "applied" for r in answer["results"]), raw
        s.secret_chunk = h  # type: ignore[attr-defined]
        s.secret_content = cid(data)  # type: ignore[attr-defined]
        yield s
        fsck(d)
        record_figures("hostile_input", bad_inputs=sum(TRIED.values()), **TRIED)
    finally:
        d.stop()


def put(path: str) -> dict[str, Any]:
    return {"path": path, "kind": "put", "base": None, "content": EMPTY, "size": 0,
            "manifest": []}


BAD_PATHS = [
    "", "/", "/etc/passwd", "../x", "a/../../x", "a/..", "..", ".", "./a", "a/./b", "a//b",
    "a/", "C:", "C:/Windows/x", "c:x", "Z:\\x", "\\\\server\\share\\x", "//server/share/x",
    "a\\b", "a\x00b", "\x00", "a\nb", "a\rb", "tab\there", "\x1f", "del\x7f", "a:b", "a*b",
    "a?b", 'a"b', "a<b", "a>b", "a|b", "CON", "con", "Con.txt", "PRN", "AUX.docx", "NUL",
    "nul.tar.gz", "COM1", "com9.xlsx", "LPT1", "lpt9.txt", "dir/CON/x", "trailing.",
    "trailing ", "dir./x", "dir /x", "x" * 256, "é" * 128 + "x", ("a/" * 2049) + "b",
    ".smartsync/x", ".smartsync", ".SmartSync/x",
]


def test_bad_path_corpus_refused_and_nothing_applied(server: Server) -> None:
    head, log = server.state()
    for bad in BAD_PATHS:
        # the bad path is second in the batch: the good first change must not apply either
        body = {"batch": f"bad-{bad!r}", "changes": [put("fine.txt"), put(bad)]}
        answer = server.refused(400, None, "POST", "/v1/engagements/acme/commit",
                                token=server.alice, json_body=body)
        assert answer["error"] in ("invalid_path", "bad_request"), (bad, answer)
        tried("bad_paths")
    assert server.state() == (head, log)
    server.alive()


def test_nfd_twin_is_the_same_file_and_case_twin_clashes(server: Server) -> None:
    head, log = server.state()
    # "Résumé.docx" in NFD is the same name as the NFC file: normalized, never a second file
    nfd = "Re\u0301sume\u0301.docx"
    status, answer, raw = server.call(
        "POST", "/v1/engagements/acme/commit", token=server.alice,
        json_body={"batch": "nfd", "changes": [put(nfd)]},
    )
    assert status == 200, raw
    assert answer["results"][0]["status"] in ("unchanged", "conflict"), answer
    tried("bad_paths")
    files = server.call("GET", "/v1/engagements/acme/snapshot", token=server.alice)[1]["files"]
    assert nfd not in {f["path"] for f in files}
    head, log = server.state()
    for twin in ("REPORT.docx", "Report.DOCX", "RÉSUMÉ.docx", "re\u0301sume\u0301.DOCX"):
        answer = server.refused(409, "path_clash", "POST", "/v1/engagements/acme/commit",
                                token=server.alice,
                                json_body={"batch": f"twin-{twin}", "changes": [put(twin)]})
        assert answer["path"] in ("report.docx", "Résumé.docx") or "existing" in answer
        tried("bad_paths")
    assert server.state() == (head, log)


def test_bodies_over_the_limits(server: Server) -> None:
    head, log = server.state()
    # small JSON endpoints: 1 MiB
    big = {"chunks": ["0" * 64] * 20000}
    server.refused(413, "too_large", "POST", "/v1/engagements/acme/chunks/missing",
                   token=server.alice, body=json.dumps(big).encode() + b" " * (1 << 20))
    server.refused(413, "too_large", "POST", "/v1/login",
                   body=json.dumps({"user": "alice", "password": "x" * (2 << 20)}).encode())
    # chunk upload: 32 MiB
    server.refused(413, "too_large", "POST", "/v1/engagements/acme/chunks", token=server.alice,
                   body=b"\0" * (33 << 20), content_type=CHUNKS_TYPE)
    # too many entries in one list
    server.refused(413, "too_large", "POST", "/v1/engagements/acme/chunks/missing",
                   token=server.alice, json_body={"chunks": ["a" * 64] * 10001})
    tried("oversized_bodies", 4)
    # a declared Content-Length over the global cap is refused before the body is read
    for length in (65 * 1024 * 1024, 10**15):
        status, raw = raw_request(
            server.d,
            f"POST /v1/engagements/acme/commit HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.alice}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode() + b"{",
        )
        assert status == 413, raw[:300]
        tried("oversized_bodies")
    # a chunked body that never ends within the cap
    status, raw = chunked_flood(server.d, server.alice, 70 * 1024 * 1024)
    assert status == 413, raw[:300]
    tried("oversized_bodies")
    assert server.state() == (head, log)
    server.alive()


def raw_request(d: Daemon, data: bytes, read_timeout: float = 10) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", d.port), timeout=read_timeout) as raw:
        with d.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(data)
            return read_status(s)


def read_status(s: ssl.SSLSocket) -> tuple[int, bytes]:
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            piece = s.recv(65536)
            if not piece:
                break
            got += piece
    except (ConnectionError, ssl.SSLError):
        pass
    line = got.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 else 0), got


def chunked_flood(d: Daemon, token: str, total: int) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as raw:
        with d.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(
                f"POST /v1/engagements/acme/chunks HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: {CHUNKS_TYPE}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            piece = b"%x\r\n" % (1 << 20) + b"\0" * (1 << 20) + b"\r\n"
            sent = 0
            try:
                while sent < total:
                    s.sendall(piece)
                    sent += 1 << 20
            except (ConnectionError, ssl.SSLError):
                pass  # the server closed after answering 413
            return read_status(s)


def upload(server: Server, records: list[tuple[str, int, int, bytes]]) -> tuple[int, Any]:
    status, parsed, _ = server.call("POST", "/v1/engagements/acme/chunks", token=server.alice,
                                    body=encode_records(records), content_type=CHUNKS_TYPE)
    return status, parsed


def missing(server: Server, hashes: list[str]) -> list[str]:
    status, parsed, raw = server.call("POST", "/v1/engagements/acme/chunks/missing",
                                      token=server.alice, json_body={"chunks": hashes})
    assert status == 200, raw
    return list(parsed["missing"])


def test_zstd_bomb_is_capped(server: Server) -> None:
    cap = 262144
    zeros = b"\0" * (64 << 20)
    with_size = zstandard.ZstdCompressor(level=19).compress(zeros)  # declares 64 MiB
    c = zstandard.ZstdCompressor(level=19, write_content_size=False)
    without_size = c.compress(zeros)
    chunk = zstandard.ZstdCompressor().compressobj()
    streamed = chunk.compress(zeros) + chunk.flush()
    fake = chunk_hash(b"\0" * cap)
    for payload in (with_size, without_size, streamed):
        if len(payload) > cap + 1024:
            continue
        status, answer = upload(server, [(fake, CODEC_ZSTD, cap, payload)])
        assert status == 400 and answer["error"] == "bad_chunk", answer
        tried("zstd_bombs")
    # a frame that inflates past the record's length inside the cap is refused too
    small = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (cap // 2 + 1))
    status, answer = upload(server, [(chunk_hash(b"\0" * 1000), CODEC_ZSTD, 1000, small)])
    assert status == 400 and answer["error"] == "bad_chunk", answer
    tried("zstd_bombs")
    assert missing(server, [fake]) == [fake]
    server.alive()


def test_chunks_that_do_not_hash_to_their_name_store_nothing(server: Server) -> None:
    good = b"good chunk " * 1000
    bad = b"claims to be something else"
    wrong = chunk_hash(b"the real content")
    cases = [
        [(chunk_hash(good), CODEC_RAW, len(good), good), (wrong, CODEC_RAW, len(bad), bad)],
        [(wrong, CODEC_RAW, len(bad), bad)],
        [(chunk_hash(good), CODEC_RAW, len(good) + 1, good + b"x")],
        [(chunk_hash(good), CODEC_ZSTD, len(good), zstandard.compress(bad))],
    ]
    for records in cases:
        status, answer = upload(server, records)
        assert status == 400 and answer["error"] == "bad_chunk", answer
        tried("bad_chunks")
    unknown_codec = struct.pack(">32sBII", bytes.fromhex(chunk_hash(good)), 7, len(good),
                                len(good)) + good
    for body in (unknown_codec, b"\x01" * 10, b"\0" * 40 + b"\0\0\0\x10\0\0\0\x10", struct.pack(">32sBII", b"\1" * 32, 0, 300000, 300000)):
        status, parsed, raw = server.call("POST", "/v1/engagements/acme/chunks", token=server.alice,
                                          body=body, content_type=CHUNKS_TYPE)
        assert status == 400 and parsed["error"] == "bad_chunk", raw
        tried("bad_chunks")
    # one bad record refused the whole body: the good chunk was not stored either
    assert missing(server, [chunk_hash(good), wrong]) == [chunk_hash(good), wrong]


MALFORMED = [
    b"", b"{", b"[1,2", b"}", b"\xff\xfe{}", b'{"chunks": NaN}', b'{"chunks": Infinity}',
    b'{"chunks": [1e999999]}', b"null", b"[]", b'"x"', b"1", b'{"chunks": "abc"}',
    b'{"chunks": [1, 2]}', b'{"chunks": [null]}', b'{"chunks": {"a": 1}}', b"{'a': 1}",
    b'{"chunks": ["' + b"A" * 64 + b'"]}', b'{"chunks": ["' + b"a" * 63 + b'"]}',
    b"[" * 100000 + b"]" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000,
    b"[" * 33 + b"]" * 33, b"\"" + b"\\" * 1001, b'{"chunks": []} trailing',
    # the shapes that made the old depth check's regex quadratic (issue 14)
    b'{"user":"' + b'\\"' * 20000, b'"' + b'\\"' * 20000 + b"\\", b'["' + b"\\\\" * 20000,
    b"[{" * 40 + b"}]" * 40, b'{"chunks": ["\\"' + b"[" * 5000 + b'"]}',
]


def test_malformed_and_deep_json(server: Server) -> None:
    head, log = server.state()
    for body in MALFORMED:
        for path in ("/v1/engagements/acme/chunks/missing", "/v1/engagements/acme/chunks/fetch",
                     "/v1/engagements/acme/commit"):
            server.refused(400, "bad_request", "POST", path, token=server.alice, body=body)
            tried("malformed_json")
        if len(body) <= LOGIN_LIMIT:
            server.refused(400, "bad_request", "POST", "/v1/login", body=body)
        else:
            server.refused(413, "too_large", "POST", "/v1/login", body=body)
        tried("malformed_json")
    commits = [
        {"batch": "", "changes": []},
        {"batch": "x", "changes": [{"path": "a", "kind": "move"}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": "1", "content": EMPTY, "size": 0}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": -1, "content": EMPTY, "size": 0}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": EMPTY, "size": -5}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": True, "content": EMPTY, "size": 0}]},
        {"batch": "x", "changes": [{"path": 5, "kind": "delete", "base": 1}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": EMPTY,
                                    "size": 0, "manifest": [["zz", 1]]}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": EMPTY,
                                    "size": 0, "manifest": [], "delta": {"base": EMPTY, "ops": []}}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": "0" * 64,
                                    "size": 3, "manifest": [["1" * 64, 2]]}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": "0" * 64,
                                    "size": 3, "delta": {"base": EMPTY, "ops": [["copy", 0, 5]]}}]},
        {"batch": "x", "changes": [{"path": "a", "kind": "put", "base": None, "content": "0" * 64,
                                    "size": 3, "delta": {"base": EMPTY, "ops": [["nope"]]}}]},
        {"batch": "x", "changes": "all"},
        {"batch": ["x"], "changes": []},
    ]
    for body in commits:
        got, parsed, raw = server.call("POST", "/v1/engagements/acme/commit", token=server.alice,
                                       json_body=body)
        assert 400 <= got < 500 and parsed and "error" in parsed, (body, got, raw[:300])
        tried("malformed_json")
    queries = ["since=-1", "since=abc", "since=1e9", "limit=0", "wait=-1", "wait=nan",
               "since=99999999999999999999999", "wait=1e400", "since=%ff"]
    for q in queries:
        server.refused(400, "bad_request", "GET", f"/v1/engagements/acme/changes?{q}",
                       token=server.alice)
        tried("malformed_json")
    assert server.state() == (head, log)
    server.alive()


def test_tampered_logged_out_and_foreign_tokens(server: Server, tmp_path: Path) -> None:
    token = server.d.login("alice", PASSWORD)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (flipped, token[:-2], token + "x", "x" * 600, "", "Bearer", token.upper(),
                "../../etc", "\u00e9" * 10):
        status, parsed, raw = server.call("GET", "/v1/engagements/acme", headers={
            "Authorization": f"Bearer {bad}".encode().decode("latin-1")})
        assert status == 401 and parsed["error"] == "session_expired", raw
        tried("bad_tokens")
    for header in ("Basic YWxpY2U6eA==", f"Token {token}", token, ""):
        status, parsed, raw = server.call("GET", "/v1/session", headers={"Authorization": header})
        assert status == 401, raw
        tried("bad_tokens")
    assert server.call("POST", "/v1/logout", token=token)[0] == 204
    server.refused(401, "session_expired", "GET", "/v1/session", token=token)
    tried("bad_tokens")


def test_expired_token(tmp_path: Path) -> None:
    # 0.00003 days = 2.6 s; checking the token does not extend it (sessions slide by minutes)
    d = running_daemon(tmp_path, config_text="[server]\nsession_lifetime_days = 0.00003\n")
    try:
        add_users(d, ["alice"])
        token = d.login("alice", PASSWORD)
        assert d.request("GET", "/v1/session", token=token)[0] == 200

        def expired() -> bool:
            status, answer = d.request("GET", "/v1/session", token=token)
            return status == 401 and answer["error"] == "session_expired"

        wait_for(expired, 15, "the session to expire", interval=0.2)
        tried("bad_tokens")
    finally:
        d.stop()


ENGAGEMENT_ENDPOINTS = [
    ("GET", "", None),
    ("GET", "/snapshot", None),
    ("GET", "/changes?since=0", None),
    ("GET", "/changes?since=0&wait=1", None),
    ("GET", "/manifests/{content}", None),
    ("GET", "/manifests/{content}?base={content}", None),
    ("POST", "/chunks/fetch", {"chunks": ["{chunk}"]}),
    ("POST", "/chunks/missing", {"chunks": ["{chunk}"]}),
    ("POST", "/chunks", b""),
    ("POST", "/commit", {"batch": "steal", "changes": [{"path": "TB.xlsx", "kind": "delete", "base": 1}]}),
]

# the engagement workflow's routes (docs/workflow.md): the same check guards them
WORKFLOW_ENDPOINTS = [
    ("GET", "/locks", None),
    ("POST", "/locks", {"paths": ["TB.xlsx"]}),
    ("POST", "/locks/release", {"paths": ["TB.xlsx"]}),
    ("GET", "/history?path=TB.xlsx", None),
    ("POST", "/restore", {"path": "TB.xlsx", "seq": 1}),
    ("GET", "/export", None),
    ("POST", "/copies", {"copy": "x", "host": "h"}),
    ("POST", "/copies/x/report", {}),
    # an engagement admin's routes (issue 17): a member of another engagement learns nothing
    ("POST", "/locks/break", {"path": "TB.xlsx", "reason": "x"}),
    ("GET", "/copies", None),
    ("POST", "/copies/x/abandon", {}),
    ("POST", "/finalize", {"reason": "x"}),
    ("POST", "/reopen", {"reason": "x"}),
    ("GET", "/grants", None),
    ("POST", "/grants", {"user": "bob", "role": "admin"}),
    ("POST", "/grants/revoke", {"user": "alice"}),
]


def _fill(server: Server, text: str) -> str:
    return text.replace("{content}", server.secret_content).replace(  # type: ignore[attr-defined]
        "{chunk}", server.secret_chunk)  # type: ignore[attr-defined]


def test_another_engagement_answers_404_with_no_hint(server: Server) -> None:
    head, log = server.state()
    for method, suffix, body in ENGAGEMENT_ENDPOINTS + WORKFLOW_ENDPOINTS:
        answers = []
        for eng in ("acme", "does-not-exist"):
            path = f"/v1/engagements/{eng}" + _fill(server, suffix)
            kw: dict[str, Any] = {"token": server.bob}
            if isinstance(body, dict):
                kw["body"] = _fill(server, json.dumps(body)).encode()
            elif body is not None:
                kw["body"], kw["content_type"] = body, CHUNKS_TYPE
            status, parsed, raw = server.call(method, path, **kw)
            assert status == 404 and parsed["error"] == "not_found", (path, raw)
            assert server.secret_content not in raw.decode()  # type: ignore[attr-defined]
            assert b"TB.xlsx" not in raw
            answers.append(parsed)
            tried("foreign_engagement")
        assert answers[0] == answers[1], f"{method} {suffix}: a hint that acme exists"
    # the engagement list shows only bob's own
    status, parsed, _ = server.call("GET", "/v1/engagements", token=server.bob)
    assert [e["name"] for e in parsed["engagements"]] == ["other"]
    # a reader of acme may pull but never push
    for method, suffix, body in ENGAGEMENT_ENDPOINTS[6:]:
        if suffix == "/chunks/fetch":
            continue
        kw = {"token": server.rita}
        if isinstance(body, dict):
            kw["body"] = _fill(server, json.dumps(body)).encode()
        elif body is not None:
            kw["body"], kw["content_type"] = body, CHUNKS_TYPE
        server.refused(403, "forbidden", method, "/v1/engagements/acme" + suffix, **kw)
        tried("foreign_engagement")
    assert server.call("GET", "/v1/engagements/acme/snapshot", token=server.rita)[0] == 200
    assert server.state() == (head, log)


def test_slow_clients_are_closed_by_the_timeout(server: Server) -> None:
    conns: list[Any] = []
    try:
        # no TLS handshake at all, half a request line, and a body that never arrives
        conns.append(socket.create_connection(("127.0.0.1", server.d.port), timeout=30))
        for data in (b"GET /v1/info HT", b"POST /v1/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{\"user\":"):
            raw = socket.create_connection(("127.0.0.1", server.d.port), timeout=30)
            s = server.d.ssl_context().wrap_socket(raw, server_hostname="localhost")
            s.sendall(data)
            conns.append(s)
        started = time.monotonic()
        for s in conns:
            try:
                while s.recv(65536):
                    pass  # a 408 answer may come before the close
            except (ConnectionError, ssl.SSLError):
                pass
            tried("slow_clients")
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT + 10, f"slow clients held for {elapsed:.1f} s"
    finally:
        for s in conns:
            s.close()
    server.alive()


def test_thousands_of_connections_from_one_address(server: Server) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(2000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.d.port))
            socks.append(s)
        tried("connections", len(socks))
        # while they are open (idle ones are closed by the timeout), the daemon still answers
        def serves() -> bool:
            try:
                status, _, _ = server.call("GET", "/healthz")
                return status == 200
            except (OSError, ssl.SSLError, http.client.HTTPException):
                return False

        wait_for(serves, TIMEOUT * 5 + 20, "the daemon to answer during the flood", interval=0.2)
    finally:
        for s in socks:
            s.close()
    # the flood and this client share 127.0.0.1, so it is refused (connections_per_address)
    # until the daemon has seen the flood's sockets close
    wait_for(serves, TIMEOUT * 5 + 20, "the daemon to answer after the flood", interval=0.2)
    server.alive()
    assert server.d.running


def escaped_quotes(prefix: bytes, size: int) -> bytes:
    """``prefix`` then ``\\"`` up to ``size`` bytes: a string that never closes."""
    return prefix + b'\\"' * ((size - len(prefix)) // 2)


def test_escaped_quote_bodies_at_each_route_limit_cost_linear_time(server: Server) -> None:
    # The old depth check's regex retried from every quote: 48 KB took 8 s of the reactor, a
    # 1 MiB lookup body would take over half an hour (each call here would time out).
    head, log = server.state()
    cases = [
        ("/v1/login", None, escaped_quotes(b'{"user":"', LOGIN_LIMIT)),
        ("/v1/engagements/acme/chunks/missing", server.alice, escaped_quotes(b'{"chunks":["', SMALL_LIMIT)),
        ("/v1/engagements/acme/chunks/fetch", server.alice, escaped_quotes(b'{"chunks":["', SMALL_LIMIT)),
        ("/v1/engagements/acme/commit", server.alice, escaped_quotes(b'{"batch":"', 16 * SMALL_LIMIT)),
        ("/v1/engagements/acme/commit", server.alice, b'{"batch":"' + b'\\"' * (4 * SMALL_LIMIT) + b'"}'),
    ]
    for path, token, body in cases:
        server.refused(400, "bad_request", "POST", path, token=token, body=body)
        server.alive()
        tried("quadratic_bodies")
    assert server.state() == (head, log)


def rss_kib(d: Daemon) -> int:
    assert d.process is not None
    with open(f"/proc/{d.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_bodies_before_sign_in_are_refused_when_the_headers_arrive(server: Server) -> None:
    # Every route used to buffer up to 64 MiB before routing or auth: three such sign-ins took
    # the daemon from 67 MB to 272 MB. Now the limit is known from the request line.
    before = rss_kib(server.d)
    conns = []
    try:
        for path, auth in (("/v1/login", ""), ("/v1/engagements/acme/chunks/missing", ""),
                           ("/v1/engagements/acme/commit", ""),
                           ("/v1/engagements/acme/commit", "Authorization: Bearer forged\r\n")):
            raw = socket.create_connection(("127.0.0.1", server.d.port), timeout=30)
            s = server.d.ssl_context().wrap_socket(raw, server_hostname="localhost")
            conns.append(s)
            # headers only: the answer must come before any of the 60 MiB body is sent
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                      f"Content-Length: {60 << 20}\r\n\r\n".encode())
            status, raw_answer = read_status(s)
            assert status in (413, 401), raw_answer[:300]
            tried("early_refusals")
        # chunked bodies (no length up front) are cut at the route's limit as they arrive
        floods = []
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", server.d.port), timeout=30)
            s = server.d.ssl_context().wrap_socket(raw, server_hostname="localhost")
            conns.append(s)
            s.sendall(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            floods.append(s)
        piece = b"%x\r\n" % (1 << 20) + b"[" * (1 << 20) + b"\r\n"
        for s in floods:
            try:
                for _ in range(60):
                    s.sendall(piece)
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass  # closed after the 413
            status, raw_answer = read_status(s)
            assert status == 413, raw_answer[:300]
            assert json.loads(raw_answer.split(b"\r\n\r\n", 1)[1])["limit"] == LOGIN_LIMIT
            tried("early_refusals")
        grown = rss_kib(server.d) - before
        assert grown < 32 * 1024, f"the daemon grew by {grown} KiB"
    finally:
        for s in conns:
            s.close()
    server.alive()


def test_a_slow_sender_is_cut_at_the_deadline_not_the_idle_timer(server: Server) -> None:
    # one byte every TIMEOUT/4 keeps restarting the idle timer forever; the total deadline
    # for an unauthenticated request (DEADLINE) ends it
    raw = socket.create_connection(("127.0.0.1", server.d.port), timeout=30)
    with server.d.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n")
        s.settimeout(TIMEOUT / 4)
        answer = b""
        sent = 0
        closed = False
        while sent < 400 and not closed:  # 400 drips: 200 s, far past the deadline
            try:
                s.sendall(b" ")
                sent += 1
                piece = s.recv(65536)  # paces the drip: returns after TIMEOUT/4 or on data
                answer += piece
                closed = piece == b""
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                closed = True
        assert closed and answer.startswith(b"HTTP/1.1 408 "), (sent, answer[:200])
        assert sent < 400
        tried("slow_clients")
    server.alive()


def test_concurrent_health_checks_report_a_healthy_store_as_healthy(server: Server) -> None:
    # one probe file name for every call: 100 of 240 concurrent calls answered 503
    from concurrent.futures import ThreadPoolExecutor

    def probe(_: int) -> int:
        return server.call("GET", "/healthz")[0]

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(probe, range(240)))
    assert statuses == [200] * 240
    tried("health_checks", 240)
