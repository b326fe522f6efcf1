"""A large file just pulled goes into the chunk index as packed segments built off the reactor
(client/pullwrite.py ``FileWriter.record``, chunkindex ``build_segments``), and segments built
that way find every chunk where ``ChunkIndex.add`` would."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from clientkit import ENG, MemoryServer, counting_api, driven, files_of
from twisted.internet.defer import maybeDeferred

from smartsyncd.client import chunkindex, pullwrite
from smartsyncd.client.chunkindex import ChunkIndex, build_segments
from smartsyncd.client.engine import SyncCopy
from smartsyncd.core.model import ChunkRef

MiB = 1 << 20


@driven
async def test_a_pulled_large_file_is_indexed_off_the_reactor(
    server: MemoryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullwrite, "SEGMENT_MIN", 16)  # a few MiB make a "large" file
    data = random.Random(3).randbytes(5 * MiB)
    writer = await server.api("alice")
    source = await server.clone(writer, tmp_path / "source")
    (tmp_path / "source" / "a.bin").write_bytes(data)
    await source.sync(writer)
    source.close()

    ran: list[Any] = []

    def run_blocking(f: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(f)
        return maybeDeferred(f, *args, **kwargs)

    reader = await counting_api(server)
    copy = await SyncCopy.clone(reader, ENG, tmp_path / "copy", clock=server.clock,
                                run_blocking=run_blocking)
    copy.close()
    assert files_of(tmp_path / "copy") == {"a.bin": data}
    assert build_segments in ran


def test_built_segments_find_what_add_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkindex, "SEGMENT_MAX", 1 << 10)  # two segments for one file
    rng = random.Random(5)
    files = {name: [ChunkRef(rng.randbytes(32).hex(), rng.randrange(1, 70_000))
                    for _ in range(count)]
             for name, count in (("a", 1500), ("b", 1100), ("c", 3))}
    added, built = ChunkIndex(), ChunkIndex()
    for path, chunks in files.items():
        added.add(path, chunks)
        if len(chunks) >= chunkindex.SEGMENT_MIN:
            built.add_segments(build_segments(built.number(path), chunks))
        else:
            built.add(path, chunks)
    assert len(built) == len(added) == 2603
    for path, chunks in files.items():
        offset = 0
        for chunk in chunks:
            assert built[chunk.hash] == added[chunk.hash] == (path, offset, chunk.size)
            offset += chunk.size
    assert rng.randbytes(32).hex() not in built
