"""How many early upload requests are on the wire at once (client/early.py): two for small
files, more once a new large file's windows go (issue 15, s13: on a fast link the server's
fsync and index transaction per window otherwise left the link idle)."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred

from smartsyncd.client.early import EarlyUpload
from smartsyncd.client.scanner import ScannedFile
from smartsyncd.client.wire import UploadItem
from smartsyncd.core.model import ChunkRef


class HeldServer:
    """A ``ChunkServer`` whose uploads are answered only when the test says so."""

    chunks_present = 0

    def __init__(self) -> None:
        self.waiting: list[Deferred[None]] = []
        self.sent: list[list[str]] = []
        self.most = 0

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]:
        return list(hashes)

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int:
        items = list(chunks)
        self.sent.append([item[0] for item in items])
        answer: Deferred[None] = Deferred()
        self.waiting.append(answer)
        self.most = max(self.most, len(self.waiting))
        await answer
        return sum(len(item[1]) for item in items)

    def answer_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


def _chunks(prefix: str, count: int, size: int = 600) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i:063x}"[-64:], bytes([i % 256]) * size) for i in range(count)]


def test_small_files_keep_two_requests_on_the_wire() -> None:
    server = HeldServer()
    early = EarlyUpload(server, "eng", {}, window=1000, blind=True, stream_in_flight=4)
    early.offer(
        (ScannedFile(content=h, size=len(data), path=f"f{i}.txt", mtime_ns=0, inode=i,
                     chunks=[ChunkRef(h, len(data))], hashed=True), data)
        for i, (h, data) in enumerate(_chunks("a", 12))
    )
    assert len(server.waiting) == 2  # the rest waits for an answer
    server.answer_all()
    assert len(server.waiting) == 2
    assert server.most == 2


def test_a_new_large_files_windows_go_up_to_stream_in_flight() -> None:
    server = HeldServer()
    early = EarlyUpload(server, "eng", {}, window=1000, stream_window=1000, blind=True, stream_in_flight=4)
    new = early.begin_file()
    early.offer_chunks(new, _chunks("b", 12))
    assert len(server.waiting) == 4  # four windows out before any answer
    assert early._pending  # and no more than that: the rest is held
    finished = Deferred.fromCoroutine(early.finish())
    while server.waiting:
        server.answer_all()
    assert finished.called
    sent = [h for batch in server.sent for h in batch]
    assert sorted(sent) == sorted(h for h, _ in _chunks("b", 12))  # each chunk once
    assert server.most == 4
