"""Storage volumes: which one holds each engagement, and moving an engagement between them.

``engagements.volume`` names the volume (NULL: ``default``, the ``[storage] path`` folder), so
data from before volumes existed stays where it is. The pack layout is in ``storage/packs.py``.

An upload writes its pack on the volume it last saw, then ``record_pack`` checks the volume
again inside its transaction (``check_volume``, under a key-share lock of the engagement row on
PostgreSQL, which the move's switch excludes with its row lock). If the engagement moved
meanwhile, the transaction raises ``VolumeMoved`` and ``record_written_pack`` copies the pack
to the new volume and records it there: a row never names a pack on the wrong volume.

``move_engagement`` (``smartsync-admin engagement move``), online and crash-safe:

1. mark the move (``moving_to``), copy every pack to the target volume (temp file, fsync,
   rename, fsync folder; a pack already there under its name is complete and is kept);
2. verify: every chunk row's bytes on the target decode and hash to the chunk's name (fsck's
   check);
3. switch in one write transaction holding the engagement row (the lock commits take; on SQLite
   the write lock itself): copy and verify the packs recorded since step 1, then set
   ``volume`` and clear ``moving_to``;
4. remove the engagement's folder on the old volume.

A crash before 3 leaves the database naming the old, complete volume (``moving_to`` still set:
fsck reports ``unfinished_move``; running the move again resumes it, moving to the current
volume cancels it and removes the partial copy). A crash after 3 leaves a complete copy on the
old volume that nothing names: ``smartsync-admin gc`` removes such leftovers
(``remove_leftovers``). Another daemon still reading the old path finds the pack on the new
volume (``PackStore.read_ranges`` looks there on a miss), so the old files can go at once.

Functions taking ``db`` run on the DB thread, those taking ``packs`` on the file pool.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.logger import Logger

from smartsyncd.core.errors import BadRequest, Unavailable
from smartsyncd.storage.db import MetadataDB, lock_engagement
from smartsyncd.storage.durable import AtomicFile, ensure_dir, fsync_dir, is_temp_name
from smartsyncd.storage.fsck import ChunkRow, check_packs, chunk_rows
from smartsyncd.storage.packs import DEFAULT_VOLUME, PackStore, WrittenPack
from smartsyncd.storage.runner import StoreRunner

_COPY_BLOCK = 1 << 20
log = Logger(namespace="smartsyncd.storage")


class VolumeMoved(Exception):
    """Raised inside ``record_pack``'s transaction: the engagement now lives on ``volume``."""

    def __init__(self, volume: str) -> None:
        super().__init__(f"the engagement moved to volume {volume!r}")
        self.volume = volume


@dataclass(frozen=True)
class MoveReport:
    engagement: str
    source: str
    target: str
    packs: int  # packs on the target after the switch
    bytes_copied: int
    caught_up: int  # packs recorded during the copy, copied under the lock


def choose_volume(free: Mapping[str, int], configured: Sequence[str]) -> str:
    """The configured volume with the most free bytes (ties: the first configured); the default
    when no free space could be read."""
    readable = [v for v in configured if v in free]
    if not readable:
        return DEFAULT_VOLUME
    return max(readable, key=lambda v: (free[v], -configured.index(v)))


# -- SQL (DB thread)


def engagement_volume(db: MetadataDB, engagement_id: int) -> str:
    row = db.one("SELECT volume FROM engagements WHERE id = ?", (engagement_id,))
    return str(row[0]) if row is not None and row[0] else DEFAULT_VOLUME


def placements(db: MetadataDB) -> list[tuple[int, str, str, str | None]]:
    """(id, name, volume, moving_to) of every engagement."""
    rows = db.all("SELECT id, name, volume, moving_to FROM engagements ORDER BY id")
    return [(int(r[0]), str(r[1]), str(r[2] or DEFAULT_VOLUME), r[3]) for r in rows]


def volumes_in_use(db: MetadataDB, engagement_id: int) -> list[str]:
    """The engagement's volume, then a running move's target (if any)."""
    row = db.one("SELECT volume, moving_to FROM engagements WHERE id = ?", (engagement_id,))
    if row is None:
        return [DEFAULT_VOLUME]
    return [str(row[0] or DEFAULT_VOLUME), *([str(row[1])] if row[1] else [])]


