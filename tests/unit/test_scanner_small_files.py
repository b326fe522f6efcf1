"""The scanner's one-pass path for small files (issue 7): files of at most MIN_CHUNK bytes are
read with os.open/os.read, hashed once and kept only if the file opened is the one the walk saw.

The manifests must be exactly those of the general path (FastCDC over the whole file, then
``make_manifest``): property-tested on sizes around the minimum chunk size.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import BinaryIO

from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.client.scanner import Scanner
from smartsyncd.client.state import FileRecord
from smartsyncd.core.chunking import MIN_CHUNK, chunk_buffer, chunk_hash, make_chunker
from smartsyncd.core.manifest import make_manifest, one_chunk_manifest
from smartsyncd.core.model import ChunkRef
from smartsyncd.core.planner import BaseEntry, plan

SIZES = st.one_of(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=MIN_CHUNK - 64, max_value=MIN_CHUNK + 64),
    st.integers(min_value=1, max_value=3 * MIN_CHUNK),
)


def general_open(path: str) -> BinaryIO:
    """The general (file object) path: any hook other than the default takes it."""
    return open(path, "rb")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=MIN_CHUNK))
def test_one_chunk_manifest_is_the_fastcdc_manifest(data: bytes) -> None:
    cut = chunk_buffer(data)
    assert [ref for ref, _ in cut] == [ChunkRef(chunk_hash(data), len(data))]  # one chunk
    assert one_chunk_manifest(data) == make_manifest([ref for ref, _ in cut])


@settings(max_examples=40, deadline=None)
@given(
    size=SIZES, seed=st.integers(min_value=0, max_value=2**32 - 1),
    fill=st.sampled_from(["random", "zeros"]),
)
def test_small_file_path_and_general_path_give_identical_manifests(
    tmp_path_factory: object, size: int, seed: int, fill: str
) -> None:
    root: Path = tmp_path_factory.mktemp("scan")  # type: ignore[attr-defined]
    data = bytes(size) if fill == "zeros" else random.Random(seed).randbytes(size)
    (root / "f.bin").write_bytes(data)
    fast = Scanner(root).scan({}).entries["f.bin"]
    general = Scanner(root, open_file=general_open).scan({}).entries["f.bin"]
    # the chunker's own cut points, named as the protocol names chunks
    expected = make_manifest(
        [ChunkRef(chunk_hash(c.data), c.length) for c in make_chunker().cut_buf(data)]
    )
    for entry in (fast, general):
        assert (entry.content, entry.size, entry.chunks) == (expected.content, size, expected.chunks)
        assert entry.hashed
    assert (fast.mtime_ns, fast.inode) == (general.mtime_ns, general.inode)


def test_small_file_bytes_are_kept_for_the_upload(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"alpha")
    scanner = Scanner(tmp_path)
    job = scanner.begin({})
    read = job.step(10)
    [(entry, data)] = read
    assert data == b"alpha" and entry.chunks is not None
    assert scanner.recent == {entry.chunks[0].hash: b"alpha"}


def test_file_rewritten_after_the_walk_gets_its_new_content(tmp_path: Path) -> None:
    """The walk's stat is the first 'before': a file written between the walk and the read
    is read again and reported with what it holds now, never a mix."""
    target = tmp_path / "doc.txt"
    target.write_bytes(b"old text")
    scanner = Scanner(tmp_path)
    job = scanner.begin({})
    target.write_bytes(b"new text, longer")  # size changes: the walk's stat no longer matches
    job.step(10)
    entry = job.result.entries["doc.txt"]
    assert entry.size == len(b"new text, longer")
    assert entry.content == make_manifest([ChunkRef(chunk_hash(b"new text, longer"), 16)]).content
    assert entry.mtime_ns == target.stat().st_mtime_ns


def test_file_replaced_after_the_walk_is_read_again(tmp_path: Path) -> None:
    """Same size and mtime, another inode (an editor's save-by-rename): read again."""
    target = tmp_path / "doc.txt"
    target.write_bytes(b"aaaa")
    st0 = target.stat()
    scanner = Scanner(tmp_path)
    job = scanner.begin({})
    other = tmp_path / "other.tmp"
    other.write_bytes(b"bbbb")
    os.utime(other, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    os.replace(other, target)
    job.step(10)
    entry = job.result.entries["doc.txt"]
    assert entry.inode == target.stat().st_ino != st0.st_ino
    assert entry.chunks == (ChunkRef(chunk_hash(b"bbbb"), 4),)


def test_file_removed_after_the_walk_is_never_planned_as_deleted(tmp_path: Path) -> None:
    """The walk saw it, the read did not find it: a new file is left out; a synced one stands
    as its synced version (with the synced stat, so the next scan looks again and only then
    sees the delete), and the scan stays complete so other deletes still plan."""
    (tmp_path / "new.txt").write_bytes(b"x")
    (tmp_path / "synced.txt").write_bytes(b"z" * 10)
    (tmp_path / "kept.txt").write_bytes(b"y")
    first = Scanner(tmp_path).scan({})
    record = first.entries["synced.txt"]
    base = {"synced.txt": FileRecord(path="synced.txt", seq=1, content=record.content,
                                     size=record.size, mtime_ns=record.mtime_ns - 1,
                                     inode=record.inode, chunks=record.chunks)}
    job = Scanner(tmp_path).begin(base)
    (tmp_path / "new.txt").unlink()
    (tmp_path / "synced.txt").unlink()
    job.step(10)
    assert set(job.result.entries) == {"kept.txt", "synced.txt"}
    assert job.result.entries["synced.txt"].content == record.content
    assert job.result.entries["synced.txt"].mtime_ns == record.mtime_ns - 1
    assert job.result.complete
    assert plan(job.result.entries, {"synced.txt": BaseEntry(1, record.content, record.size)},
                []).push_deletes == []
    later = Scanner(tmp_path).scan(base)
    assert "synced.txt" not in later.entries  # gone now: the next sync sends the delete


def test_file_growing_past_one_chunk_after_the_walk_is_chunked(tmp_path: Path) -> None:
    target = tmp_path / "grows.bin"
    target.write_bytes(b"s" * 100)
    job = Scanner(tmp_path).begin({})
    big = os.urandom(5 * MIN_CHUNK)
    target.write_bytes(big)
    job.step(10)
    entry = job.result.entries["grows.bin"]
    assert entry.chunks == make_manifest([ref for ref, _ in chunk_buffer(big)]).chunks
    assert entry.size == len(big)
