"""What this machine allows for a large upload and download: the floors under issue 7's 256 MiB row, in one go.

    python bench/ceiling.py [--mb 256] [--runs 3] [--only up|down]

Each round runs, one after the other on the same machine, the same seeded random file through:

- ``rsync``: rsync's daemon over loopback (no encryption, no fsync), the issue's baseline;
- ``pyOpenSSL, socket BIO``: a blocking pyOpenSSL connection over a plain socket in each of two
  processes, one sending 256 KiB writes, the other ``recv_into`` a reused buffer: TLS with the
  library we must use and no event loop, no HTTP, no hashing, no disk;
- ``bare Twisted TLS``: a Twisted TLS client streaming 256 KiB writes (a push producer) to a
  Twisted TLS server that only counts the bytes (two processes, the reactor's own TLS, i.e.
  ``TLSMemoryBIOProtocol``): the most any Twisted TLS upload can move here, before HTTP;
- ``smartsyncd``: an initial sync of the file to the real daemon (``twistd``) over TLS: FastCDC
  and BLAKE3 on the client, BLAKE3 verification, pack write and fsync on the daemon.

The download rows (``--only down`` runs only them):

- ``bare Twisted TLS download``: the mirror of the stream above, the Twisted TLS *server*
  streaming 256 KiB writes (a push producer) to a Twisted TLS client that only counts them (two
  processes): the most a Twisted TLS download can move here;
- ``smartsyncd clone``: a clone of an engagement holding only that file (uploaded once, before
  the first round, outside the timing) into a fresh folder: snapshot, chunk fetch and reads on
  the daemon; receive, BLAKE3 verification, write, fsync and rename on the client. Timed from
  the call to the clone's return, CPU of both processes from /proc.

Every bare Twisted process (both directions) runs with the daemon's glibc malloc settings
(``tune_malloc``): without them the bare download server faulted in fresh pages for every write
and cost twice the CPU of the upload's sender (issue 15, s14; bench/RESULTS.md).

It also times BLAKE3 on one thread, the figure the issue's own machine notes give (4.8 GB/s), to
scale the issue's numbers to this VM. Rounds alternate the four, so a busy spell hits all of
them (the download rows after the upload rows); the table shows medians, MB/s, each row's ratio to rsync and to bare Twisted TLS, and
CPU-seconds of both processes (from /proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from procstat import cpu_seconds  # noqa: E402
from rsync_baseline import RsyncDaemon, free_port  # noqa: E402

MiB = 1 << 20
WRITE = 256 * 1024
PASSWORD = "bench password 1"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate for 127.0.0.1 (what the bare servers present)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, cert


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is coming up, bounded by the deadline
    raise RuntimeError("server did not start")


def tune_malloc() -> None:
    """The daemon's glibc malloc settings (runtime/malloctune.py: 4 MiB mmap threshold, 16 MiB
    kept at the heap top), set in every bare Twisted process too. Without them the bare
    download server's heap top was trimmed and regrown on every 256 KiB write: the 262 KB join
    of its ciphertext (``FileDescriptor.doWrite``) faulted in fresh pages each time, about 100k
    minor faults and a third of its CPU per 256 MiB, which the upload's sender happened not to
    pay (issue 15, s14): a ceiling that depended on where the allocator's top landed."""
    from smartsyncd.runtime.malloctune import fix_mmap_threshold, keep_heap_top

    fix_mmap_threshold()
    keep_heap_top()


# --- the servers, each run as `python bench/ceiling.py --serve KIND PORT KEY CERT TOTAL` --------

