"""The branch office's pure parts (issue 18): which requests go to central, the replica
watcher's wake-ups and waits on a Clock, the chunk cache's packs, the [branch] config.
The daemons, the standby and the link are tested for real in tests/integration/test_branch.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.service.config import load_config
from smartsyncd.storage.branchcache import ChunkCache
from smartsyncd.storage.packs import PackStore
from smartsyncd.web.branch import FORWARD, LOCAL, STREAM, route_kind
from smartsyncd.web.branchreplay import ReplicaWatcher


@pytest.mark.parametrize(
    ("method", "uri", "kind"),
    [
        (b"GET", b"/v1/engagements/acme/changes?since=3&wait=30", LOCAL),
        (b"GET", b"/healthz", LOCAL),
        (b"POST", b"/v1/engagements/acme/manifests", LOCAL),
        (b"POST", b"/v1/engagements/acme/chunks/fetch", LOCAL),
        (b"POST", b"/v1/login", FORWARD),
        (b"POST", b"/v1/logout", FORWARD),
        (b"POST", b"/v1/engagements/acme/copies", FORWARD),  # answered here when central is down
        (b"POST", b"/v1/engagements/acme/chunks", STREAM),
        (b"POST", b"/v1/engagements/acme/chunks/missing", STREAM),
        (b"POST", b"/v1/engagements/acme/commit", STREAM),
        (b"POST", b"/v1/engagements/acme/locks/release", STREAM),
        (b"POST", b"/v1/engagements/acme/restore", STREAM),
        (b"POST", b"/v1/engagements/acme/copies/x/report", STREAM),
        # a file or folder named like a local route is still a write
        (b"POST", b"/v1/engagements/acme/manifests/x/chunks/fetch", STREAM),
        (b"POST", b"/v1/engagements/acme%2Fx/commit", STREAM),
    ],
)
def test_route_kind(method: bytes, uri: bytes, kind: str) -> None:
    assert route_kind(method, uri) == kind


class FakeReplica:
    def __init__(self) -> None:
        self.lsn = "0/1"
        self.heads: dict[int, int] = {1: 5, 2: 7}
        self.head_reads = 0
        self.fail = False

    async def replay_state(self) -> tuple[str | None, float | None]:
        if self.fail:
            raise ConnectionError("standby restarting")
        return self.lsn, 0.25

    async def engagement_heads(self) -> dict[int, int]:
        self.head_reads += 1
        return dict(self.heads)


def _poll(watcher: ReplicaWatcher) -> None:
    Deferred.fromCoroutine(watcher.poll())  # FakeReplica answers at once


def test_watcher_wakes_the_engagements_that_moved_and_reads_heads_only_on_replay() -> None:
    replica, woken = FakeReplica(), []
    watcher = ReplicaWatcher(replica, lambda e, h: woken.append((e, h)), Clock())
    _poll(watcher)
    assert woken == [] and watcher.lag_seconds == 0.25 and watcher.healthy
    _poll(watcher)
    assert replica.head_reads == 1  # same position: no head query
    replica.lsn, replica.heads[2], replica.heads[3] = "0/2", 9, 1
    _poll(watcher)
    assert woken == [(2, 9), (3, 1)]
    replica.fail = True
    _poll(watcher)
    assert not watcher.healthy


def test_wait_for_head_fires_on_replay_or_times_out() -> None:
    replica, clock = FakeReplica(), Clock()
    watcher = ReplicaWatcher(replica, lambda e, h: None, clock)
    _poll(watcher)
    reached = Deferred.fromCoroutine(watcher.wait_for_head(1, 6, timeout=10))
    late = Deferred.fromCoroutine(watcher.wait_for_head(2, 99, timeout=10))
    already = Deferred.fromCoroutine(watcher.wait_for_head(2, 7, timeout=10))
    assert already.result is True
    assert not reached.called
    replica.lsn, replica.heads[1] = "0/2", 6
    _poll(watcher)
    assert reached.result is True
    assert not late.called
    clock.advance(10)
    assert late.result is False


def _chunk(data: bytes) -> tuple[str, int, int, bytes]:
    codec, payload = chunkstream.compress_chunk(data)
    return chunk_hash(data), codec, len(data), payload


def test_cache_keeps_verified_chunks_in_packs_and_reindexes_them(tmp_path: Path) -> None:
    from smartsyncd.core.model import VerifiedChunk

    records = [_chunk(os.urandom(5000)), _chunk(b"a" * 9000)]
    chunks = [VerifiedChunk(hash=h, codec=c, raw_size=n, payload=p) for h, c, n, p in records]
    cache = ChunkCache(PackStore(str(tmp_path / "chunks")))
    assert cache.load() == 0
    assert cache.add(7, chunks) == 2
    assert cache.add(7, chunks) == 0  # already there: no second pack
    assert cache.lacking(7, [records[0][0], "f" * 64, records[0][0]]) == ["f" * 64]
    assert cache.lacking(8, [records[0][0]]) == [records[0][0]]  # per engagement
    packs = list((tmp_path / "chunks" / "7").rglob("*.pack"))
    assert len(packs) == 1
    # a restart: the index comes back from the packs' own headers
    again = ChunkCache(PackStore(str(tmp_path / "chunks")))
    assert again.load() == 2
    read = again.read(7, [records[1][0], records[0][0]])
    assert {h: (c.codec, c.raw_size, c.payload) for h, c in read.items()} == {
        h: (c, n, p) for h, c, n, p in records
    }
    # a pack cut short (never happens after the fsync and rename, but never trusted): the
    # whole records before the cut are kept
    size = packs[0].stat().st_size
    with open(packs[0], "r+b") as f:
        f.truncate(size - 10)
    assert ChunkCache(PackStore(str(tmp_path / "chunks"))).load() == 1


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smartsync.ini"
    path.write_text(text)
    return path


def test_branch_config(tmp_path: Path) -> None:
    fingerprint = ":".join(["AB"] * 32)
    config = load_config(str(_config(tmp_path, (
        "[database]\nurl = postgresql://branch@localhost/smartsync\n"
        f"[branch]\ncentral = https://sync.example.com:8443/\ncentral_fingerprint = {fingerprint}\n"
    ))))
    assert config.branch_central == "https://sync.example.com:8443"
    assert config.branch_central_fingerprint == fingerprint
    assert config.branch_commit_wait_seconds == 30.0
    assert config.branch_credential_file is None and config.branch_cache_max_bytes is None
    carrying = load_config(str(_config(tmp_path, (
        "[database]\nurl = postgresql://branch@localhost/smartsync\n"
        "[branch]\ncentral = https://sync.example.com\ncredential_file = branch.credential\n"
        "cache_max_bytes = 5000000000\nprefetch_kbps = 2048\n"
    ))))
    assert carrying.branch_credential_file == str(tmp_path / "branch.credential")  # beside the ini
    assert (carrying.branch_cache_max_bytes, carrying.branch_prefetch_kbps) == (5_000_000_000, 2048)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[branch]\ncentral = https://c.example\n", "needs [database] url = postgresql"),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral = http://c.example\n", "https://"),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral_ca = ca.pem\n", "set central ="),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral = https://c\n"
         "central_fingerprint = 12\n", "SHA-256"),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral = https://c\n"
         f"central_fingerprint = {'ab' * 32}\ncentral_ca = ca.pem\n", "not both"),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral = https://c\ncache_max_bytes = 0\n",
         "at least 1"),
        ("[database]\nurl = postgresql://x/y\n[branch]\ncentral = https://c\nprefetch_kbps = fast\n",
         "prefetch_kbps"),
    ],
)
def test_branch_config_refusals(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(str(_config(tmp_path, text)))


class _Engagements:
    async def get_engagement(self, name: str) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(id=1, name=name)


class _Answered:
    def __init__(self, path: bytes) -> None:
        self.path = path


def test_a_write_waits_for_the_replica_but_a_copy_report_does_not() -> None:
    """A commit's head waits until the standby replayed it; a copy report's head (issue 15:
    the answer says whether there is anything to pull) is only read, and goes out at once."""
    from typing import Any

    from smartsyncd.web.branch import Branch, BranchRoot

    replica, clock = FakeReplica(), Clock()
    watcher = ReplicaWatcher(replica, lambda e, h: None, clock)
    _poll(watcher)  # engagement 1 is at 5 on the standby
    branch: Any = Branch(central=None, authorizer=None, replica=watcher,  # type: ignore[arg-type]
                         store=_Engagements(), run_blocking=None, limits=None,  # type: ignore[arg-type]
                         clock=clock, commit_wait=30.0)
    root = BranchRoot(branch, local=None)  # type: ignore[arg-type]
    data = b'{"head":9,"locks":[]}'
    report: Any = _Answered(b"/v1/engagements/alpha/copies/c1/report")
    assert Deferred.fromCoroutine(root._settle(report, 200, data)).result == data
    commit: Any = _Answered(b"/v1/engagements/alpha/commit")
    waiting = Deferred.fromCoroutine(root._settle(commit, 200, data))
    assert not waiting.called
    replica.lsn, replica.heads[1] = "0/2", 9
    _poll(watcher)
    assert waiting.result == data
