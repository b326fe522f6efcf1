"""A streamed chunk upload into one pack: ``PackUpload``, the store's ``ChunkUpload``.

Chunks are appended to a ``PackWriter`` on the file pool as they arrive; ``finish`` makes the
pack durable, then indexes it in one ``chunks.record_pack`` transaction on the DB pool, so a
crash between leaves an orphan pack (gc removes it), never a row without its bytes. The pack is
written on the engagement's volume as read when the upload starts; if a move switched it
meanwhile, ``volumes.record_written_pack`` copies the pack over before recording it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from smartsyncd.core.model import VerifiedChunk
from smartsyncd.storage import chunks as chunk_index
from smartsyncd.storage import quotas, volumes
from smartsyncd.storage.packs import PackStore, PackWriter
from smartsyncd.storage.runner import StoreRunner


class PackUpload:
    """``ChunkUpload`` for ``SqlServerStore``: a ``PackWriter`` on the file pool, indexed by one
    ``record_pack`` transaction at ``finish`` (after the pack is durable)."""

    def __init__(
        self, store: StoreRunner, engagement_id: int, now: Callable[[], datetime], user: str | None = None
    ) -> None:
        self._store = store
        self._user = user
        self._written = 0  # payload bytes appended so far (quota: before each write)
        self._now = now
        self._engagement_id = engagement_id
        self._writer: PackWriter | None = None
        self._seen: set[str] = set()
        self._done = False

    def _append(self, packs: PackStore, chunks: Sequence[VerifiedChunk], volume: str | None) -> None:
        if self._writer is None:
            packs.place(self._engagement_id, volume)
            self._writer = packs.open_writer(self._engagement_id, volume)
        self._writer.append((c.hash, c.codec, c.raw_size, c.payload) for c in chunks)

    async def append(self, chunks: Sequence[VerifiedChunk]) -> None:
        if self._done:
            raise ValueError("upload already finished")
        fresh = []
        for c in chunks:
            if c.hash not in self._seen:
                self._seen.add(c.hash)
                fresh.append(c)
        if fresh:
            incoming = sum(len(c.payload) for c in fresh)
            # a stored-bytes quota refuses before these bytes reach the disk (storage/quotas)
            await self._store.run_read(quotas.check_stored, self._engagement_id, self._user, self._written + incoming)
            volume = None
            if self._writer is None:  # where the engagement lives now (a move may have switched it)
                volume = await self._store.run_read(volumes.engagement_volume, self._engagement_id)
            await self._store.run_file(self._append, fresh, volume)
            self._written += incoming

    async def finish(self, total: int) -> tuple[int, int]:
        if self._done:
            raise ValueError("upload already finished")
        self._done = True
        writer, self._writer = self._writer, None
        if writer is None:
            return 0, total
        try:
            pack = await self._store.run_file(lambda _packs: writer.commit())
        except BaseException:
            await self._store.run_file(lambda _packs: writer.abort())
            raise
        stored = await volumes.record_written_pack(
            self._store, chunk_index.record_pack, self._engagement_id, pack, self._now(), self._user
        )
        return stored, total - stored

    async def abort(self) -> None:
        self._done = True
        writer, self._writer = self._writer, None
        if writer is not None:
            await self._store.run_file(lambda _packs: writer.abort())