def serve_pyopenssl(port: int, key: str, cert: str, total: int) -> None:
    """Accept connections one at a time; read ``total`` bytes with recv_into; answer one byte."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_file(cert)
    ctx.use_privatekey_file(key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    buf = bytearray(WRITE)
    while True:
        sock, _ = listener.accept()
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        got = 0
        try:
            while got < total:
                got += conn.recv_into(buf)
            conn.sendall(b"k")
        except SSL.Error:
            pass  # the port probe: a connection closed before its handshake
        sock.close()


def serve_twisted(port: int, key: str, cert: str, total: int) -> None:
    """A Twisted TLS server that counts what arrives and answers one byte after ``total``."""
    from twisted.internet import endpoints, protocol, reactor, ssl

    class Count(protocol.Protocol):
        got = 0

        def dataReceived(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= total:
                self.transport.write(b"k")  # type: ignore[union-attr]

    pem = Path(cert).read_text() + Path(key).read_text()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    endpoints.SSL4ServerEndpoint(reactor, port, options, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Count))
    reactor.run()  # type: ignore[attr-defined]


def serve_twisted_down(port: int, key: str, cert: str, total: int) -> None:
    """A Twisted TLS server that streams ``total`` bytes to each client (256 KiB writes from a
    push producer), then waits for the client to close."""
    from twisted.internet import endpoints, protocol, reactor, ssl
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    payload = os.urandom(WRITE)

    @implementer(IPushProducer)
    class Stream(protocol.Protocol):
        def connectionMade(self) -> None:
            self.sent, self.paused, self.started = 0, False, False
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:  # the client's go: one byte
            self.started = True
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            while self.started and not self.paused and self.sent < total:
                self.transport.write(payload)  # type: ignore[union-attr]
                self.sent += WRITE

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True

    pem = Path(cert).read_text() + Path(key).read_text()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    endpoints.SSL4ServerEndpoint(reactor, port, options, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Stream))
    reactor.run()  # type: ignore[attr-defined]


SERVERS = {"pyopenssl": serve_pyopenssl, "twisted": serve_twisted, "twisted-down": serve_twisted_down}


# --- the senders ----------------------------------------------------------------------------

def send_pyopenssl(port: int, data: bytes, total: int) -> float:
    from OpenSSL import SSL

    sock = socket.create_connection(("127.0.0.1", port))
    conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), sock)
    conn.set_connect_state()
    conn.do_handshake()
    start = time.perf_counter()
    view, sent = memoryview(data), 0
    while sent < total:
        piece = view[sent % len(data):][:WRITE]
        conn.sendall(piece)
        sent += len(piece)
    conn.recv(1)
    seconds = time.perf_counter() - start
    sock.close()
    return seconds


def twisted_child(role: str, port: int, total: int) -> tuple[float, float]:
    """Run the Twisted TLS client of ``role`` (``--send-twisted``: stream ``total`` bytes up;
    ``--receive-twisted``: ask for them and count them down) in a child process: its wall
    seconds and CPU-seconds over the transfer (its start-up not counted)."""
    out = subprocess.run(
        [sys.executable, __file__, role, str(port), str(total)],
        check=True, capture_output=True, text=True,
    ).stdout
    seconds, cpu = out.split()[-2:]
    return float(seconds), float(cpu)


def _report_over_tls(port: int, client: Any) -> None:
    """Connect ``client`` (a protocol class whose ``done`` fires with the wall seconds and that
    sets ``cpu``) to the bare server over Twisted's TLS and print both figures."""
    from twisted.internet import defer, endpoints, protocol, ssl, task

    async def run(reactor: Any) -> None:
        options = ssl.CertificateOptions(verify=False)
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
        stream = await endpoint.connect(protocol.Factory.forProtocol(client))
        seconds = await stream.done
        stream.transport.loseConnection()
        print(f"{seconds:.6f} {stream.cpu:.6f}")

    task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))


def _send_twisted_main(port: int, total: int) -> None:
    from twisted.internet import defer, protocol
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    payload = os.urandom(WRITE)

    @implementer(IPushProducer)
    class Stream(protocol.Protocol):
        def connectionMade(self) -> None:
            self.done: defer.Deferred[float] = defer.Deferred()
            self.sent, self.paused = 0, False
            self.start, self.cpu = time.perf_counter(), time.process_time()
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            while not self.paused and self.sent < total:
                self.transport.write(payload)  # type: ignore[union-attr]
                self.sent += WRITE

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True

        def dataReceived(self, data: bytes) -> None:
            self.cpu = time.process_time() - self.cpu
            self.done.callback(time.perf_counter() - self.start)

    _report_over_tls(port, Stream)