def check_volume(db: MetadataDB, engagement_id: int, written_on: str) -> None:
    """Inside a write transaction that records a pack written on ``written_on``: raise
    ``VolumeMoved`` if the engagement lives elsewhere now. The key-share lock waits for a
    move's switch holding the row (PostgreSQL; SQLite's write lock serializes already)."""
    share = " FOR KEY SHARE" if db.dialect.name == "postgresql" else ""
    row = db.one(f"SELECT volume FROM engagements WHERE id = ?{share}", (engagement_id,))
    current = str(row[0]) if row is not None and row[0] else DEFAULT_VOLUME
    if current != written_on:
        raise VolumeMoved(current)


def set_volume(db: MetadataDB, name: str, volume: str) -> None:
    """Place a new engagement (no packs yet) on ``volume``."""

    def tx() -> None:
        engagement_id = db._engagement_id(name)
        lock_engagement(db, engagement_id)
        db.execute(
            "UPDATE engagements SET volume = ? WHERE id = ?",
            (None if volume == DEFAULT_VOLUME else volume, engagement_id),
        )

    db.write(tx)


def begin_move(db: MetadataDB, name: str, target: str) -> tuple[int, str]:
    """Step 1's mark: ``moving_to = target``; returns (engagement id, current volume). A move
    to the current volume clears the mark (cancels an interrupted move)."""

    def tx() -> tuple[int, str]:
        engagement_id = db._engagement_id(name)
        lock_engagement(db, engagement_id)
        row = db.one("SELECT volume, moving_to FROM engagements WHERE id = ?", (engagement_id,))
        current = str(row[0] or DEFAULT_VOLUME)
        if row[1] is not None and target not in (row[1], current):
            raise BadRequest(
                f"engagement {name!r} is being moved to volume {row[1]!r}: finish that move, or "
                f"cancel it by moving the engagement to {current!r}",
                engagement=name,
            )
        db.execute(
            "UPDATE engagements SET moving_to = ? WHERE id = ?",
            (None if target == current else target, engagement_id),
        )
        return engagement_id, current

    return db.write(tx)


def pack_names(db: MetadataDB, engagement_id: int) -> list[str]:
    return [str(r[0]) for r in db.all("SELECT id FROM packs WHERE engagement_id = ? ORDER BY id", (engagement_id,))]


def switch_volume(
    db: MetadataDB, packs: PackStore, engagement_id: int, name: str, source: str, target: str,
    copied: set[str],
) -> tuple[int, int]:
    """Step 3: under the engagement's lock, copy and verify the packs not in ``copied``, then
    switch. Returns (packs caught up, their bytes). File I/O on the DB thread, on purpose: the
    lock must cover it, and it is only what arrived during the copy."""

    def tx() -> tuple[int, int]:
        lock_engagement(db, engagement_id)
        late = [p for p in pack_names(db, engagement_id) if p not in copied]
        copied_bytes = copy_packs(packs, engagement_id, late, source, target)
        if late:
            wanted = set(late)
            rows = [r for r in chunk_rows(db, engagement_id) if r[1] in wanted]
            problems = check_packs(packs, engagement_id, name, rows, target)
            if problems:
                raise Unavailable(f"the copy on volume {target!r} does not verify: {problems[0].detail}")
        db.execute(
            "UPDATE engagements SET volume = ?, moving_to = NULL WHERE id = ?",
            (None if target == DEFAULT_VOLUME else target, engagement_id),
        )
        return len(late), copied_bytes

    return db.write(tx)


# -- files (file pool)


def copy_pack(packs: PackStore, engagement_id: int, name: str, source: str, target: str) -> int:
    """Durably copy one pack file; returns the bytes copied (0 when the target has it, written
    by an earlier run or an upload: pack files appear under their name only when complete)."""
    final = packs.path_for(engagement_id, name, target)
    if os.path.isfile(final):
        return 0
    folder = os.path.dirname(final)
    ensure_dir(folder)
    with open(packs.path_for(engagement_id, name, source), "rb") as src, AtomicFile(folder) as out:
        while block := src.read(_COPY_BLOCK):
            out.write(block)
        out.commit(final)
        return out.size


