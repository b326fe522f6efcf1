"""Edits of small files after the first travel as deltas (issue 15, "fewer bytes per sync"):
a file under 64 KiB gets a base copy once this copy has uploaded an edit of it, so its next edit
sends a few hundred bytes instead of the whole compressed file; new small files keep none (an
initial upload of thousands of files writes no base copies)."""

from __future__ import annotations

import random
from pathlib import Path

from clientkit import MemoryServer, driven, files_of


def _source(seed: int, size: int) -> str:
    """Text like source code: lines of random identifiers (compressible, not repetitive)."""
    rng = random.Random(seed)
    lines = []
    while sum(len(x) for x in lines) < size:
        names = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12)))
                 for _ in range(rng.randint(2, 7))]
        lines.append("    " + " = ".join(names) + "\n")
    return "".join(lines)


@driven
async def test_the_second_edit_of_a_small_file_travels_as_a_delta(
    server: MemoryServer, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    text = _source(1, 20_000)
    (a_dir / "client.py").write_text(text)
    (a_dir / "new.py").write_text(_source(2, 20_000))
    await a.sync(a_api)
    assert not list((a_dir / ".smartsync" / "base").glob("*.zst"))  # new files: no base copies

    (a_dir / "client.py").write_text(text[:9000] + "    # first edit\n" + text[9000:])
    first = await a.sync(a_api)  # whole (no base yet); keeps one now
    text = (a_dir / "client.py").read_text()
    (a_dir / "client.py").write_text(text[:4000] + "    # second edit\n" + text[4000:])
    second = await a.sync(a_api)
    assert first.uploaded == second.uploaded == 1
    assert first.bytes_sent > 3000 and second.bytes_sent < first.bytes_sent / 4, (first, second)

    b = await server.clone(b_api, b_dir)  # the server rebuilt the file exactly
    assert files_of(b_dir)["client.py"] == (a_dir / "client.py").read_bytes()
    for copy in (a, b):
        copy.close()
