"""The client's upload-side I/O helpers: reading many chunks of a file, producing a body."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest
from twisted.internet.task import TaskStopped

from smartsyncd.client.bodyproducer import BytesProducer
from smartsyncd.client.localfs import read_chunks


def _ranges(data: bytes, cuts: list[int]) -> list[tuple[int, int, str]]:
    bounds = [0, *cuts, len(data)]
    return [
        (a, b - a, blake3.blake3(data[a:b]).hexdigest()) for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def test_read_chunks_back_to_back_and_scattered(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    pieces = _ranges(data, [10_000, 50_000, 120_000, 200_000, 260_000])
    wanted = [pieces[4], pieces[0], pieces[1], pieces[3]]  # out of order, with a gap at 2
    got = read_chunks(path, wanted, max_span=64_000)  # forces several runs
    assert set(got) == {h for _, _, h in wanted}
    for offset, size, digest in wanted:
        assert got[digest] == data[offset : offset + size]


def test_read_chunks_names_what_changed(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    pieces = _ranges(data, [40_000, 70_000])
    edited = bytearray(data)
    edited[50_000] ^= 1  # inside the second chunk only
    path.write_bytes(bytes(edited[:90_000]))  # and the file got shorter: the third is cut
    got = read_chunks(path, pieces)
    assert got[pieces[0][2]] == data[:40_000]
    assert got[pieces[1][2]] is None
    assert got[pieces[2][2]] is None


def test_read_chunks_of_a_missing_file(tmp_path: Path) -> None:
    got = read_chunks(tmp_path / "gone", [(0, 10, "ab" * 32)])
    assert got == {"ab" * 32: None}


class _Consumer:
    """A transport-like consumer that pauses its producer when its buffer passes a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffered: list[bytes] = []
        self.received = bytearray()
        self.producer: BytesProducer | None = None

    def write(self, data: bytes) -> None:
        self.buffered.append(data)
        if sum(map(len, self.buffered)) >= self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        for piece in self.buffered:
            self.received += piece
        self.buffered.clear()
        assert self.producer is not None
        self.producer.resumeProducing()


def test_producer_honours_pause_and_delivers_in_order() -> None:
    body = os.urandom(20 * 1024 + 17)
    consumer = _Consumer(limit=2048)
    producer = BytesProducer(body, piece=1000)
    consumer.producer = producer
    assert producer.length == len(body)
    done = producer.startProducing(consumer)
    results: list[object] = []
    done.addBoth(results.append)
    rounds = 0
    while not results:
        assert sum(map(len, consumer.buffered)) <= 2048 + 1000  # paused once over the limit
        consumer.drain()
        rounds += 1
        assert rounds < 100
    consumer.drain()
    assert results == [None]
    assert bytes(consumer.received) == body
    assert rounds > 1


def test_producer_resumed_from_inside_write_keeps_order() -> None:
    body = os.urandom(10_000)
    received = bytearray()
    producer = BytesProducer(body, piece=999)

    class Bouncy:
        def write(self, data: bytes) -> None:
            received.extend(data)
            producer.pauseProducing()
            producer.resumeProducing()  # a transport that drains at once

    results: list[object] = []
    producer.startProducing(Bouncy()).addBoth(results.append)
    assert results == [None]
    assert bytes(received) == body


def test_producer_stopped_fails_its_deferred_and_writes_no_more() -> None:
    consumer = _Consumer(limit=1000)
    producer = BytesProducer(os.urandom(10_000), piece=1000)
    consumer.producer = producer
    results: list[object] = []
    producer.startProducing(consumer).addBoth(results.append)
    written = len(consumer.buffered)
    producer.stopProducing()
    assert len(results) == 1
    failure = results[0]
    assert getattr(failure, "check", lambda *_: None)(TaskStopped) is TaskStopped
    producer.resumeProducing()
    assert len(consumer.buffered) == written


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (1 << 20) + 1])
def test_producer_edge_sizes(size: int) -> None:
    body = os.urandom(size)
    consumer = _Consumer(limit=1 << 30)
    producer = BytesProducer(body)
    consumer.producer = producer
    results: list[object] = []
    producer.startProducing(consumer).addBoth(results.append)
    consumer.drain()
    assert results == [None]
    assert bytes(consumer.received) == body


def test_producer_lets_go_of_the_body_once_done_or_stopped() -> None:
    """twisted.web keeps a request's producer in reference cycles the cyclic collector frees
    only now and then; a finished (or stopped) producer must not keep its body alive meanwhile
    (an upload of 2 GiB held 2.4 GB of bodies so; bench/upload_memory.py)."""
    import sys

    for finish in ("done", "stopped"):
        body = os.urandom(100_000)
        baseline = sys.getrefcount(body)
        consumer = _Consumer(limit=10_000)
        producer = BytesProducer(body, piece=4096)
        consumer.producer = producer
        results: list[object] = []
        producer.startProducing(consumer).addBoth(results.append)
        assert sys.getrefcount(body) > baseline  # held while producing
        if finish == "done":
            while not results:
                consumer.drain()
            assert results == [None]
        else:
            producer.stopProducing()
            results[0].trap(Exception)  # type: ignore[union-attr]
        assert sys.getrefcount(body) == baseline, finish  # the producer itself still exists
        assert producer.length == len(body)


def test_producer_of_pieces_gathers_small_ones_and_cuts_large_ones() -> None:
    """A chunk upload's body is a list of record headers and payloads (never joined into one
    8 MiB buffer): each write is ``piece`` bytes of them in order, whatever the pieces' sizes."""
    rng = random.Random(5)
    pieces = [rng.randbytes(n) for n in (41, 3000, 41, 2500, 0, 41, 9000, 7, 1000, 41, 1)]
    body = b"".join(pieces)
    writes: list[bytes] = []

    class Taker:
        def write(self, data: bytes) -> None:
            writes.append(data)

    producer = BytesProducer(pieces, piece=4096)
    assert producer.length == len(body)
    results: list[object] = []
    producer.startProducing(Taker()).addBoth(results.append)
    assert results == [None]
    assert b"".join(writes) == body
    assert [len(w) for w in writes] == [4096] * (len(body) // 4096) + [len(body) % 4096]
    # a piece that is a whole write on its own goes out as it is, not copied
    one = rng.randbytes(4096)
    writes.clear()
    BytesProducer([b"", one], piece=4096).startProducing(Taker())
    assert writes == [one] and writes[0] is one


def test_paced_producer_of_pieces_sends_them_in_order() -> None:
    from twisted.internet.task import Clock

    from smartsyncd.client.pacing import PacedBytesProducer
    from smartsyncd.core.pacing import Pacer

    rng = random.Random(6)
    pieces = [rng.randbytes(n) for n in (41, 70_000, 41, 30_000, 41, 150_000)]
    clock = Clock()
    writes: list[bytes] = []

    class Taker:
        def write(self, data: bytes) -> None:
            writes.append(data)

    producer = PacedBytesProducer(pieces, Pacer(1_000_000), clock, slice_bytes=65_536)
    results: list[object] = []
    producer.startProducing(Taker()).addBoth(results.append)
    while not results:
        assert clock.getDelayedCalls(), "the paced producer stalled"
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    assert results == [None] and b"".join(writes) == b"".join(pieces)
    assert max(map(len, writes)) <= 65_536 and len(writes) == -(-sum(map(len, pieces)) // 65_536)