def _receive_twisted_main(port: int, total: int) -> None:
    from twisted.internet import defer, protocol

    class Count(protocol.Protocol):
        def connectionMade(self) -> None:
            self.done: defer.Deferred[float] = defer.Deferred()
            self.got = 0
            self.start, self.cpu = time.perf_counter(), time.process_time()
            self.transport.write(b"g")  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= total and not self.done.called:
                self.cpu = time.process_time() - self.cpu
                self.done.callback(time.perf_counter() - self.start)

    _report_over_tls(port, Count)


def blake3_gbps(data: bytes) -> float:
    import blake3

    start = time.perf_counter()
    blake3.blake3(data).digest()
    return len(data) / (time.perf_counter() - start) / 1e9


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from daemon import running_daemon

    from smartsyncd.client.engine import SyncCopy
    from smartsyncd.client.http import ServerAPI
    from smartsyncd.client.trust import PinnedPolicy

    total = args.mb * MiB
    work = Path(tempfile.mkdtemp(prefix="smartsync-ceiling-"))
    key, cert = make_certificate(work)
    source = work / "src"
    datagen.write_big_file(source / "big.bin", total, seed=1)
    data = (source / "big.bin").read_bytes()
    up, down = args.only in (None, "up"), args.only in (None, "down")
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    kinds = (["pyopenssl", "twisted"] if up else []) + (["twisted-down"] if down else [])
    for kind in kinds:
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port), str(key), str(cert), str(total)])
        wait_for_port(port, proc)
        servers[kind] = (proc, port)
    daemon = running_daemon(work / "server")
    results: dict[str, list[tuple[float, float]]] = {}  # name -> [(seconds, CPU of both processes)]
    blake: list[float] = []
    print(f"load average {os.getloadavg()[0]:.2f}; {args.mb} MiB; {args.runs} rounds", flush=True)
    try:
        daemon.add_user("bench", PASSWORD)
        api = ServerAPI(daemon.url, reactor=reactor, policy=PinnedPolicy(daemon.fingerprint))
        await api.login("bench", PASSWORD)
        held = None
        if down:  # the engagement every clone reads: the file uploaded once, not timed
            held = daemon.new_engagement("ceiling-down", editors=["bench"])
            copy = await SyncCopy.clone(api, held, work / "copies" / held)
            os.link(source / "big.bin", work / "copies" / held / "big.bin")
            await copy.sync(api)
            copy.close()
        with RsyncDaemon(work / "rsync") as rsyncd:
            for run in range(args.runs):
                blake.append(blake3_gbps(data))
                if up:
                    await upload_rows(api, daemon, rsyncd, servers, work, source, data, total, run, results)
                if held is not None:
                    await download_rows(api, daemon, servers, work, held, total, run, results)
                print(f"round {run + 1}: " + "; ".join(
                    f"{n.split(' (')[0]} {total / v[-1][0] / 1e6:.0f} MB/s" for n, v in results.items())
                    + f"; blake3 {blake[-1]:.2f} GB/s; load {os.getloadavg()[0]:.2f}", flush=True)
        await api.close()
    finally:
        daemon.stop()
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # the file, its hard links, packs, rsync's copy
    table(results, blake, total)


async def upload_rows(api: Any, daemon: Any, rsyncd: RsyncDaemon, servers: dict[str, tuple[subprocess.Popen[bytes], int]],
                      work: Path, source: Path, data: bytes, total: int, run: int,
                      results: dict[str, list[tuple[float, float]]]) -> None:
    from smartsyncd.client.engine import SyncCopy

    rsync_dir = work / f"rsync-src-{run}"
    rsync_dir.mkdir()
    os.link(source / "big.bin", rsync_dir / "big.bin")
    r = rsyncd.push(rsync_dir)
    results.setdefault("rsync (no TLS, no fsync)", []).append((r.seconds, float("nan")))
    for child in rsyncd.module_dir.iterdir():
        child.unlink()

    proc, port = servers["pyopenssl"]
    c0, s0 = cpu_seconds(os.getpid()), cpu_seconds(proc.pid)
    seconds = send_pyopenssl(port, data, total)
    cpu = cpu_seconds(os.getpid()) - c0 + cpu_seconds(proc.pid) - s0
    results.setdefault("pyOpenSSL, socket BIO (TLS only)", []).append((seconds, cpu))

    proc, port = servers["twisted"]
    s0 = cpu_seconds(proc.pid)
    seconds, sender_cpu = twisted_child("--send-twisted", port, total)
    cpu = cpu_seconds(proc.pid) - s0 + sender_cpu
    results.setdefault("bare Twisted TLS stream (TLS only)", []).append((seconds, cpu))

    name = daemon.new_engagement(f"ceiling-{run}", editors=["bench"])
    directory = work / "copies" / name
    copy = await SyncCopy.clone(api, name, directory)
    os.link(source / "big.bin", directory / "big.bin")
    d0, c0 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
    start = time.perf_counter()
    await copy.sync(api)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds(daemon.process.pid) - d0 + cpu_seconds(os.getpid()) - c0
    copy.close()
    results.setdefault("smartsyncd initial sync (chunk, hash, verify, fsync)", []).append((seconds, cpu))


