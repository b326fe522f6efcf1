"""Chunks of new small files uploaded, and committed, while the scan goes on (issue 7: the
phases of a first sync of thousands of small files overlap instead of running one after
another). ``EarlyUpload`` is fed by ``client/scan.py``; what it does not finish, the push
(``client/push.py``) sends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from twisted.internet.defer import Deferred

from smartsyncd.client.copycontext import EARLY_COMMIT_FILES, log
from smartsyncd.client.scanner import ScannedFile
from smartsyncd.client.state import FileRecord
from smartsyncd.client.wire import UploadItem

# Early uploads go in requests of at most this many raw bytes, several on the wire at once: the
# server verifies and stores one while the next arrives and the client reads the one after.
UPLOAD_WINDOW_BYTES = 4 * 1024 * 1024
UPLOADS_IN_FLIGHT = 3
# once a window of at least this many chunks came back all-missing from /missing, the next
# windows upload without asking (a first sync of new files: the server has none of them)
BLIND_AFTER_CHUNKS = 64
# New files of at most this many bytes in all, none sent yet when the scan ends, are left to
# the push: they go with the commit (client/inline.py), or in one upload without asking
# /missing first (client/push.py) instead of this one's two requests (issue 15).
LEAVE_TO_PUSH_BYTES = 32 * 1024


class ChunkServer(Protocol):
    """The calls an early upload makes (``ServerAPI``'s)."""

    chunks_present: int

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]: ...

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int: ...


