"""The server as the sync engine sees it: the part of ``ServerAPI`` (client/http.py) the
engine's parts call, in typed values only (client/wire.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from smartsyncd.client.http import HistoryKeeper
from smartsyncd.client.serverrules import RulesAnswer
from smartsyncd.client.wire import (
    ChangePage,
    ChunkWanted,
    CommitAnswer,
    CommitChange,
    CopyContact,
    HistoryMark,
    JSONObject,
    SessionInfo,
    Snapshot,
    UploadItem,
)
from smartsyncd.core.model import Manifest


class Server(Protocol):
    """The part of ``smartsyncd.client.http.ServerAPI`` the engine uses."""

    base_url: str
    copy_id: str | None  # the copy this connection speaks for (``Smartsync-Copy``)
    chunks_present: int  # chunks uploads sent that the server had already
    keeper: HistoryKeeper | None
    snapshot_history: HistoryMark | None
    snapshot_manifests: dict[str, Manifest]  # chunk lists the last snapshot carried
    stream_chunks: bool  # it takes uploads as one zstd stream (client/chunkpacking.py)

    async def session(self) -> SessionInfo: ...

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Snapshot: ...

    async def first_chunks(
        self, eng: str, small: int, budget: int, files: int
    ) -> dict[str, bytes]: ...

    async def changes(
        self, eng: str, since: int, limit: int = 5000, wait: float = 0
    ) -> ChangePage: ...

    async def manifest(
        self, eng: str, content: str, base: Manifest | None = None
    ) -> Manifest: ...

    async def manifests(
        self, eng: str, wanted: Sequence[tuple[str, Manifest | None]]
    ) -> dict[str, Manifest]: ...

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]: ...

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int: ...

    async def fetch_chunks(
        self, eng: str, hashes: Iterable[ChunkWanted], stream: bool = False
    ) -> dict[str, bytes]: ...

    async def commit(
        self, eng: str, batch: str, changes: Sequence[CommitChange],
        report: Mapping[str, object] | None = None, chunks: str | None = None,
    ) -> CommitAnswer: ...

    async def register_copy(
        self, eng: str, copy_id: str, host: str, key_hash: str | None = None
    ) -> JSONObject: ...

    async def report_copy(
        self, eng: str, copy_id: str, host: str, unsynced: int, since: datetime | None,
        key_hash: str | None = None,
    ) -> CopyContact: ...

    async def report_wipe(
        self, eng: str, copy_id: str, key: str, host: str, files: int
    ) -> JSONObject: ...

    async def ignore_rules(self, eng: str, etag: str | None) -> RulesAnswer: ...
