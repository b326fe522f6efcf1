"""Parked long-polls on the real ``twistd smartsync`` over TLS (web/longpoll.py): 200 clients
parked on one engagement all get, after one commit, the very answer ``changes_since`` gives
(plain or zstd as each asked, with a Content-Length), a client that hung up while parked
breaks nothing, a wait that runs out answers empty, and the daemon logs no error. The commit
is this daemon's own, so the woken polls are answered from its records without a query: each
answer (also a page, ``limit=7``) is byte for byte what a fresh ``GET changes?since=`` returns."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon

from smartsyncd.core import bodycodec
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.manifest import content_id

pytestmark = pytest.mark.integration

PASSWORD = "long poll password"
PARKED = 200
PAGED = 10


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, deadline: float = 60.0) -> None:
    """Until the daemon used under 2% of a core for 0.5 s: every request sent is parked."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(0.5)  # the measuring window of the condition, not a synchronization guess
        if cpu_seconds(pid) - before < 0.01:
            return
    raise AssertionError("the daemon never went idle")


async def read_response(
    reader: asyncio.StreamReader, chunked_ok: bool = False
) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:] if b":" in line)
    }
    if chunked_ok and headers.get(b"transfer-encoding") == b"chunked":  # an ordinary (not parked) answer
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return int(lines[0].split(b" ", 2)[1]), headers, body
    assert b"transfer-encoding" not in headers, headers  # answered with a Content-Length
    body = await reader.readexactly(int(headers[b"content-length"]))
    return int(lines[0].split(b" ", 2)[1]), headers, body


