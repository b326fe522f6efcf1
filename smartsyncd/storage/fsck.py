"""Consistency check of a store: metadata against itself, and chunk rows against pack bytes.

For every engagement:
- every manifest decodes, hashes to its content id, and matches its recorded size and count;
- every chunk a manifest names has a chunk row (``missing_chunk``);
- every chunk row's pack file exists (``missing_pack``) and its byte range decompresses
  (capped, as for uploads) to ``raw_size`` bytes that hash to the chunk name (``bad_chunk``);
- every live file's content has a manifest (``missing_manifest``; a folder entry has none);
- the change log holds exactly the seqs 1..head (``bad_log``);
- packs are read on the engagement's volume (``storage/volumes.py``); an interrupted
  ``engagement move`` is reported (``unfinished_move``).

Nothing is repaired: metadata pointing at missing data is an alarm for an operator, never a reason
to delete the entry. SQL runs on the store's DB thread, pack reads on its file pool.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from smartsyncd.core import manifest
from smartsyncd.core.chunkstream import verify_records
from smartsyncd.core.errors import SyncError
from smartsyncd.core.model import is_folder
from smartsyncd.storage.api import FsckProblem
from smartsyncd.storage.changelog import engagement_ids
from smartsyncd.storage.db import MetadataDB
from smartsyncd.storage.packs import DEFAULT_VOLUME, PackStore
from smartsyncd.storage.runner import StoreRunner

ChunkRow = tuple[str, str, int, int, int, int]  # hash, pack, offset, stored_size, codec, raw_size


def check_metadata(db: MetadataDB, engagement_id: int, name: str, head: int) -> list[FsckProblem]:
    """The database-only checks for one engagement (run on the DB thread)."""

    def tx() -> list[FsckProblem]:
        problems: list[FsckProblem] = []

        def report(kind: str, detail: str) -> None:
            problems.append(FsckProblem(engagement=name, kind=kind, detail=detail))

        have = {
            bytes(r[0]) for r in db.all("SELECT hash FROM chunks WHERE engagement_id = ?", (engagement_id,))
        }
        contents: set[bytes] = set()
        for content, size, count, body in db.all(
            "SELECT content, size, chunk_count, body FROM manifests WHERE engagement_id = ?",
            (engagement_id,),
        ):
            content = bytes(content)
            contents.add(content)
            try:
                chunks = manifest.decode_binary(bytes(body))
            except (SyncError, ValueError) as e:
                report("bad_manifest", f"manifest {content.hex()} does not decode: {e}")
                continue
            if manifest.content_id(chunks) != content.hex():
                report("bad_manifest", f"manifest {content.hex()} does not hash to its id")
            if sum(c.size for c in chunks) != size or len(chunks) != count:
                report("bad_manifest", f"manifest {content.hex()} size or count does not match")
            for c in chunks:
                if bytes.fromhex(c.hash) not in have:
                    report("missing_chunk", f"manifest {content.hex()} needs chunk {c.hash}")

        for path, content in db.all(
            "SELECT path, content FROM files WHERE engagement_id = ? AND content IS NOT NULL",
            (engagement_id,),
        ):
            if bytes(content) not in contents and not is_folder(bytes(content).hex()):
                report("missing_manifest", f"{path!r} has content {bytes(content).hex()} without a manifest")

        seqs = [int(r[0]) for r in db.all("SELECT seq FROM changes WHERE engagement_id = ? ORDER BY seq", (engagement_id,))]
        if seqs != list(range(1, head + 1)):
            gaps = sorted(set(range(1, head + 1)) - set(seqs))[:10]
            extra = [s for s in seqs if s < 1 or s > head][:10]
            report("bad_log", f"change log is not 1..{head}: {len(seqs)} records, missing {gaps}, beyond head {extra}")
        row = db.one("SELECT MAX(seq) FROM files WHERE engagement_id = ?", (engagement_id,))
        if row[0] is not None and int(row[0]) > head:
            report("bad_log", f"a file records seq {row[0]} beyond head {head}")
        return problems

    return db.read(tx)


def chunk_rows(db: MetadataDB, engagement_id: int) -> list[ChunkRow]:
    rows = db.all(
        "SELECT hash, pack_id, pack_offset, stored_size, codec, raw_size FROM chunks"
        " WHERE engagement_id = ? ORDER BY pack_id, pack_offset",
        (engagement_id,),
    )
    return [(bytes(r[0]).hex(), r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]


def check_packs(
    packs: PackStore, engagement_id: int, name: str, rows: Sequence[ChunkRow], volume: str | None = None
) -> list[FsckProblem]:
    """Read and verify every chunk's bytes on ``volume`` (default: the engagement's; file pool)."""
    problems: list[FsckProblem] = []
    by_pack: dict[str, list[ChunkRow]] = defaultdict(list)
    for row in rows:
        by_pack[row[1]].append(row)
    for pack, members in by_pack.items():
        try:
            path = packs.path_for(engagement_id, pack, volume)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            problems.append(FsckProblem(name, "missing_pack", f"pack {pack} ({len(members)} chunks) is missing"))
            continue
        except OSError as e:
            problems.append(FsckProblem(name, "unreadable_pack", f"pack {pack}: {e}"))
            continue
        try:
            for chunk_hash, _, offset, stored_size, codec, raw_size in members:
                payload = os.pread(fd, stored_size, offset)
                try:
                    if len(payload) != stored_size:
                        raise ValueError("pack is truncated")
                    verify_records([(chunk_hash, codec, raw_size, payload)])
                except (SyncError, ValueError) as e:
                    problems.append(
                        FsckProblem(name, "bad_chunk", f"chunk {chunk_hash} in pack {pack}: {_message(e)}")
                    )
        finally:
            os.close(fd)
    return problems


def _volumes(db: MetadataDB) -> list[tuple[int, tuple[str | None, str | None]]]:
    rows = db.all("SELECT id, volume, moving_to FROM engagements")
    return [(int(r[0]), (r[1], r[2])) for r in rows]


def _message(e: Exception) -> str:
    return e.message if isinstance(e, SyncError) else str(e)


async def check_store(store: StoreRunner) -> list[FsckProblem]:
    """Run every check over every engagement; an empty list means the store is consistent."""
    problems: list[FsckProblem] = []
    engagements: list[Any] = await store.run_db(engagement_ids)
    placed = dict(await store.run_db(_volumes))
    for engagement_id, name, head in engagements:
        problems += await store.run_db(check_metadata, engagement_id, name, head)
        rows = await store.run_db(chunk_rows, engagement_id)
        volume, moving_to = placed.get(engagement_id, (None, None))
        problems += await store.run_file(check_packs, engagement_id, name, rows, volume or DEFAULT_VOLUME)
        if moving_to is not None:
            problems.append(FsckProblem(
                name, "unfinished_move",
                f"a move to volume {moving_to!r} was interrupted: run `smartsync-admin engagement move "
                f"{name} --volume {moving_to}` again, or `--volume {volume or DEFAULT_VOLUME}` to cancel it",
            ))
    return problems