async def download_rows(api: Any, daemon: Any, servers: dict[str, tuple[subprocess.Popen[bytes], int]],
                        work: Path, held: str, total: int, run: int,
                        results: dict[str, list[tuple[float, float]]]) -> None:
    from smartsyncd.client.engine import SyncCopy

    proc, port = servers["twisted-down"]
    s0 = cpu_seconds(proc.pid)
    seconds, receiver_cpu = twisted_child("--receive-twisted", port, total)
    cpu = cpu_seconds(proc.pid) - s0 + receiver_cpu
    results.setdefault("bare Twisted TLS download (TLS only)", []).append((seconds, cpu))

    directory = work / "clones" / f"clone-{run}"
    d0, c0 = cpu_seconds(daemon.process.pid), cpu_seconds(os.getpid())
    start = time.perf_counter()
    copy = await SyncCopy.clone(api, held, directory)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds(daemon.process.pid) - d0 + cpu_seconds(os.getpid()) - c0
    copy.close()
    if (directory / "big.bin").stat().st_size != total:
        raise RuntimeError("the clone did not bring the whole file")
    shutil.rmtree(directory)
    results.setdefault("smartsyncd clone (fetch, verify, write, fsync)", []).append((seconds, cpu))


def table(results: dict[str, list[tuple[float, float]]], blake: list[float], total: int) -> None:
    rsync = results.get("rsync (no TLS, no fsync)")
    rsync_s = statistics.median(s for s, _ in rsync) if rsync else float("nan")
    bare = {
        "up": [s for s, _ in results.get("bare Twisted TLS stream (TLS only)", [])],
        "down": [s for s, _ in results.get("bare Twisted TLS download (TLS only)", [])],
    }
    print(f"\nBLAKE3, one thread: median {statistics.median(blake):.2f} GB/s "
          f"(the issue's machine notes: 4.8 GB/s, i.e. {4.8 / statistics.median(blake):.1f} x this VM)")
    print("\n| what | median MB/s | runs (MB/s) | ratio to rsync | ratio to bare Twisted TLS"
          " (same direction) | CPU-s, both ends |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        secs = statistics.median(s for s, _ in rows)
        cpus = [c for _, c in rows if c == c]
        cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"
        each = ", ".join(f"{total / s / 1e6:.0f}" for s, _ in rows)
        down = "download" in name or "clone" in name
        same = bare["down" if down else "up"]
        ratio = f"{statistics.median(same) / secs:.2f}" if same else "-"
        # rsync runs the upload direction only
        versus = f"{rsync_s / secs:.2f}" if rsync_s == rsync_s and not down else "-"
        print(f"| {name} | {total / secs / 1e6:.0f} | {each} | {versus} | {ratio} | {cpu} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        kind, port, key, cert, total = sys.argv[2:7]
        if kind != "pyopenssl":
            tune_malloc()
        SERVERS[kind](int(port), key, cert, int(total))
    elif sys.argv[1:2] == ["--send-twisted"]:
        tune_malloc()
        _send_twisted_main(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--receive-twisted"]:
        tune_malloc()
        _receive_twisted_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--mb", type=int, default=256, help="file size in MiB")
        parser.add_argument("--runs", type=int, default=3, help="rounds (each runs every row)")
        parser.add_argument("--only", choices=["up", "down"], help="only the upload or the download rows")
        ns = parser.parse_args()
        from twisted.internet import defer, task

        task.react(lambda r: defer.Deferred.fromCoroutine(main(r, ns)))
