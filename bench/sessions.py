"""Idle sessions benchmark (issue 7): one real daemon holds N authenticated long-polls over TLS.

    python bench/sessions.py [--counts 1000,10000] [--holders 2] [--write]

For each count N, on a fresh ``twistd smartsync`` (SQLite, TLS on loopback):

1. one user signs in; the daemon's RSS is read (``/proc/PID/status`` VmRSS) once it is idle;
2. ``--holders`` separate client processes (asyncio + stdlib ssl, no smartsyncd code) open
   N TLS connections between them and send ``GET /v1/engagements/bench/changes?since=HEAD
   &wait=60`` with the bearer token on each; a long-poll that times out empty is re-sent on
   the same connection, as the real client does;
3. once every holder has sent all its requests and the daemon's CPU has gone quiet (less than
   2% of a core over 1 s: the requests are parked), RSS is read again: RSS per session =
   (RSS with N parked - RSS before) / N;
4. one commit (an empty file) is sent; each holder notes the wall-clock time at which each
   connection's answer with the change is complete; wake latency = the last of those - the
   moment the commit request was sent (same machine, same clock).

Raises the fd limit (``resource.setrlimit``) to 20,000 for itself, the daemon and the holders.
Prints a table; ``--write`` replaces the "Idle sessions" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import resource
import select
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from daemon import Daemon, running_daemon  # noqa: E402
from procstat import cpu_seconds  # noqa: E402

PASSWORD = "bench password 1"
ENGAGEMENT = "bench"
HANDSHAKES_AT_ONCE = 64  # per holder: a client fleet reconnects spread out, not all at once
HOLDER_KIND = "selectors"  # or "asyncio" (the previous holders, --holder-kind)


def raise_fd_limit(want: int = 20000) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the holder process --------------------------------------------------------------------


async def _one(
    port: int, ctx: ssl.SSLContext, request: bytes, opened: asyncio.Semaphore, sent: list[int],
    answered: list[float], writers: list[asyncio.StreamWriter],
) -> None:
    async with opened:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost", limit=1 << 16
        )
    writer.write(request)
    sent[0] += 1
    writers.append(writer)  # closed only after every answer is in (closing costs the daemon too)
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        }
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += (await reader.readexactly(size + 2))[:size]
                if size == 0:
                    break
        else:
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"long-poll answered {status}: {body[:200]!r}")
        if json.loads(body)["changes"]:
            answered.append(time.time())
            return
        writer.write(request)  # timed out empty: poll again on the same connection


async def _hold(n: int, port: int, cafile: str, token: str, since: int) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the bare baseline server reuses a daemon's certificate
    request = (
        f"GET /v1/engagements/{ENGAGEMENT}/changes?since={since}&wait=60 HTTP/1.1\r\n"
        f"Host: localhost\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    opened = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    sent = [0]
    answered: list[float] = []
    writers: list[asyncio.StreamWriter] = []
    tasks = [
        asyncio.ensure_future(_one(port, ctx, request, opened, sent, answered, writers)) for _ in range(n)
    ]
    while sent[0] < n:
        await asyncio.sleep(0.05)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
    print("ready", flush=True)
    cpu0 = time.process_time()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cpu = time.process_time() - cpu0  # this holder's CPU from "ready" to its last answer
    errors = [r for r in results if isinstance(r, BaseException)]
    print(json.dumps({"answered": answered, "errors": [repr(e) for e in errors[:5]], "n_errors": len(errors),
                      "cpu_s": cpu}), flush=True)
    await asyncio.sleep(1.0)  # let the driver read the daemon's CPU before the closes cost it more
    for writer in writers:
        writer.close()


class _Conn:
    """One holder connection (the selectors holder): its TLS socket and what it has read."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""


def _answer_in(conn: _Conn) -> tuple[int, bytes] | None:
    """(status, body) once ``conn.buf`` holds a whole response (Content-Length framing, as the
    daemon and the bare server answer), removed from the buffer; None until then."""
    end = conn.buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = conn.buf[:end]
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0 or b"\r\ntransfer-encoding:" in lower:
        raise RuntimeError(f"not a Content-Length response: {head[:300]!r}")
    line_end = lower.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    if len(conn.buf) < end + 4 + length:
        return None
    body = conn.buf[end + 4 : end + 4 + length]
    conn.buf = conn.buf[end + 4 + length :]
    return int(head[9:12]), body


