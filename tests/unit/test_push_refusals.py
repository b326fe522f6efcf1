"""The push settles each typed refusal of a commit the way docs/workflow.md says: a locked path
waits locally, a finalized engagement keeps everything local, a case clash becomes a conflict
copy, unknown content is sent again with its whole manifest, anything else is raised. The real
copy state and scanner on a temporary folder; the server is a script of answers; blocking work
runs in the caller and time is a Clock, so no reactor runs."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from smartsyncd.client.copycontext import offsets
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import (
    BadChunk,
    BatchReused,
    Finalized,
    Forbidden,
    Locked,
    MissingChunks,
    PathClash,
    ServerRefused,
    UnknownContent,
)
from smartsyncd.client.inline import InlineUpload
from smartsyncd.client.progress import NullProgress
from smartsyncd.client.push import Push
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.state import ClientState, CopyMeta, FileRecord
from smartsyncd.client.wire import (
    ChangePage,
    ChunkWanted,
    CommitAnswer,
    CommitChange,
    CommitResult,
    CopyContact,
    HistoryMark,
    SessionInfo,
    Snapshot,
    UploadItem,
)
from smartsyncd.core.model import Manifest

T = TypeVar("T")
Reaction = Callable[[Sequence[CommitChange]], CommitAnswer]


async def in_caller(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def done(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (everything here answers at once)."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(outcome.append)
    assert outcome, "the push waited for something"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    result: T = outcome[0]
    return result


class ScriptedServer:
    """Commits answer from ``reactions`` in turn (raise a refusal, or answer); chunk calls
    store what they are sent. Records every commit's changes."""

    base_url = "https://files.example"

    def __init__(self, *reactions: Reaction | ServerRefused) -> None:
        self.copy_id: str | None = None
        self.chunks_present = 0
        self.keeper = None
        self.snapshot_history: HistoryMark | None = None
        self.reactions = list(reactions)
        self.commits: list[list[CommitChange]] = []
        self.stored: set[str] = set()
        self.head = 10
        self.inline: list[object] = []  # each commit's inline chunks (client/inline.py)

    async def missing_chunks(self, eng: str, hashes: Iterable[str]) -> list[str]:
        return [h for h in hashes if h not in self.stored]

    async def upload_chunks(self, eng: str, chunks: Iterable[UploadItem]) -> int:
        items = list(chunks)
        self.stored.update(item[0] for item in items)
        return sum(len(item[1]) for item in items)

    async def commit(
        self, eng: str, batch: str, changes: Sequence[CommitChange], *more: object
    ) -> CommitAnswer:
        self.commits.append(list(changes))
        self.inline.append(more[1] if len(more) > 1 else None)
        reaction = self.reactions.pop(0) if self.reactions else applied
        if isinstance(reaction, ServerRefused):
            raise reaction
        return reaction(changes)

    async def session(self) -> SessionInfo:
        raise AssertionError("not used by the push")

    async def snapshot(self, eng: str) -> Snapshot:
        raise AssertionError("not used by the push")

    async def changes(self, eng: str, since: int, limit: int = 5000, wait: float = 0) -> ChangePage:
        raise AssertionError("not used by the push")

    async def manifest(self, eng: str, content: str, base: Manifest | None = None) -> Manifest:
        raise AssertionError("not used by the push")

    async def manifests(
        self, eng: str, wanted: Sequence[tuple[str, Manifest | None]]
    ) -> dict[str, Manifest]:
        raise AssertionError("not used by the push")

    async def fetch_chunks(
        self, eng: str, hashes: Iterable[ChunkWanted], stream: bool = False
    ) -> dict[str, bytes]:
        raise AssertionError("not used by the push")

    async def register_copy(self, eng: str, copy_id: str, host: str) -> dict[str, Any]:
        raise AssertionError("not used by the push")

    async def report_copy(
        self, eng: str, copy_id: str, host: str, unsynced: int, since: datetime | None
    ) -> CopyContact:
        raise AssertionError("not used by the push")


def applied(changes: Sequence[CommitChange]) -> CommitAnswer:
    return CommitAnswer(
        head=10 + len(changes),
        results=tuple(CommitResult("applied", seq=11 + i) for i in range(len(changes))),
    )


@pytest.fixture
def copy(tmp_path: Path) -> SyncCopy:
    root = tmp_path / "copy"
    root.mkdir()
    state = ClientState.create(root, CopyMeta("https://files.example", "acme", "alice", "c-1"))
    opened = SyncCopy(root, state, clock=Clock(), run_blocking=in_caller)
    state.update((), (), 10)
    return opened


def push(copy: SyncCopy, api: ScriptedServer, blocked: dict[str, str] | None = None) -> SyncReport:
    base = copy.state.all_files()
    scan = copy.scanner.scan(base)
    report = SyncReport()
    done(Push(copy.ctx, api, scan, base, report, NullProgress()).run(blocked))
    return report


def paths(changes: Sequence[CommitChange]) -> list[str]:
    return [c.path for c in changes]


