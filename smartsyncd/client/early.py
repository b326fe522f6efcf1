"""Chunks of new files uploaded, and committed, while the scan goes on (issue 7: the phases
of a first sync of thousands of small files overlap instead of running one after another;
issue 15: new large files too, read once as they upload, so the link stays busy from the
first window to the last). ``EarlyUpload`` is fed by ``client/scan.py``; what it does not
finish, the push (``client/push.py``) sends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from twisted.internet.defer import Deferred

from smartsyncd.client.copycontext import EARLY_COMMIT_FILES, log
from smartsyncd.client.errors import QuotaExceeded, StorageFull
from smartsyncd.client.scanner import ScannedFile
from smartsyncd.client.state import FileRecord
from smartsyncd.client.wire import UploadItem
from smartsyncd.runtime.malloctune import fix_mmap_threshold

# Early uploads go in requests of at most this many raw bytes, two on the wire at once: the
# server verifies and stores one while the next arrives and the client reads the one after.
# Two, not more: requests in flight share the link, so with two the first of them ends
# (and its files can be committed) while the second is still on the wire; and each costs
# its own connection (issue 15).
UPLOAD_WINDOW_BYTES = 4 * 1024 * 1024
UPLOADS_IN_FLIGHT = 2
# After the first window of a new large file's chunks, windows of this many bytes: each
# request costs the server an fsync of its pack and a transaction (the push's window,
# client/push.py). The first stays smaller, so the small files sent before it are confirmed
# (and committed) while the rest is still on the wire.
STREAM_WINDOW_BYTES = 8 * 1024 * 1024
# ... and this many of them on the wire: the server answers a window only once its pack is
# fsynced and indexed (15-45 ms on loopback), so with two the link idles while both wait;
# on a slow link they share it as two would (issue 15, s13).
STREAM_IN_FLIGHT = 4
# once a window of at least this many chunks came back all-missing from /missing, the next
# windows upload without asking (a first sync of new files: the server has none of them)
BLIND_AFTER_CHUNKS = 64
# New files of at most this many bytes in all, none sent yet when the scan ends, are left to
# the push: they go with the commit (client/inline.py), or in one upload without asking
# /missing first (client/push.py) instead of this one's two requests (issue 15).
LEAVE_TO_PUSH_BYTES = 32 * 1024
# Once the scan is over, files whose chunks are confirmed are committed while later windows
# are still on the wire (the commit's turn and the server's transaction hide behind them),
# when at least this many (or ``commit_files``, if fewer) are ready; the push commits the rest.
TAIL_COMMIT_FILES = 64


class NewFile:
    """A file whose chunks the early upload sends: ``left`` distinct chunks not confirmed yet;
    ``open`` while a new large file is still being read (its entry comes at the end)."""

    __slots__ = ("entry", "left", "open", "streamed")

    def __init__(self, entry: ScannedFile | None = None) -> None:
        self.entry = entry
        self.left = 0
        self.streamed = self.open = entry is None


class Confirmed(set[str]):
    """Chunk hashes the server confirmed during this sync (of small files: one a file), and
    ``files``: the new large files all of whose chunks it confirmed, path -> content id (their
    chunks are not kept one by one: a 20 GB file has 600,000)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, str] = {}

    def clear(self) -> None:
        super().clear()
        self.files.clear()


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
        commit_files: int = EARLY_COMMIT_FILES, blind: bool = False,
        stream_window: int = STREAM_WINDOW_BYTES, stream_in_flight: int | None = None,
    ) -> None:
        """``commit``: commits new files whose chunks are confirmed, in batches of
        ``commit_files`` while the scan goes on; returns False to stop early commits.
        ``blind``: upload the first windows without asking (nothing of the engagement was
        ever synced here: a first upload), until an upload finds chunks present.
        ``stream_window``: the window once a new large file's chunks have begun to go."""
        self.commit = commit
        self.commit_files = commit_files
        self._waiting: dict[str, list[NewFile]] = {}  # chunk hash -> files waiting for it
        self._ready: list[ScannedFile] = []
        self._committing: Deferred[None] | None = None
        self._commit_error: BaseException | None = None
        self._closed = False
        self.api = api
        self.engagement = engagement
        self.base = base
        self.known = {r.content for r in base.values()}
        # a new large file whose first chunk starts a synced file is likely a copy or a
        # rename: the push sends it (its id alone, or what /missing says is lacking)
        self.known_first = {r.chunks[0].hash for r in base.values() if r.chunks}
        self.window = window
        self.stream_window = stream_window
        self.stream_in_flight = STREAM_IN_FLIGHT if stream_in_flight is None else stream_in_flight
        self._streaming = False
        self.in_flight = in_flight
        self.present = Confirmed()
        self.bytes_sent = 0
        self.failed = False
        # upload windows without asking /missing first (see ``_send``)
        self.blind = blind
        self.windows_unasked = 0
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._running: list[Deferred[None]] = []
        self._room: list[Deferred[None]] = []
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
            new = NewFile(entry)
            self._wait(new, entry.chunks[0].hash, data)
            if not new.left:
                self._confirmed(new)
        self._pump()

    def _wait(self, new: NewFile, digest: str, data: bytes) -> None:
        if digest in self.present:
            return
        waiters = self._waiting.setdefault(digest, [])
        if new in waiters:
            return  # a chunk repeated in one file
        waiters.append(new)
        new.left += 1
        if len(waiters) == 1:  # else already pending or on the wire
            self._pending[digest] = data
            self._pending_bytes += len(data)

    def wants(self, path: str, first: str) -> bool:
        """Whether a new large file whose first chunk is ``first`` should go now."""
        return not self.failed and path not in self.base and first not in self.known_first

    def begin_file(self) -> NewFile:
        """A new large file about to be read in pieces (``offer_chunks``, then
        ``end_file`` or ``drop_file``)."""
        self._streaming = True
        fix_mmap_threshold()  # 8 MiB windows freed to the system, not kept as heap holes
        return NewFile()

    def offer_chunks(self, new: NewFile, chunks: Iterable[tuple[str, bytes]]) -> None:
        """The next chunks of a new large file, as read and hashed."""
        if self.failed:
            return
        for digest, data in chunks:
            self._wait(new, digest, data)
        self._pump()

    def end_file(self, new: NewFile, entry: ScannedFile) -> None:
        """The file was read whole and unchanged: it is committed once its chunks are."""
        new.entry, new.open = entry, False
        if not new.left:
            self._confirmed(new)
            self._maybe_commit()

    def _confirmed(self, new: NewFile) -> None:
        entry = new.entry
        if entry is None or self.failed:
            return
        if new.streamed:
            self.present.files[entry.path] = entry.content
        if entry.content not in self.known:
            self._ready.append(entry)

    def drop_file(self, new: NewFile) -> None:
        """The file changed while read (or could not be): never committed from here (its
        chunks still travel: unreferenced bytes cost nothing but their transfer)."""
        new.open = True
        new.entry = None

    async def room(self) -> None:
        """Wait until another window's bytes may be read (the window being filled and those
        on the wire are all that is held)."""
        while not self.failed and not self._closed and self._pending_bytes >= self.window:
            waiting: Deferred[None] = Deferred()
            self._room.append(waiting)
            await waiting

    def room_bytes(self) -> int:
        """How much to read next: what tops the window up (a read ends after a whole chunk,
        so the window in hand stays within one chunk of ``window``)."""
        return max(self.window - self._pending_bytes, 1)

    def _wake(self) -> None:
        if self.failed or self._closed or self._pending_bytes < self.window:
            waiting, self._room = self._room, []
            for d in waiting:
                d.callback(None)

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
            if self._streaming:  # a large file's windows: fewer, larger requests
                self.window = max(self.window, self.stream_window)
                self.in_flight = max(self.in_flight, self.stream_in_flight)
            sending: Deferred[None] = Deferred.fromCoroutine(self._send(batch))
            self._running.append(sending)
            sending.addBoth(self._done, sending)

    def _done(self, _result: object, sending: Deferred[None]) -> None:
        self._running.remove(sending)
        self._pump()
        self._wake()
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if self.commit is None or self._committing is not None or self._closed:
            return
        enough = len(self._ready) >= self.commit_files or (
            # the scan is over and windows are still on the wire: commit what is ready now
            self._final and bool(self._running)
            and len(self._ready) >= min(self.commit_files, TAIL_COMMIT_FILES)
        )
        if not enough:
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
            digests = list(batch)
            if missing:
                # taken out as they are encoded: the request holds its body, not both
                self.bytes_sent += await self.api.upload_chunks(
                    self.engagement, ((h, batch.pop(h)) for h in missing)
                )
            if blind and self.api.chunks_present != present_before:
                self.blind = False  # the server had some: ask again from the next window
            for digest in digests:
                waiters = self._waiting.pop(digest, ())
                if any(not new.streamed for new in waiters):
                    self.present.add(digest)
                for new in waiters:
                    new.left -= 1
                    if not new.left and not new.open:
                        self._confirmed(new)
        except Exception as e:  # noqa: BLE001 - best effort: the push sends what is missing
            if isinstance(e, (StorageFull, QuotaExceeded)) and self._commit_error is None:
                self._commit_error = e  # the push would only be refused again: the sync stops
            if not self.failed:
                log.info("early upload stopped ({why}); the push sends the rest", why=str(e))
            self.failed = True
            self._pending.clear()
            self._pending_bytes = 0

    async def finish(self) -> None:
        """Send what is left and wait for every request and a running early commit (files
        not committed yet are left to the push). Raises what stopped an early commit
        other than the server's refusal or the network, and an upload refused for want of
        room (full storage, a quota), which the push's own upload would only meet again."""
        self._final = True
        if not self.present and not self._running and self._pending_bytes <= LEAVE_TO_PUSH_BYTES:
            self._pending.clear()  # a few small new files: the push sends them
            self._pending_bytes = 0
        self._pump()
        self._maybe_commit()
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
        self._wake()
        for sending in list(self._running):
            sending.cancel()
        if self._committing is not None:
            self._committing.cancel()