def _hold_selectors(n: int, port: int, cafile: str, token: str, since: int, rounds: int = 1) -> None:
    """The holder without asyncio: N blocking TLS handshakes, then one epoll loop over
    non-blocking ``ssl.SSLSocket``s (the TLS record is decrypted by the ssl module on the socket,
    no memory BIO, no transports, protocols or tasks). Each answer is still read completely and
    checked: status 200, a JSON body whose head is past ``since`` with the change in it.

    With ``rounds`` > 1 (bench/wake_ab.py), after reporting a round it reads a line from stdin,
    then polls again on every connection with the new head."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the bare baseline server reuses a daemon's certificate

    def request_for(since: int) -> bytes:
        return (
            f"GET /v1/engagements/{ENGAGEMENT}/changes?since={since}&wait=60 HTTP/1.1\r\n"
            f"Host: localhost\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        ).encode()

    request = request_for(since)
    poller = select.epoll()
    by_fd: dict[int, _Conn] = {}
    conns: list[_Conn] = []
    for _ in range(n):  # every handshake first: 5,000 take about a minute here, longer than a
        # long-poll's wait (60 s), and these sockets are not read until the wake-up
        raw = socket.create_connection(("127.0.0.1", port))
        conns.append(_Conn(ctx.wrap_socket(raw, server_hostname="localhost")))
    for conn in conns:  # then every poll, in a second or two (the daemon's idle timeout is 120 s)
        sock = conn.sock
        sock.sendall(request)
        sock.setblocking(False)
        by_fd[sock.fileno()] = conn
        poller.register(sock.fileno(), select.EPOLLIN)
    for conn in conns:  # TLS 1.3 session tickets arrive after the handshake: read them now, as
        try:  # asyncio's holders do while connecting, so the wake-up is charged only for answers
            conn.buf += conn.sock.recv(65536)
        except ssl.SSLWantReadError:
            pass
    print("ready", flush=True)
    for round_no in range(rounds):
        if round_no:
            if not sys.stdin.readline():
                break
            request = request_for(since)
            for conn in conns:
                conn.sock.setblocking(True)
                conn.sock.sendall(request)
                conn.sock.setblocking(False)
        waiting = set(by_fd)  # answered connections stay registered: nothing more comes on them
        cpu0 = time.process_time()
        answered: list[float] = []
        errors: list[str] = []
        heads: set[int] = set()
        left = n
        while left:
            events = poller.poll(120)
            if not events:
                errors.append("no answer within 120 s")
                break
            for fd, _ in events:
                if fd not in waiting:
                    continue
                conn = by_fd[fd]
                sock = conn.sock
                try:
                    data = sock.recv(65536)
                    while sock.pending():
                        data += sock.recv(65536)
                except ssl.SSLWantReadError:
                    continue
                except OSError as e:
                    errors.append(repr(e))
                    waiting.discard(fd)
                    poller.unregister(fd)
                    left -= 1
                    continue
                if not data:
                    errors.append("connection closed before the answer")
                    waiting.discard(fd)
                    poller.unregister(fd)
                    left -= 1
                    continue
                conn.buf += data
                try:
                    answer = _answer_in(conn)
                    if answer is None:
                        continue
                    status, body = answer
                    if status != 200:
                        raise RuntimeError(f"long-poll answered {status}: {body[:200]!r}")
                    doc = json.loads(body)
                    if not doc["changes"]:
                        sock.setblocking(True)  # timed out empty: poll again on the same connection
                        sock.sendall(request)
                        sock.setblocking(False)
                        continue
                    if doc["head"] <= since:
                        raise RuntimeError(f"answer without the new head: {body[:200]!r}")
                    heads.add(doc["head"])
                except Exception as e:  # noqa: BLE001 - reported to the driver
                    errors.append(repr(e))
                else:
                    answered.append(time.time())
                waiting.discard(fd)
                left -= 1
        cpu = time.process_time() - cpu0  # this holder's CPU from "ready" to its last answer
        print(json.dumps({"answered": answered, "errors": errors[:5], "n_errors": len(errors), "cpu_s": cpu}),
              flush=True)
        since = max(heads, default=since)
    time.sleep(1.0)  # let the driver read the daemon's CPU before the closes cost it more
    for conn in conns:
        conn.sock.close()


def holder_main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    if args.holder_kind == "asyncio":
        asyncio.run(_hold(args.n, args.port, args.cafile, args.token, args.since))
    else:
        _hold_selectors(args.n, args.port, args.cafile, args.token, args.since, args.rounds_held)


# -- the driver ----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def reactor_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread (the reactor) in ns resolution (schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def threads_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process (reactor, database and pool threads), ns resolution."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e9


def wait_quiet(pid: int, deadline: float = 180.0, window: float = 1.0, share: float = 0.02) -> None:
    """Until the process used less than ``share`` of a core over ``window`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < share * window:
            return
    raise RuntimeError("the daemon never went quiet")


SPY_RATE = int(os.environ.get("SESSIONS_SPY_RATE", "250"))  # samples per second
SPY_GIL = os.environ.get("SESSIONS_SPY_GIL", "1") == "1"  # 0: every thread (the store's too)


def run_count(n: int, holders: int, work: Path, spy: str | None = None, run: int = 0) -> dict[str, Any]:
    # every simulated client connects from 127.0.0.1: lift the per-address connection cap
    d: Daemon = running_daemon(
        work, name=f"daemon-{n}-{run}", config_text=f"[limits]\nconnections_per_address = {2 * n + 100}\n"
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        d.admin("user", "add", "bench", "--password-stdin", input=PASSWORD + "\n")
        d.admin("engagement", "create", ENGAGEMENT)
        d.admin("grant", ENGAGEMENT, "--user", "bench", "--role", "editor")
        token = d.login("bench", PASSWORD)
        status, answer = d.request("GET", f"/v1/engagements/{ENGAGEMENT}", token=token)
        assert status == 200, answer
        head = int(answer["head"])
        assert d.process is not None
        pid = d.process.pid
        wait_quiet(pid)
        rss_before = rss_kib(pid)
        started = time.monotonic()
        try:
            procs = start_holders(n, holders, d.port, str(d.cert_path), token, head)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{d.log_text()[-3000:]}") from None
        connect_s = time.monotonic() - started
        wait_quiet(pid)
        rss_parked = rss_kib(pid)
        commit = {"batch": "wake", "changes": [
            {"path": "wake.txt", "kind": "put", "base": None, "size": 0, "manifest": [],
             "content": _empty_content()}]}
        profiler = None
        if spy:  # py-spy on the daemon around the wake-up (raw format, for flame graphs)
            profiler = subprocess.Popen(
                ["py-spy", "record", "-p", str(pid), "-o", f"{spy}-{n}-{run}.txt", "-f", "raw", "-r", str(SPY_RATE),
                 "--native", "--threads", *(["--gil"] if SPY_GIL else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        cpu0 = cpu_seconds(pid)
        reactor0 = reactor_cpu_seconds(pid)
        t0 = time.time()
        status, answer = d.request("POST", f"/v1/engagements/{ENGAGEMENT}/commit", json_body=commit, token=token)
        t_commit = time.time() - t0
        assert status == 200, answer
        answered, errors, holder_cpu = collect(procs)
        wake_cpu = cpu_seconds(pid) - cpu0  # read once every holder reported (before they close)
        reactor_cpu = reactor_cpu_seconds(pid) - reactor0
        for p in procs:
            p.wait(timeout=60)
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(timeout=30)
        return {
            "sessions": n,
            "answered": len(answered),
            "errors": errors,
            "connect_s": connect_s,
            "rss_before_mib": rss_before / 1024,
            "rss_parked_mib": rss_parked / 1024,
            "kib_per_session": (rss_parked - rss_before) / n,
            "commit_ms": t_commit * 1000,
            "wake_cpu_ms": wake_cpu * 1000,
            "reactor_cpu_ms": reactor_cpu * 1000,
            "holder_cpu_ms": holder_cpu * 1000,
            "wake_all_ms": (max(answered) - t0) * 1000 if answered else float("nan"),
            "wake_median_ms": (sorted(answered)[len(answered) // 2] - t0) * 1000 if answered else float("nan"),
            "cert": str(d.cert_path),
            "key": str(d.key_path),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.stop()


def collect(procs: list[subprocess.Popen[str]]) -> tuple[list[float], int, float]:
    """Every holder's report: answer times, errors, CPU seconds (the largest holder's)."""
    answered: list[float] = []
    errors = 0
    holder_cpu = 0.0
    for p in procs:
        assert p.stdout is not None
        report = json.loads(p.stdout.readline())
        answered += report["answered"]
        errors += report["n_errors"]
        holder_cpu = max(holder_cpu, report["cpu_s"])
        if report["n_errors"]:
            print("holder errors:", report["errors"], file=sys.stderr)
    return answered, errors, holder_cpu


def start_holders(n: int, holders: int, port: int, cafile: str, token: str, since: int) -> list[subprocess.Popen[str]]:
    shares = [n // holders + (1 if i < n % holders else 0) for i in range(holders)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--holder", "--holder-kind", HOLDER_KIND, "--n", str(share), "--port", str(port),
             "--cafile", cafile, "--token", token, "--since", str(since)],
            stdout=subprocess.PIPE, text=True,
        )
        for share in shares
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"holder failed: {line!r}")
    return procs


# -- the bare Twisted TLS baseline -----------------------------------------------------------

BARE_BODY = json.dumps({"head": 1, "changes": [{
    "seq": 1, "path": "wake.txt", "kind": "put", "content": "0" * 64, "size": 0, "prev_seq": None,
    "user": "bench", "session": 1, "time": "2026-11-26T07:00:00.000000Z", "conflict_of": None}],
    "more": False}, separators=(",", ":")).encode()


def bare_server_main(args: argparse.Namespace) -> None:
    """A minimal twisted.web server over TLS: GET parks the request, POST answers every parked
    one with BARE_BODY (setHeader, write, finish: plain twisted.web), then itself."""
    raise_fd_limit()
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    from smartsyncd.service.tls import server_tls_options

    parked: dict[int, Any] = {}

    class Bare(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            key = id(request)
            parked[key] = request
            request.notifyFinish().addErrback(lambda _: parked.pop(key, None))
            return NOT_DONE_YET

        def render_POST(self, request: Any) -> bytes:
            waiting = list(parked.values())
            parked.clear()
            for r in waiting:
                r.setHeader(b"content-type", b"application/json")
                r.setHeader(b"content-length", b"%d" % len(BARE_BODY))
                r.write(BARE_BODY)
                r.finish()
            return b"%d" % len(waiting)

    site = Site(Bare())
    site.log = lambda request: None  # type: ignore[method-assign]  # as ours: no access log
    endpoint = SSL4ServerEndpoint(reactor, 0, server_tls_options(args.cert, args.key), backlog=4096, interface="127.0.0.1")

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    endpoint.listen(site).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined, misc]


def run_bare(n: int, holders: int, cert: Path, key: Path) -> dict[str, Any]:
    """The same holders against the bare server: the floor of this machine."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", "--cert", str(cert), "--key", str(key)],
        stdout=subprocess.PIPE, text=True,
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        started = time.monotonic()
        procs = start_holders(n, holders, port, str(cert), "none", 0)
        connect_s = time.monotonic() - started
        wait_quiet(server.pid)
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        cpu0 = cpu_seconds(server.pid)
        reactor0 = reactor_cpu_seconds(server.pid)
        t0 = time.time()
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
        conn.request("POST", "/trigger", body=b"")
        conn.getresponse().read()
        t_commit = time.time() - t0
        conn.close()
        answered, errors, holder_cpu = collect(procs)
        wake_cpu = cpu_seconds(server.pid) - cpu0
        reactor_cpu = reactor_cpu_seconds(server.pid) - reactor0
        for p in procs:
            p.wait(timeout=60)
        return {
            "sessions": n, "answered": len(answered), "errors": errors, "connect_s": connect_s,
            "commit_ms": t_commit * 1000, "wake_cpu_ms": wake_cpu * 1000,
            "reactor_cpu_ms": reactor_cpu * 1000, "holder_cpu_ms": holder_cpu * 1000,
            "wake_all_ms": (max(answered) - t0) * 1000 if answered else float("nan"),
            "wake_median_ms": (sorted(answered)[len(answered) // 2] - t0) * 1000 if answered else float("nan"),
        }
    finally:
        for p in [*procs, server]:
            if p.poll() is None:
                p.kill()
                p.wait()


def _empty_content() -> str:
    from smartsyncd.core.chunking import chunk_buffer
    from smartsyncd.core.manifest import content_id

    return content_id([ref for ref, _ in chunk_buffer(b"")])


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric field, the median over runs (and every run's last-answer figure)."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in rows)
    out["all_runs_ms"] = [round(r["wake_all_ms"]) for r in rows]
    return out


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} at start"
    )


def render(rows: list[dict[str, Any]], where: str, holders: int) -> str:
    lines = [
        "## Idle sessions (bench/sessions.py)",
        f"Machine: {where}. One daemon (SQLite, TLS 1.3 on loopback); {holders} separate holder",
        f"processes ({HOLDER_KIND}) keep N long-polls (`GET .../changes?since=HEAD&wait=60`) parked;",
        "then one commit. 'bare Twisted TLS' is the floor of this machine: a minimal twisted.web",
        "server (same certificate and TLS options) parking N GETs and answering them all with a",
        "fixed 300-byte JSON body (setHeader, write, finish) on one POST, same holders. Figures are",
        "medians over the runs ('every run' lists each run's last answer). Target: <= 64 KiB per",
        "session, all 1,000 answered < 100 ms, all 10,000 < 1 s after the commit is sent.",
        "",
        "| server | sessions | runs | per session (KiB) | commit / trigger (ms) | median answer (ms) | last answer (ms) | every run (ms) | server CPU for the wake-up (ms) | per answer (µs) | reactor thread per answer (µs) | busiest holder CPU (ms) | holder per answer (µs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_session = f"{r['kib_per_session']:.1f}" if "kib_per_session" in r else "-"
        lines.append(
            f"| {r['label']} | {r['sessions']:,.0f} | {r['runs']} | {per_session} | {r['commit_ms']:.0f} | "
            f"{r['wake_median_ms']:.0f} | {r['wake_all_ms']:.0f} | {', '.join(map(str, r['all_runs_ms']))} | "
            f"{r['wake_cpu_ms']:.0f} | {r['wake_cpu_ms'] * 1000 / r['sessions']:.0f} | "
            f"{r['reactor_cpu_ms'] * 1000 / r['sessions']:.0f} | {r['holder_cpu_ms']:.0f} | "
            f"{r['holder_cpu_ms'] * 1000 * holders / r['sessions']:.0f} |"
        )
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "- **Memory: met** (34-36 KiB per parked session: a small record plus its timer).",
    "- **Wake-up: 1,000 in < 100 ms and 10,000 in < 1 s are missed on this 2-vCPU VM**, by bare",
    "  twisted.web in the same harness as well. The figures above are wall times on a shared",
    "  machine; compare the CPU columns (and bench/wake_ab.py for A/B).",
    "- Per answer the daemon now does: the pre-built response (status line, headers, body) as one",
    "  TLS record; `bio_read` sized to what was encrypted (one small read, no 512 KiB buffer and no",
    "  second call that only raises WantReadError); the record handed straight to the socket's",
    "  `send` when Twisted has nothing buffered for it (smartsyncd/tlsbatching.py: no epoll",
    "  register/unregister, no doWrite pass; what the kernel does not take goes through Twisted's",
    "  buffer, order kept); `Request.finish` without running the request's notifyFinish Deferred",
    "  (ours, dropped first); 256 answers per reactor turn through timed calls, no Deferred.",
    "- Holders: one epoll loop over non-blocking `ssl.SSLSocket`s per process (`--holder-kind",
    "  asyncio` runs the previous asyncio-streams holders). Each answer is still read whole over",
    "  TLS and checked: 200, Content-Length body, JSON head past `since` with the change.",
    "- Scale: this VM runs Python 3-4x slower per core than the box of the issue's figures (bare",
    "  Twisted there: 1,000 in 61 ms, 10,000 in 0.7 s).",
]