def copy_packs(packs: PackStore, engagement_id: int, names: Sequence[str], source: str, target: str) -> int:
    return sum(copy_pack(packs, engagement_id, n, source, target) for n in names)


def remove_engagement_files(packs: PackStore, engagement_id: int, volume: str) -> None:
    """Remove the engagement's folder on ``volume`` (after the switch, or a cancelled move)."""
    folder = packs.engagement_dir(engagement_id, volume)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
        fsync_dir(os.path.dirname(folder))


def remove_leftovers(packs: PackStore, engagement_id: int, keep: Sequence[str], cutoff: float) -> int:
    """gc: remove pack and temp files older than ``cutoff`` in the engagement's folders on the
    volumes not in ``keep`` (its own and a move's target); returns how many went."""
    removed = 0
    for volume in packs.volumes:
        if volume in keep:
            continue
        folder = packs.engagement_dir(engagement_id, volume)
        for parent, _dirs, files in os.walk(folder):
            for file_name in files:
                full = os.path.join(parent, file_name)
                if (file_name.endswith(".pack") or is_temp_name(file_name)) and os.stat(full).st_mtime < cutoff:
                    os.unlink(full)
                    removed += 1
    return removed


# -- steps with the store


async def record_written_pack(
    store: StoreRunner, record: Callable[..., int], engagement_id: int, pack: WrittenPack, *args: object
) -> int:
    """Run ``record(db, engagement_id, pack.name, ..., volume)`` (``chunks.record_pack``); if
    the engagement moved after the pack was written, copy the pack to its new volume and record
    it there."""
    volume = pack.volume
    entries = [(e.hash, e.codec, e.raw_size, e.offset, e.stored_size) for e in pack.entries]
    for _ in range(5):
        try:
            stored: int = await store.run_db(record, engagement_id, pack.name, pack.size, entries, *args, volume)
            return stored
        except VolumeMoved as moved:
            await store.run_file(copy_pack, engagement_id, pack.name, volume, moved.volume)
            await store.run_file(lambda packs, v=moved.volume: packs.place(engagement_id, v))
            volume = moved.volume
    raise Unavailable("the engagement keeps moving between volumes; upload again")


async def load_placements(store: StoreRunner, packs: PackStore) -> None:
    """Tell ``packs`` where every engagement lives (at open); warn about unknown volumes."""
    for engagement_id, name, volume, _moving in await store.run_db(placements):
        packs.place(engagement_id, volume)
        if volume not in packs.volumes:
            log.error(
                "engagement {engagement} is on volume {volume}, which [storage] volumes does not"
                " list: its files cannot be served", engagement=name, volume=volume,
            )


async def move_engagement(store: StoreRunner, packs: PackStore, name: str, target: str) -> MoveReport:
    """Steps 1 to 4 of the module docstring."""
    if target not in packs.volumes:
        raise BadRequest(f"no volume {target!r} in [storage] volumes (have: {', '.join(packs.volumes)})")
    engagement_id, source = await store.run_db(begin_move, name, target)
    if source == target:
        for other in packs.volumes:
            if other != source:
                await store.run_file(remove_engagement_files, engagement_id, other)
        return MoveReport(name, source, target, len(await store.run_read(pack_names, engagement_id)), 0, 0)
    names = await store.run_read(pack_names, engagement_id)
    copied_bytes = await store.run_file(copy_packs, engagement_id, names, source, target)
    rows: list[ChunkRow] = await store.run_read(chunk_rows, engagement_id)
    wanted = set(names)
    problems = await store.run_file(check_packs, engagement_id, name, [r for r in rows if r[1] in wanted], target)
    if problems:
        raise Unavailable(f"the copy on volume {target!r} does not verify: {problems[0].detail}; nothing was switched")
    late, late_bytes = await store.run_db(switch_volume, packs, engagement_id, name, source, target, set(names))
    await store.run_file(lambda p: p.place(engagement_id, target))
    await store.run_file(remove_engagement_files, engagement_id, source)
    return MoveReport(name, source, target, len(names) + late, copied_bytes + late_bytes, late)