def request(eng: str, token: str, since: int, wait: int, zstd: bool = False, limit: int | None = None) -> bytes:
    extra = "Accept-Encoding: zstd\r\n" if zstd else ""
    page = "" if limit is None else f"&limit={limit}"
    return (
        f"GET /v1/engagements/{eng}/changes?since={since}&wait={wait}{page} HTTP/1.1\r\n"
        f"Host: localhost\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    ).encode()


async def scenario(d: Daemon, eng: str, token: str) -> None:
    ctx = ssl.create_default_context(cafile=str(d.cert_path))
    ctx.check_hostname = False
    opening = asyncio.Semaphore(32)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with opening:
            return await asyncio.open_connection("127.0.0.1", d.port, ssl=ctx)

    conns = await asyncio.gather(*(connect() for _ in range(PARKED + 1)))
    for i, (_, writer) in enumerate(conns):
        writer.write(request(eng, token, since=0, wait=30, zstd=i % 2 == 1))
    pages = await asyncio.gather(*(connect() for _ in range(PAGED)))  # a first page of 7
    for i, (_, writer) in enumerate(pages):
        writer.write(request(eng, token, since=0, wait=30, zstd=i % 2 == 1, limit=7))
    closer = await connect()  # HTTP/1.0: its answer says so and the connection closes after
    closer[1].write(request(eng, token, since=0, wait=30).replace(b"HTTP/1.1", b"HTTP/1.0"))
    await asyncio.gather(*(w.drain() for _, w in [*conns, *pages, closer]))
    leaver = conns.pop()
    assert d.process is not None
    await asyncio.to_thread(wait_until_idle, d.process.pid)
    leaver[1].transport.abort()  # hangs up while parked
    await asyncio.to_thread(wait_until_idle, d.process.pid)

    empty = content_id([ref for ref, _ in chunk_buffer(b"")])
    commit = {"batch": "wake", "changes": [
        {"path": f"wake/{i:02d}.txt", "kind": "put", "base": None, "size": 0, "manifest": [], "content": empty}
        for i in range(30)]}  # an answer over the compression threshold
    sent = time.time()
    status, answer = await asyncio.to_thread(
        d.request, "POST", f"/v1/engagements/{eng}/commit", json_body=commit, token=token
    )
    assert status == 200 and answer["head"] == 30, answer

    replies = await asyncio.wait_for(asyncio.gather(*(read_response(r) for r, _ in conns)), 60)
    answered = time.time()
    status, direct = await asyncio.to_thread(d.request, "GET", f"/v1/engagements/{eng}/changes?since=0", token=token)
    assert status == 200 and len(direct["changes"]) == 30
    plain = {body for i, (_, h, body) in enumerate(replies) if i % 2 == 0}
    packed = {body for i, (_, h, body) in enumerate(replies) if i % 2 == 1}
    assert [s for s, _, _ in replies] == [200] * PARKED
    assert len(plain) == 1 and json.loads(next(iter(plain))) == direct
    assert len(packed) == 1 and bodycodec.decode(next(iter(packed)), "zstd", 1 << 20) == next(iter(plain))
    for i, (_, headers, _) in enumerate(replies):
        assert headers[b"content-type"] == b"application/json"
        assert headers.get(b"content-encoding") == (b"zstd" if i % 2 else None)
    assert answered - sent < 30  # woken by the commit, not by their 30 s wait
    status_line = await closer[0].readuntil(b"\r\n")
    assert status_line == b"HTTP/1.0 200 OK\r\n"
    rest = await asyncio.wait_for(closer[0].read(), 30)  # to the end: the daemon closes
    assert rest.split(b"\r\n\r\n", 1)[1] == next(iter(plain))

    # byte for byte what a fresh GET gives now (plain and zstd, whole feed and a page), asked
    # on the same keep-alive connections
    paged = await asyncio.wait_for(asyncio.gather(*(read_response(r) for r, _ in pages)), 60)
    assert [s for s, _, _ in paged] == [200] * PAGED
    for group, limit in ((replies, None), (paged, 7)):
        for i, conn in enumerate((conns, pages)[limit is not None][:2]):
            conn[1].write(request(eng, token, since=0, wait=0, zstd=i == 1, limit=limit))
            status, _, fresh = await asyncio.wait_for(read_response(conn[0], chunked_ok=True), 30)
            assert status == 200 and {body for _, _, body in group[i::2]} == {fresh}
    assert json.loads(paged[0][2])["more"] is True and len(json.loads(paged[0][2])["changes"]) == 7
    # HTTP/1.1 pipelining after a woken answer: 30 requests (over 16 KiB) in one write; the
    # channel stops reading while it works through them and resumes after each answer (both
    # through tlsbatching's pauseProducing/resumeProducing); every one answered, in order
    reader, writer = pages[2]
    pad = b"X-Pad: " + b"p" * 600 + b"\r\n\r\n"
    writer.write(b"".join(request(eng, token, since=k, wait=0, limit=1)[:-2] + pad for k in range(30)))
    for k in range(30):
        status, _, body = await asyncio.wait_for(read_response(reader, chunked_ok=True), 30)
        assert status == 200 and [c["seq"] for c in json.loads(body)["changes"]] == [k + 1]
    for _, writer in pages:
        writer.close()

    # the same connections poll again from the new head; a wait that runs out answers empty
    for _, writer in conns[:3]:
        writer.write(request(eng, token, since=30, wait=1))
    for reader, _ in conns[:3]:
        status, _, body = await asyncio.wait_for(read_response(reader), 30)
        answer = json.loads(body)
        assert status == 200 and {k: answer[k] for k in ("head", "changes", "more")} == {
            "head": 30, "changes": [], "more": False,
        }
        assert answer["generation"] == 1 and len(answer["store"]) == 36
    for _, writer in conns:
        writer.close()


def test_parked_polls_all_get_the_changes_since_answer_after_one_commit(tmp_path: Path) -> None:
    d = running_daemon(tmp_path)
    try:
        d.add_user("alice", PASSWORD)
        eng = d.new_engagement("parked", editors=["alice"])
        token = d.login("alice", PASSWORD)
        asyncio.run(scenario(d, eng, token))
        status, health = d.request("GET", "/healthz")
        assert status == 200, health
        log = d.log_text()
        assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    finally:
        d.stop()
