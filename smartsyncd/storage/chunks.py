"""Chunks and manifests: which chunks an engagement has, pack rows, chunk locations.

``record_pack`` indexes a pack that is already durable (``packs``) in one transaction: a crash
before leaves an orphan pack (gc removes it), never a dangling row. Synchronous functions over a
``MetadataDB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from smartsyncd.core import manifest
from smartsyncd.core.errors import (
    NotFound,
)
from smartsyncd.core.model import (
    Manifest,
)
from smartsyncd.storage.db import (
    MetadataDB,
    chunks_of,
    hash_bytes,
    ts,
)
from smartsyncd.storage.volumes import check_volume

# -- chunks and manifests


def present_chunks(db: MetadataDB, engagement_id: int, hashes: Sequence[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    for part in chunks_of(list(hashes)):
        marks = ", ".join("?" for _ in part)
        rows = db.all(
            f"SELECT hash FROM chunks WHERE engagement_id = ? AND hash IN ({marks})",
            (engagement_id, *(db.dialect.binary(h) for h in part)),
        )
        found.update(bytes(r[0]) for r in rows)
    return found


def stored_sizes(db: MetadataDB, engagement_id: int, hashes: Sequence[bytes]) -> dict[bytes, int]:
    """hash -> raw size of the chunks the engagement has, among ``hashes``."""
    found: dict[bytes, int] = {}
    for part in chunks_of(list(hashes)):
        marks = ", ".join("?" for _ in part)
        rows = db.all(
            f"SELECT hash, raw_size FROM chunks WHERE engagement_id = ? AND hash IN ({marks})",
            (engagement_id, *(db.dialect.binary(h) for h in part)),
        )
        found.update((bytes(r[0]), int(r[1])) for r in rows)
    return found


def missing_chunks(db: MetadataDB, engagement_id: int, hashes: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(hashes))
    raw = [hash_bytes(h, "chunk hash") for h in wanted]

    def tx() -> list[str]:
        db.engagement_head(engagement_id)
        present = present_chunks(db, engagement_id, raw)
        return [h for h, b in zip(wanted, raw, strict=True) if b not in present]

    return db.read(tx)


def record_pack(
    db: MetadataDB,
    engagement_id: int,
    pack_name: str,
    pack_size: int,
    entries: Sequence[tuple[str, int, int, int, int]],
    now: datetime,
    user: str | None = None,
    volume: str | None = None,
) -> int:
    """Insert a written pack and its chunks (hash, codec, raw_size, offset, stored_size).

    Returns how many chunk rows were new (another upload may have won a race for some).
    ``volume``: where the pack was written; ``VolumeMoved`` if the engagement lives elsewhere
    now (``storage/volumes.py``).
    """

    def tx() -> int:
        db.engagement_head(engagement_id)
        if volume is not None:
            check_volume(db, engagement_id, volume)
        db.execute(
            "INSERT INTO packs (engagement_id, id, size, created_at, user_name) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (engagement_id, id) DO NOTHING",
            (engagement_id, pack_name, pack_size, ts(now), user),
        )
        # One executemany, no lookup first: ON CONFLICT keeps a row that is already there
        # (an earlier upload, or a concurrent writer such as another daemon), and the
        # driver's rowcount (summed over executemany by sqlite3 and psycopg 3) counts only
        # the rows inserted here.
        binary = db.dialect.binary
        rows = [
            (engagement_id, binary(bytes.fromhex(h)), pack_name, offset, stored_size, codec, raw_size)
            for h, codec, raw_size, offset, stored_size in {e[0]: e for e in entries}.values()
        ]
        if not rows:
            return 0
        cur = db.conn.cursor()
        try:
            cur.executemany(
                db.dialect.sql(
                    "INSERT INTO chunks (engagement_id, hash, pack_id, pack_offset, stored_size,"
                    " codec, raw_size) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (engagement_id, hash) DO NOTHING"
                ),
                rows,
            )
            stored = cur.rowcount if cur.rowcount is not None and cur.rowcount >= 0 else len(rows)
        finally:
            cur.close()
        return stored

    return db.write(tx)


def chunk_locations(db: MetadataDB, engagement_id: int, hashes: Sequence[str]) -> dict[str, tuple[str, int, int, int, int]]:
    """hash -> (pack, offset, stored_size, codec, raw_size); NotFound lists unknown ones."""
    wanted = list(dict.fromkeys(hashes))
    raw = [hash_bytes(h, "chunk hash") for h in wanted]

    def tx() -> dict[str, tuple[str, int, int, int, int]]:
        db.engagement_head(engagement_id)
        found: dict[str, tuple[str, int, int, int, int]] = {}
        for part in chunks_of(raw):
            marks = ", ".join("?" for _ in part)
            rows = db.all(
                "SELECT hash, pack_id, pack_offset, stored_size, codec, raw_size FROM chunks"
                f" WHERE engagement_id = ? AND hash IN ({marks})",
                (engagement_id, *(db.dialect.binary(h) for h in part)),
            )
            for r in rows:
                found[bytes(r[0]).hex()] = (r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]))
        unknown = [h for h in wanted if h not in found]
        if unknown:
            raise NotFound(f"{len(unknown)} chunk(s) unknown", chunks=unknown)
        return found

    return db.read(tx)


RecordSpan = tuple[str, int, list[tuple[bytes, int, int, int]]]


def record_spans(
    where: dict[str, tuple[str, int, int, int, int]],
    hashes: Sequence[str],
    header: int,
    max_bytes: int,
    max_spans: int,
    piece_bytes: int,
) -> list[RecordSpan] | None:
    """``hashes`` (located by ``chunk_locations``' answer ``where``) as at most ``max_spans``
    runs stored back to back, in this order, each in one pack: (pack, offset of the run's first
    record header, each record's expected header fields). None when they need more runs, or
    take more than ``max_bytes`` with their ``header``-byte headers. A large file's first upload
    stores its chunks so (one pack per upload window), and a download asks for them so. A run
    is also cut before it would pass ``piece_bytes``: buffers under the malloc mmap threshold
    come from the heap, reused without page faults (runtime/malloctune.py)."""
    spans: list[RecordSpan] = []
    pack, next_at, total, piece = "", -1, 0, 0
    for h in hashes:
        p, at, stored, codec, raw_size = where[h]
        if p != pack or at != next_at + header or piece + header + stored > piece_bytes:
            if len(spans) == max_spans:
                return None
            pack = p
            spans.append((p, at - header, []))
            piece = 0
        spans[-1][2].append((bytes.fromhex(h), codec, raw_size, stored))
        next_at = at + stored
        total += header + stored
        piece += header + stored
        if total > max_bytes:
            return None
    return spans or None


def manifest_row(db: MetadataDB, engagement_id: int, content: str) -> Any:
    return db.one(
        "SELECT size, body FROM manifests WHERE engagement_id = ? AND content = ?",
        (engagement_id, db.dialect.binary(bytes.fromhex(content))),
    )


def get_manifest(db: MetadataDB, engagement_id: int, content: str) -> Manifest | None:
    hash_bytes(content, "content id")

    def tx() -> Manifest | None:
        db.engagement_head(engagement_id)
        row = manifest_row(db, engagement_id, content)
        if row is None:
            return None
        return Manifest(content=content, size=int(row[0]), chunks=manifest.decode_binary(bytes(row[1])))

    return db.read(tx)


def get_manifests(db: MetadataDB, engagement_id: int, contents: Sequence[str]) -> dict[str, Manifest]:
    """The manifests of ``contents`` that the engagement has, by content id (one read)."""
    wanted = list(dict.fromkeys(contents))
    raw = [hash_bytes(c, "content id") for c in wanted]

    def tx() -> dict[str, Manifest]:
        db.engagement_head(engagement_id)
        found: dict[str, Manifest] = {}
        for part in chunks_of(raw):
            marks = ", ".join("?" for _ in part)
            rows = db.all(
                "SELECT content, size, body FROM manifests"
                f" WHERE engagement_id = ? AND content IN ({marks})",
                (engagement_id, *(db.dialect.binary(c) for c in part)),
            )
            for r in rows:
                content = bytes(r[0]).hex()
                found[content] = Manifest(
                    content=content, size=int(r[1]), chunks=manifest.decode_binary(bytes(r[2]))
                )
        return found

    return db.read(tx)