def test_a_locked_path_waits_and_the_rest_is_committed(copy: SyncCopy) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    (copy.directory / "b.txt").write_bytes(b"beta")
    api = ScriptedServer(Locked("locked", "checked out by bob", 409, {"path": "a.txt"}))
    report = push(copy, api)
    assert [sorted(paths(c)) for c in api.commits] == [["a.txt", "b.txt"], ["b.txt"]]
    assert report.locked == ["a.txt"] and report.uploaded == 1 and report.unsynced == 1
    assert report.skipped == [("a.txt", "checked out by bob")]
    assert set(copy.state.all_files()) == {"b.txt"}
    assert (copy.directory / "a.txt").read_bytes() == b"alpha"  # the edit stays
    assert copy.state.pending_batch() is None


def test_finalized_keeps_everything_local(copy: SyncCopy) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    api = ScriptedServer(Finalized("finalized", "signed off by carol", 423))
    report = push(copy, api)
    assert len(api.commits) == 1
    assert report.refused == "signed off by carol" and report.uploaded == 0
    assert copy.state.all_files() == {} and copy.state.pending_batch() is None


def test_a_case_clash_becomes_a_conflict_copy_sent_at_once(copy: SyncCopy) -> None:
    (copy.directory / "Report.txt").write_bytes(b"ours")
    clash = PathClash("path_clash", "name taken", 409, {"path": "Report.txt", "existing": "report.txt"})
    api = ScriptedServer(clash)
    report = push(copy, api)
    assert len(report.conflicts) == 1
    target = report.conflicts[0]
    assert target == "report (conflict alice 1970-01-01 0000).txt"  # named after theirs
    assert paths(api.commits[1]) == [target]
    assert not (copy.directory / "Report.txt").exists()
    assert (copy.directory / target).read_bytes() == b"ours"
    assert set(copy.state.all_files()) == {target} and report.uploaded == 1


def test_unknown_content_is_sent_again_with_its_whole_manifest(copy: SyncCopy) -> None:
    ledger = copy.directory / "ledger.csv"
    ledger.write_bytes(b"1,2,3\n" * 20_000)
    first = push(copy, ScriptedServer())
    assert first.uploaded == 1
    ledger.write_bytes(b"1,2,3\n" * 20_000 + b"4,5,6\n")
    api = ScriptedServer(UnknownContent("unknown_content", "no such base", 409))
    report = push(copy, api)
    sent, again = api.commits[0][0], api.commits[1][0]
    assert sent.delta is not None and sent.manifest is None  # first as a delta on its base
    assert again.delta is None and again.manifest is not None  # then whole
    assert sum(c.size for c, _ in offsets(again.manifest)) == ledger.stat().st_size
    assert report.uploaded == 1 and report.unsynced == 0


def test_a_refusal_the_push_cannot_settle_is_raised(copy: SyncCopy) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    api = ScriptedServer(BatchReused("batch_reused", "that batch key was used for other changes",
                                     409))
    with pytest.raises(BatchReused):
        push(copy, api)
    assert copy.state.all_files() == {} and copy.state.pending_batch() is None


def test_a_readers_change_stays_local_and_is_reported(copy: SyncCopy) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    api = ScriptedServer(Forbidden("forbidden", "role 'reader' may not write", 403))
    report = push(copy, api)  # settled: the sync goes on to pull
    assert report.refused and "reader" in report.refused and report.partial
    assert (copy.directory / "a.txt").read_bytes() == b"alpha"
    assert copy.state.all_files() == {} and copy.state.pending_batch() is None


def test_a_path_held_by_another_user_is_not_sent(copy: SyncCopy) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    (copy.directory / "b.txt").write_bytes(b"beta")
    api = ScriptedServer()
    report = push(copy, api, {"a.txt": "checked out by bob"})
    assert [paths(c) for c in api.commits] == [["b.txt"]]
    assert report.locked == ["a.txt"] and report.unsynced == 1
    assert isinstance(copy.state.all_files()["b.txt"], FileRecord)


@pytest.mark.parametrize("refusal", [
    MissingChunks("missing_chunks", "chunks missing", 409, {}),  # a server that ignored them
    BadChunk("bad_chunk", "chunk does not hash to its name", 400, {}),
    ServerRefused("too_large", "inline chunks over 16384 bytes", 413, {}),
])
def test_chunks_the_commit_could_not_carry_are_uploaded_next(
    copy: SyncCopy, refusal: ServerRefused
) -> None:
    (copy.directory / "a.txt").write_bytes(b"alpha")
    api = ScriptedServer(refusal)
    base = copy.state.all_files()
    report = SyncReport()
    pushing = Push(copy.ctx, api, copy.scanner.scan(base), base, report, NullProgress())
    pushing.inline = InlineUpload(32 * 1024)
    done(pushing.run())
    assert isinstance(api.inline[0], str) and api.inline[1:] == [None]
    assert len(api.stored) == 1 and report.uploaded == 1 and pushing.inline is None
