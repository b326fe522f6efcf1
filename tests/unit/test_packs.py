"""Tests for pack files: layout, self-describing records, ranged reads, crash-safe writing."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
import zstandard

from smartsyncd.storage.durable import FileOps
from smartsyncd.storage.packs import MAGIC, PackStore


def _chunk(data: bytes, codec: int = 0) -> tuple[str, int, int, bytes]:
    payload = zstandard.ZstdCompressor().compress(data) if codec == 1 else data
    return blake3.blake3(data).hexdigest(), codec, len(data), payload


def test_write_and_read_back(tmp_path) -> None:
    store = PackStore(str(tmp_path / "chunks"))
    store.prepare()
    raw_a, raw_b = b"a" * 1000, os.urandom(300)
    chunks = [_chunk(raw_a, 1), _chunk(raw_b, 0)]
    pack = store.write_pack(7, chunks)

    path = store.path_for(7, pack.name)
    assert path == str(tmp_path / "chunks" / "7" / pack.name[:2] / f"{pack.name}.pack")
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(MAGIC) and len(data) == pack.size

    a, b = pack.entries
    # named by its magic and record headers (each chunk's verified hash, codec, lengths)
    headers = MAGIC + data[a.offset - 41 : a.offset] + data[b.offset - 41 : b.offset]
    assert blake3.blake3(headers).hexdigest() == pack.name
    assert a.codec == 1 and a.raw_size == 1000 and a.stored_size == len(chunks[0][3])
    stored_a = store.read_range(7, pack.name, a.offset, a.stored_size)
    assert zstandard.ZstdDecompressor().decompress(stored_a) == raw_a
    assert store.read_range(7, pack.name, b.offset, b.stored_size) == raw_b
    # the record header before each payload names the chunk: packs describe themselves
    header = data[b.offset - 41 : b.offset]
    assert struct.unpack(">32sBII", header) == (bytes.fromhex(b.hash), 0, 300, 300)
    # no temp files left behind
    assert [n for n in os.listdir(tmp_path / "chunks" / "7") if n.endswith(".tmp")] == []


def test_short_read_is_an_error(tmp_path) -> None:
    store = PackStore(str(tmp_path))
    pack = store.write_pack(1, [_chunk(b"xyz")])
    with pytest.raises(OSError):
        store.read_range(1, pack.name, pack.entries[0].offset, 100)
    with pytest.raises(OSError):
        store.read_range(1, "0" * 64, 0, 1)


def test_failed_write_leaves_no_pack(tmp_path) -> None:
    class FailingRename(FileOps):
        def rename(self, src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

    store = PackStore(str(tmp_path), ops=FailingRename())
    with pytest.raises(OSError):
        store.write_pack(1, [_chunk(b"data")])
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert leftovers == []


def test_bad_pack_name_refused(tmp_path) -> None:
    store = PackStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.path_for(1, "../../etc/passwd")


def test_probe(tmp_path) -> None:
    store = PackStore(str(tmp_path / "root"))
    store.prepare()
    store.probe()
    assert os.listdir(tmp_path / "root") == []


def test_pack_written_piecewise_equals_one_write_and_survives_short_writes(tmp_path) -> None:
    """``append`` writes header/payload pieces with writev; a short writev is finished piece
    by piece, and the file holds exactly the records in order."""

    class ShortWritev(FileOps):
        def writev(self, fd: int, buffers) -> int:  # type: ignore[no-untyped-def, override]
            first = bytes(buffers[0])
            return os.write(fd, first[: max(1, len(first) // 2)])  # at most half a piece

    chunks = [_chunk(os.urandom(n), 0) for n in (1, 5000, 41, 70000)] + [_chunk(b"z" * 9000, 1)]
    plain = PackStore(str(tmp_path / "a"))
    plain.prepare()
    short = PackStore(str(tmp_path / "b"), ops=ShortWritev())
    short.prepare()
    one = plain.write_pack(3, chunks)
    writer = short.open_writer(3)
    writer.append(chunks[:2])
    writer.append(iter(chunks[2:]))
    two = writer.commit()
    assert one == two
    with open(plain.path_for(3, one.name), "rb") as f, open(short.path_for(3, two.name), "rb") as g:
        assert f.read() == g.read()
    for entry, chunk in zip(one.entries, chunks, strict=True):
        assert plain.read_range(3, one.name, entry.offset, entry.stored_size) == chunk[3]


def test_appended_batches_start_writeback_and_the_pack_is_fsynced_before_it_is_named(tmp_path) -> None:
    """Each appended batch's bytes are handed to the disk early (``start_writeback``, issue 15
    s13); durability still comes only from the fsync of the file, then the rename, then the
    folder's fsync, all before ``commit`` returns (what the upload's answer waits for)."""

    class Recording(FileOps):
        def __init__(self) -> None:
            self.calls: list[tuple[str, object]] = []
            self.names: dict[int, str] = {}

        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            fd = super().open(path, flags, mode)
            self.names[fd] = path
            return fd

        def writev(self, fd: int, buffers) -> int:  # type: ignore[no-untyped-def, override]
            written = super().writev(fd, buffers)
            self.calls.append(("writev", self.names[fd]))
            return written

        def start_writeback(self, fd: int, offset: int, length: int) -> None:
            self.calls.append(("writeback", (self.names[fd], offset, length)))
            super().start_writeback(fd, offset, length)

        def fsync(self, fd: int) -> None:
            self.calls.append(("fsync", self.names[fd]))
            super().fsync(fd)

        def rename(self, src: str, dst: str) -> None:
            self.calls.append(("rename", (src, dst)))
            super().rename(src, dst)

    ops = Recording()
    store = PackStore(str(tmp_path / "chunks"), ops=ops)
    store.prepare()
    writer = store.open_writer(4)
    writer.append([_chunk(os.urandom(3000))])
    writer.append([_chunk(os.urandom(5000)), _chunk(b"y" * 700)])
    ops.calls.clear()  # the engagement folder made and fsynced before the pack
    temp = writer._file.temp_path
    pack = writer.commit()
    final = store.path_for(4, pack.name)
    shard = os.path.dirname(final)
    calls = [(k, v) for k, v in ops.calls if not (k == "fsync" and v == os.path.dirname(shard))]
    # the shard folder's creation (fsync of its parent) may come first; then, in this order:
    assert calls == [("fsync", temp), ("rename", (temp, final)), ("fsync", shard)]


def test_each_appended_batch_starts_its_writeback(tmp_path) -> None:
    """The ranges handed to ``start_writeback`` are the batches, back to back, to the end."""
    ranges: list[tuple[int, int]] = []

    class Recording(FileOps):
        def start_writeback(self, fd: int, offset: int, length: int) -> None:
            ranges.append((offset, length))
            super().start_writeback(fd, offset, length)

    store = PackStore(str(tmp_path / "chunks"), ops=Recording())
    store.prepare()
    writer = store.open_writer(4)
    writer.append([_chunk(os.urandom(3000))])
    assert len(ranges) == 1  # before the next batch, not at the commit
    writer.append([_chunk(os.urandom(5000)), _chunk(b"y" * 700)])
    pack = writer.commit()
    (off1, len1), (off2, len2) = ranges
    assert off1 == len(MAGIC) and off2 == off1 + len1 and off2 + len2 == pack.size
    with open(store.path_for(4, pack.name), "rb") as f:
        assert len(f.read()) == pack.size