class EarlyUpload:
    """Chunks of new small files uploaded while the scan goes on (issue 7: the phases of a
    first sync of thousands of small files overlap instead of running one after another).

    Only files at paths without a synced base whose content is not known from the base (a
    rename or copy sends only its id) are offered; per window the server is asked which chunks
    it lacks, as the push asks, and only those travel. ``present`` collects the hashes the
    server confirmed or stored, so the push asks only about the rest. Best effort: a failure
    stops early uploading and the push sends whatever is missing as before.

    With ``commit``, files whose chunks the server confirmed are committed in batches of
    ``commit_files`` while the scan goes on (``scan.commit_early``): one atomic batch
    each, naming only confirmed chunks (the server checks again). A refusal stops early
    commits and leaves the files to the push, which handles locks, sign-off and the rest.
    """

    def __init__(
        self, api: ChunkServer, engagement: str, base: Mapping[str, FileRecord],
        window: int = UPLOAD_WINDOW_BYTES, in_flight: int = UPLOADS_IN_FLIGHT,
        commit: Callable[[list[ScannedFile]], Awaitable[bool]] | None = None,
        commit_files: int = EARLY_COMMIT_FILES,
    ) -> None:
        """``commit``: commits new files whose chunks are confirmed, in batches of
        ``commit_files`` while the scan goes on; returns False to stop early commits."""
        self.commit = commit
        self.commit_files = commit_files
        self._waiting: dict[str, list[ScannedFile]] = {}  # chunk hash -> files of it
        self._ready: list[ScannedFile] = []
        self._committing: Deferred[None] | None = None
        self._commit_error: BaseException | None = None
        self._closed = False
        self.api = api
        self.engagement = engagement
        self.base = base
        self.known = {r.content for r in base.values()}
        self.window = window
        self.in_flight = in_flight
        self.present: set[str] = set()
        self.bytes_sent = 0
        self.failed = False
        # upload windows without asking /missing first (see ``_send``)
        self.blind = False
        self.windows_unasked = 0
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._running: list[Deferred[None]] = []
        self._final = False

    def offer(self, read: Iterable[tuple[ScannedFile, bytes]]) -> None:
        """Small files the scan just read (with their bytes, as hashed)."""
        if self.failed:
            return
        for entry, data in read:
            if entry.path in self.base or entry.content in self.known:
                continue
            if entry.chunks is None or len(entry.chunks) != 1 or entry.chunks[0].size != len(data):
                continue
            digest = entry.chunks[0].hash
            if digest in self.present:
                self._ready.append(entry)
                continue
            self._waiting.setdefault(digest, []).append(entry)
            if digest not in self._pending and len(self._waiting[digest]) == 1:
                self._pending[digest] = data
                self._pending_bytes += len(data)
        self._pump()

    def _pump(self) -> None:
        while (
            not self.failed and self._pending and len(self._running) < self.in_flight
            and (self._final or self._pending_bytes >= self.window)
        ):
            batch: dict[str, bytes] = {}
            size = 0
            for digest in list(self._pending):
                if batch and size + len(self._pending[digest]) > self.window:
                    break
                batch[digest] = self._pending.pop(digest)
                size += len(batch[digest])
            self._pending_bytes -= size
            sending: Deferred[None] = Deferred.fromCoroutine(self._send(batch))
            self._running.append(sending)
            sending.addBoth(self._done, sending)

    def _done(self, _result: object, sending: Deferred[None]) -> None:
        self._running.remove(sending)
        self._pump()
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if (
            self.commit is None or self._committing is not None or self._closed
            or len(self._ready) < self.commit_files
        ):
            return
        batch, self._ready = self._ready[: self.commit_files], self._ready[self.commit_files:]
        committing: Deferred[None] = Deferred.fromCoroutine(self._commit(batch))
        if not committing.called:
            self._committing = committing

    async def _commit(self, batch: list[ScannedFile]) -> None:
        assert self.commit is not None
        try:
            if not await self.commit(batch):
                self.commit = None  # refused or disturbed: the push decides the rest
        except BaseException as e:  # e.g. the folder's marker vanished: the sync stops
            self.commit = None
            self._commit_error = e
        finally:
            self._committing = None
        self._maybe_commit()

    async def _send(self, batch: dict[str, bytes]) -> None:
        try:
            # Once a window came back all-missing, the chunks of the next windows (files new
            # to this copy) go up without asking first; if an upload finds some of them on
            # the server after all (its "present" count rises), the next windows ask again.
            # A chunk sent although the server had it costs its bytes once, nothing else.
            present_before = self.api.chunks_present
            blind = self.blind
            if blind:
                missing = list(batch)
                self.windows_unasked += 1
            else:
                missing = await self.api.missing_chunks(self.engagement, list(batch))
                if len(missing) == len(batch) and len(batch) >= BLIND_AFTER_CHUNKS:
                    self.blind = True
            if missing:
                self.bytes_sent += await self.api.upload_chunks(
                    self.engagement, [(h, batch[h]) for h in missing]
                )
            if blind and self.api.chunks_present != present_before:
                self.blind = False  # the server had some: ask again from the next window
            self.present.update(batch)
            for digest in batch:
                self._ready.extend(self._waiting.pop(digest, ()))
        except Exception as e:  # noqa: BLE001 - best effort: the push sends what is missing
            if not self.failed:
                log.info("early upload stopped ({why}); the push sends the rest", why=str(e))
            self.failed = True
            self._pending.clear()

    async def finish(self) -> None:
        """Send what is left and wait for every request and a running early commit (files
        not committed yet are left to the push). Raises what stopped an early commit
        other than the server's refusal or the network."""
        self._final = True
        if not self.present and not self._running and self._pending_bytes <= LEAVE_TO_PUSH_BYTES:
            self._pending.clear()  # a few small new files: the push sends them
            self._pending_bytes = 0
        self._pump()
        # batches keep committing while the last uploads run; then what is left waits
        while self._running or self._committing is not None:
            await (self._running[0] if self._running else self._committing)  # type: ignore[misc]
        self._closed = True
        if self._commit_error is not None:
            raise self._commit_error

    def abort(self) -> None:
        self.failed = True
        self._closed = True
        self._pending.clear()
        for sending in list(self._running):
            sending.cancel()
        if self._committing is not None:
            self._committing.cancel()