def write_section(text: str, path: Path = HERE / "RESULTS.md") -> None:
    old = path.read_text() if path.exists() else ""
    marker = "## Idle sessions (bench/sessions.py)"
    if marker in old:
        start = old.index(marker)
        nxt = old.find("\n## ", start + len(marker))
        old = old[:start] + (old[nxt + 1 :] if nxt != -1 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--holders", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--spy", help="write a py-spy profile of the daemon's wake-up to SPY-N-RUN.txt (SESSIONS_SPY_RATE, SESSIONS_SPY_GIL=0)")
    parser.add_argument("--runs", type=int, default=1, help="runs per count (medians are reported)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Twisted TLS baseline")
    parser.add_argument("--holder-kind", choices=("selectors", "asyncio"), default=HOLDER_KIND,
                        help="holder processes: one epoll loop over ssl sockets, or asyncio streams")
    parser.add_argument("--holder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds-held", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--since", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.holder:
        holder_main(args)
        return
    globals()["HOLDER_KIND"] = args.holder_kind  # start_holders passes it on
    if args.bare_server:
        bare_server_main(args)
        return
    limit = raise_fd_limit()
    where = machine() + f", fd limit {limit}"
    work = Path(tempfile.mkdtemp(prefix="smartsync-sessions-"))
    rows: list[dict[str, Any]] = []
    try:
        for n in (int(x) for x in args.counts.split(",")):
            ours, bare = [], []
            for run in range(args.runs):
                row = run_count(n, args.holders, work, args.spy, run)
                print(json.dumps(row), flush=True)
                ours.append(row)
                if not args.no_bare:
                    row = run_bare(n, args.holders, Path(row["cert"]), Path(row["key"]))
                    print(json.dumps({"bare": True, **row}), flush=True)
                    bare.append(row)
            rows.append({"label": "smartsyncd", "runs": len(ours), **medians(ours)})
            if bare:
                rows.append({"label": "bare Twisted TLS", "runs": len(bare), **medians(bare)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(rows, where + f", load average {os.getloadavg()[0]:.2f} at the end", args.holders)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
