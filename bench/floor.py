"""What the necessary work of this design's upload costs here (issue 15: is 0.7 x bare TLS reachable?).

    python bench/floor.py [--mb 256] [--runs 3]

Each round runs, one after the other on the same seeded random file:

- ``bare Twisted TLS``: bench/ceiling.py's stream (its server and sender, reused): 256 KiB
  writes from a push producer to a server that only counts them, two processes;
- ``floor pipeline``: the least this design's upload does, over Twisted TLS with no HTTP and
  no protocol, two processes; both ends use the daemon's and the client's TLS layer
  (runtime/tlsbatching.py: many records per step), as smartsyncd does. The sender cuts the
  file with FastCDC (``cut_stream``, the client's parameters), names each chunk with BLAKE3
  and streams ``hash, length, bytes`` frames gathered into 256 KiB writes; the cutting runs on
  a thread beside the reactor (as the client's pool does), at most 2 MiB ahead, or (the third
  row) on the reactor thread itself, a block each time the transport takes more. The receiver
  cuts the frames out of each arriving piece (memoryviews, no copy), and a worker thread
  checks each chunk's BLAKE3 and ``writev``s 4 MiB batches to one file, fsyncs it at the end
  and then answers one byte; reading pauses while two batches wait. No zstd probe, no pack
  index, no database, no answers per request;
- ``steps alone``: each necessary step over the whole file, one thread, in this process:
  reading the file (1 MiB ``readinto``, page cache), FastCDC (``cut_buf``), BLAKE3 of each
  chunk (done twice: the client names, the daemon verifies), the client's zstd probe
  (``compress_chunk`` of each chunk), writing it to a file in 4 MiB writes (page cache), and
  the fsync after.

Prints medians of the rounds: MB/s and the ratio to bare TLS in the same round for the two
streams, CPU-seconds of both processes (from /proc), and each step's CPU- and wall-seconds.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ceiling  # noqa: E402
import datagen  # noqa: E402
from procstat import cpu_seconds  # noqa: E402
from rsync_baseline import free_port  # noqa: E402

MiB = 1 << 20
BLOCK = ceiling.WRITE  # bytes per hand-off and per transport write (1 MiB was no better)
FRAME = struct.Struct(">32sI")  # BLAKE3 digest, payload length (0: the end)
BATCH = 4 * MiB
AHEAD = 8  # blocks the sender's thread may be ahead of the socket


# --- the floor's receiver, run as `python bench/floor.py --serve PORT KEY CERT FOLDER` --------

def serve_floor(port: int, key: str, cert: str, folder: str) -> None:
    """Accept streams of frames; verify and write each to its own file; fsync; answer one byte."""
    import blake3
    from twisted.internet import protocol, reactor

    from smartsyncd.runtime.malloctune import fix_mmap_threshold, keep_heap_top
    from smartsyncd.runtime.tlsbatching import batching_tls_endpoint

    fix_mmap_threshold()  # the daemon's allocator settings (web/upload.py, web/pull.py)
    keep_heap_top()

    class Receive(protocol.Protocol):
        def connectionMade(self) -> None:
            self.carry = bytearray()
            self.batch: list[tuple[bytes, memoryview]] = []
            self.batch_bytes = 0
            self.waiting = 0
            self.paused = False
            self.jobs: queue.Queue[list[tuple[bytes, memoryview]] | None] = queue.Queue()
            name = os.path.join(folder, f"stream-{id(self)}.tmp")
            self.fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            threading.Thread(target=self.work, daemon=True).start()

        def dataReceived(self, data: bytes) -> None:
            view, pos = memoryview(data), 0
            if self.carry:  # a frame split across reads: only that frame is gathered
                carry = self.carry
                if len(carry) < FRAME.size:
                    pos = min(FRAME.size - len(carry), len(view))
                    carry += view[:pos]
                    if len(carry) < FRAME.size:
                        return
                digest, length = FRAME.unpack_from(carry)
                if length == 0:
                    self.hand_off(end=True)
                    return
                want = FRAME.size + length - len(carry)
                if len(view) - pos < want:
                    carry += view[pos:]
                    return
                carry += view[pos : pos + want]
                pos += want
                self.add(digest, memoryview(bytes(carry))[FRAME.size :])
                self.carry = bytearray()
            while len(view) - pos >= FRAME.size:
                digest, length = FRAME.unpack_from(view, pos)
                if length == 0:
                    self.hand_off(end=True)
                    return
                if len(view) - pos - FRAME.size < length:
                    break
                start = pos + FRAME.size
                self.add(digest, view[start : start + length])
                pos = start + length
            self.carry += view[pos:]
            if self.batch_bytes >= BATCH:
                self.hand_off(end=False)

        def add(self, digest: bytes, payload: memoryview) -> None:
            self.batch.append((digest, payload))
            self.batch_bytes += len(payload)

        def hand_off(self, end: bool) -> None:
            if self.batch:
                self.jobs.put(self.batch)
                self.waiting += 1
                self.batch, self.batch_bytes = [], 0
            if end:
                self.jobs.put(None)
            elif self.waiting >= 2 and not self.paused:
                self.paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]

        def done_one(self) -> None:
            self.waiting -= 1
            if self.paused and self.waiting < 2:
                self.paused = False
                self.transport.resumeProducing()  # type: ignore[union-attr]

        def work(self) -> None:
            while (batch := self.jobs.get()) is not None:
                for digest, payload in batch:
                    if blake3.blake3(payload).digest() != digest:
                        raise SystemExit("a chunk does not hash to its name")
                os.writev(self.fd, [payload for _, payload in batch])
                reactor.callFromThread(self.done_one)  # type: ignore[attr-defined]
            os.fsync(self.fd)
            os.close(self.fd)
            reactor.callFromThread(self.transport.write, b"k")  # type: ignore[attr-defined,union-attr]

    description = f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    batching_tls_endpoint(reactor, description).listen(protocol.Factory.forProtocol(Receive))
    reactor.run()  # type: ignore[attr-defined]


# --- the floor's sender, run as `python bench/floor.py --send PORT FILE [inline]` ----------

def _send_floor_main(port: int, path: str, inline: bool) -> None:
    import blake3
    from twisted.internet import defer, protocol, reactor, task
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    from smartsyncd.core.chunking import make_chunker
    from smartsyncd.runtime.malloctune import fix_mmap_threshold, keep_heap_top

    fix_mmap_threshold()  # as the client's upload sets it (client/early.py), heap top kept
    keep_heap_top()

    def blocks() -> Iterator[bytearray]:
        block = bytearray()
        with open(path, "rb") as f:
            for chunk in make_chunker().cut_stream(f):
                block += FRAME.pack(blake3.blake3(chunk.data).digest(), chunk.length)
                block += chunk.data
                if len(block) >= BLOCK:
                    yield block
                    block = bytearray()
        block += FRAME.pack(bytes(32), 0)
        yield block

    @implementer(IPushProducer)
    class Stream(protocol.Protocol):
        def connectionMade(self) -> None:
            self.done: defer.Deferred[float] = defer.Deferred()
            self.ready: list[bytearray] = []
            self.room = threading.Semaphore(AHEAD)
            self.source = blocks() if inline else None
            self.paused = False
            self.start, self.cpu = time.perf_counter(), time.process_time()
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            if inline:
                self.resumeProducing()
            else:
                threading.Thread(target=self.cut, daemon=True).start()

        def cut(self) -> None:
            for block in blocks():
                self.room.acquire()
                reactor.callFromThread(self.deliver, block)  # type: ignore[attr-defined]

        def deliver(self, block: bytearray) -> None:
            self.ready.append(block)
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            if self.source is not None:  # inline: cut and name the next block here
                while not self.paused and (block := next(self.source, None)) is not None:
                    self.transport.write(block)  # type: ignore[union-attr]
                return
            while self.ready and not self.paused:
                self.transport.write(self.ready.pop(0))  # type: ignore[union-attr]
                self.room.release()

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True

        def dataReceived(self, data: bytes) -> None:
            self.cpu = time.process_time() - self.cpu
            self.done.callback(time.perf_counter() - self.start)

    async def run(reactor: Any) -> None:
        # the daemon's and the client's TLS layer (runtime/tlsbatching.py) at both ends
        from twisted.internet import endpoints, ssl

        from smartsyncd.runtime.tlsbatching import BatchingTLSFactory

        tls = BatchingTLSFactory(ssl.CertificateOptions(verify=False), True,
                                 protocol.Factory.forProtocol(Stream))
        wrapper = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(tls)
        stream = wrapper.wrappedProtocol
        seconds = await stream.done
        stream.transport.loseConnection()
        print(f"{seconds:.6f} {stream.cpu:.6f}")

    task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))


def _child(args: list[str]) -> tuple[float, float]:
    """Run a sender (this file's or ceiling.py's) in a child: its wall and CPU-seconds."""
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True).stdout
    seconds, cpu = out.split()[-2:]
    return float(seconds), float(cpu)


# --- the steps alone ------------------------------------------------------------------------

def timed(step: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU-seconds of this thread) of ``step()``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    step()
    return time.perf_counter() - wall, time.thread_time() - cpu


def steps(path: Path, data: bytes, pieces: list[bytes], folder: Path) -> dict[str, tuple[float, float]]:
    import blake3

    from smartsyncd.core.chunking import make_chunker
    from smartsyncd.core.chunkstream import compress_chunk

    def read() -> None:
        buf = bytearray(MiB)
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    def fastcdc() -> None:
        for _ in make_chunker().cut_buf(data):
            pass

    def hashes() -> None:
        for piece in pieces:
            blake3.blake3(piece).digest()

    def probe() -> None:
        for piece in pieces:
            compress_chunk(piece)

    target = folder / "steps.tmp"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    view = memoryview(data)

    def write() -> None:
        for start in range(0, len(view), BATCH):
            os.write(fd, view[start : start + BATCH])

    try:
        out = {
            "read the file (1 MiB readinto, page cache)": timed(read),
            "FastCDC (cut_buf, 8/32/256 KiB)": timed(fastcdc),
            "BLAKE3 of each chunk (x2: client names, daemon verifies)": timed(hashes),
            "zstd probe (compress_chunk of each chunk)": timed(probe),
            "write to a file (4 MiB writes, page cache)": timed(write),
            "fsync of that file": timed(lambda: os.fsync(fd)),
        }
    finally:
        os.close(fd)
        target.unlink()
    return out


def main(args: argparse.Namespace) -> None:
    from smartsyncd.core.chunking import make_chunker

    total = args.mb * MiB
    work = Path(tempfile.mkdtemp(prefix="smartsync-floor-"))
    key, cert = ceiling.make_certificate(work)
    source = work / "big.bin"
    datagen.write_big_file(source, total, seed=1)
    data = source.read_bytes()
    pieces = [bytes(c.data) for c in make_chunker().cut_buf(data)]
    received = work / "received"
    received.mkdir()
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for kind, argv in (
        ("twisted", [str(HERE / "ceiling.py"), "--serve", "twisted"]),
        ("floor", [__file__, "--serve"]),
    ):
        port = free_port()
        tail = [str(port), str(key), str(cert), str(total) if kind == "twisted" else str(received)]
        proc = subprocess.Popen([sys.executable, *argv, *tail])
        ceiling.wait_for_port(port, proc)
        servers[kind] = (proc, port)
    streams: dict[str, list[tuple[float, float]]] = {}
    alone: dict[str, list[tuple[float, float]]] = {}
    split: dict[str, list[tuple[float, float]]] = {}  # name -> [(sender CPU-s, receiver CPU-s)]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.mb} MiB in {len(pieces)} chunks; "
          f"{args.runs} rounds", flush=True)
    try:
        for run in range(args.runs):
            for name, kind, argv, tail in (
                ("bare Twisted TLS stream", "twisted", [str(HERE / "ceiling.py"), "--send-twisted"],
                 [str(total)]),
                ("floor pipeline (cut, hash, TLS, verify, write, fsync)", "floor", [__file__, "--send"],
                 [str(source)]),
                ("same, the sender cutting on its reactor thread", "floor", [__file__, "--send"],
                 [str(source), "inline"]),
            ):
                proc, port = servers[kind]
                s0 = cpu_seconds(proc.pid)
                seconds, sender = _child([*argv, str(port), *tail])
                receiver = cpu_seconds(proc.pid) - s0
                streams.setdefault(name, []).append((seconds, receiver + sender))
                split.setdefault(name, []).append((sender, receiver))
                for leftover in received.iterdir():
                    leftover.unlink()
            for name, figures in steps(source, data, pieces, work).items():
                alone.setdefault(name, []).append(figures)
            print(f"round {run + 1}: " + "; ".join(
                f"{n.split(' (')[0]} {total / v[-1][0] / 1e6:.0f} MB/s" for n, v in streams.items())
                + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    table(streams, split, alone, total)


def table(streams: dict[str, list[tuple[float, float]]], split: dict[str, list[tuple[float, float]]],
          alone: dict[str, list[tuple[float, float]]], total: int) -> None:
    bare = streams["bare Twisted TLS stream"]
    print("\n| stream | median MB/s | runs (MB/s) | ratio to bare TLS (median of the rounds' own) "
          "| CPU-s, both ends |")
    print("|---|---|---|---|---|")
    for name, rows in streams.items():
        secs = statistics.median(s for s, _ in rows)
        ratio = statistics.median(b[0] / r[0] for b, r in zip(bare, rows, strict=True))
        each = ", ".join(f"{total / s / 1e6:.0f}" for s, _ in rows)
        sender = statistics.median(c for c, _ in split[name])
        receiver = statistics.median(c for _, c in split[name])
        print(f"| {name} | {total / secs / 1e6:.0f} | {each} | {ratio:.2f} "
              f"| {statistics.median(c for _, c in rows):.2f} (sender {sender:.2f}, receiver {receiver:.2f}) |")
    print(f"\n| step, alone, per {total // MiB} MiB, one thread | CPU-s (median) | wall s (median) |")
    print("|---|---|---|")
    necessary = 0.0
    for name, rows in alone.items():
        cpu = statistics.median(c for _, c in rows)
        necessary += cpu * (2 if name.startswith("BLAKE3") else 1)
        print(f"| {name} | {cpu:.3f} | {statistics.median(w for w, _ in rows):.3f} |")
    tls = statistics.median(c for _, c in bare)
    print(f"| **sum** (BLAKE3 twice) + bare TLS's {tls:.2f} CPU-s | "
          f"**{necessary + tls:.2f}** | on 2 cores at best {(necessary + tls) / 2:.2f} s = "
          f"{total / ((necessary + tls) / 2) / 1e6:.0f} MB/s |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        port, key, cert, folder = sys.argv[2:6]
        serve_floor(int(port), key, cert, folder)
    elif sys.argv[1:2] == ["--send"]:
        _send_floor_main(int(sys.argv[2]), sys.argv[3], sys.argv[4:5] == ["inline"])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--mb", type=int, default=256, help="file size in MiB")
        parser.add_argument("--runs", type=int, default=3, help="rounds (each runs every row)")
        main(parser.parse_args())
