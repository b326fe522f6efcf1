"""The client's side of the conflict review queue (docs/client.md, "Conflict review").

``upload_merge`` sends a reviewer's merged file (already cut into chunks) the way a push sends content (only the chunks
the server lacks) and returns its chunk list, which ``ServerAPI.resolve_conflict`` then names:
the server commits it in the resolution's own transaction. ``describe`` is the one-line form
the ``smartsync conflicts`` command prints.
"""

from __future__ import annotations

from collections.abc import Sequence

from smartsyncd.client.http import ServerAPI
from smartsyncd.client.wire import ConflictInfo, UploadItem
from smartsyncd.core.model import ChunkRef


async def upload_merge(
    api: ServerAPI, eng: str, pieces: Sequence[tuple[ChunkRef, bytes | memoryview]]
) -> Sequence[ChunkRef]:
    """Upload the chunks the engagement lacks of a file cut into ``pieces``
    (``core.chunking.chunk_buffer``, off the reactor); return its chunk list."""
    refs = tuple(ref for ref, _ in pieces)
    missing = set(await api.missing_chunks(eng, dict.fromkeys(r.hash for r in refs)))
    items: list[UploadItem] = []
    for ref, view in pieces:
        if ref.hash in missing:
            missing.discard(ref.hash)  # a chunk repeated in the file travels once
            items.append((ref.hash, bytes(view)))
    if items:
        await api.upload_chunks(eng, items)
    return refs


def describe(item: ConflictInfo) -> str:
    """``#3 WP/cash.xlsx: alice (v2) vs bob (copy WP/cash (conflict bob ...).xlsx), 2026-..``"""
    line = (f"#{item.id} {item.path}: {item.theirs.user or '?'} (seq {item.theirs.seq}) vs "
            f"{item.ours.user} (kept as {item.copy_path}{'' if item.copy_live else ', since deleted'})"
            f", {item.created_at}")
    if item.state == "resolved":
        line += f"; resolved by {item.resolved_by}: {item.resolution} (seq {item.resolved_seq})"
    return line
