"""The branch's prefetch service on a Clock (issue 18): its states, pacing, resuming after a
link cut, keeping up with new heads; the chunk cache's trim order; the read-event spool and
central's checks of what it sends; and the branch credential's file and header rules.
The real thing (standby, central, relay) is in tests/integration/test_branch_carry.py."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from smartsyncd.auth.branchcred import (
    CredentialFileError,
    header_value,
    new_secret,
    read_credential,
    secret_from_header,
    uses_branch_scheme,
    write_credential,
)
from smartsyncd.core import chunkstream
from smartsyncd.core.chunking import chunk_hash
from smartsyncd.core.errors import BadRequest, CentralUnreachable
from smartsyncd.core.model import VerifiedChunk
from smartsyncd.service.cachetrim import CacheTrimmer
from smartsyncd.service.prefetch import Prefetcher
from smartsyncd.storage.branchcache import ChunkCache, TrimReport
from smartsyncd.storage.branches import CarriedEngagement
from smartsyncd.storage.packs import PackStore
from smartsyncd.storage.readaudit import ReadEvent
from smartsyncd.storage.readspool import ReadSpool
from smartsyncd.web.branchreads import parse_events

CHUNK = 1000  # bytes each fake chunk costs on the link


class FakeBranch:
    """A standby's carry list and heads, a cache, and a link that can be cut."""

    def __init__(self) -> None:
        self.heads = {"acme": 3}
        self.files: dict[str, list[str]] = {"acme": [f"a{i}" for i in range(10)]}
        self.cache: set[tuple[str, str]] = set()
        self.link_up = True
        self.fail_after: int | None = None  # requests that pass before the link drops
        self.requests: list[tuple[str, int]] = []

    async def carried(self) -> list[CarriedEngagement]:
        return [CarriedEngagement(i, name, head) for i, (name, head) in enumerate(sorted(self.heads.items()))]

    async def lacking(self, engagement: CarriedEngagement) -> tuple[int, list[str]]:
        return self.heads[engagement.name], [h for h in self.files[engagement.name] if (engagement.name, h) not in self.cache]

    async def fetch(self, engagement: CarriedEngagement, hashes: Sequence[str]) -> int:
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.link_up = False
            self.fail_after -= 1
        if not self.link_up:
            raise CentralUnreachable("link down")
        self.requests.append((engagement.name, len(hashes)))
        self.cache.update((engagement.name, h) for h in hashes)
        return CHUNK * len(hashes)


def started(branch: FakeBranch, clock: Clock, **kwargs: float) -> Prefetcher:
    prefetch = Prefetcher(branch, clock, batch=4, rescan=10.0, retry=5.0, retry_max=20.0, **kwargs)  # type: ignore[arg-type]
    prefetch.startService()
    assert prefetch.state == "starting"
    return prefetch


def test_fetches_what_the_cache_lacks_in_batches_then_idles() -> None:
    branch, clock = FakeBranch(), Clock()
    branch.cache.add(("acme", "a0"))  # a user fetched one already
    prefetch = started(branch, clock)
    clock.advance(0)
    assert branch.requests == [("acme", 4), ("acme", 4), ("acme", 1)]
    assert prefetch.state == "idle"
    assert prefetch.progress["acme"].head == 3 and prefetch.progress["acme"].bytes == 9 * CHUNK
    clock.advance(10)  # the rescan: the head did not move, nothing is read or fetched
    assert len(branch.requests) == 3 and prefetch.passes == 2


def test_a_new_head_or_carry_is_fetched_on_wake_or_rescan() -> None:
    branch, clock = FakeBranch(), Clock()
    prefetch = started(branch, clock)
    clock.advance(0)
    branch.heads["acme"], branch.files["acme"] = 4, [*branch.files["acme"], "a10"]
    prefetch.wake()  # the replay watcher saw the head move
    clock.advance(0)
    assert branch.requests[-1] == ("acme", 1) and prefetch.progress["acme"].head == 4
    branch.heads["beta"], branch.files["beta"] = 1, ["b0", "b1"]  # carried at central, replayed
    clock.advance(9.9)
    assert not any(name == "beta" for name, _ in branch.requests)
    clock.advance(0.1)
    assert ("beta", 2) in branch.requests and prefetch.state == "idle"


def test_a_cut_link_pauses_then_resumes_where_it_was() -> None:
    branch, clock = FakeBranch(), Clock()
    branch.fail_after = 1  # the second request finds the link down
    prefetch = started(branch, clock)
    clock.advance(0)
    assert prefetch.state == "link_down" and branch.requests == [("acme", 4)]
    clock.advance(5)  # first retry: still down
    assert prefetch.state == "link_down" and len(branch.requests) == 1
    clock.advance(9.9)  # the wait doubled to 10 s
    assert len(branch.requests) == 1
    branch.link_up, branch.fail_after = True, None
    clock.advance(0.1)
    assert prefetch.state == "idle"
    assert branch.requests == [("acme", 4), ("acme", 4), ("acme", 2)]  # only what was lacking
    assert len(branch.cache) == 10


def test_paced_to_the_rate() -> None:
    branch, clock = FakeBranch(), Clock()
    prefetch = started(branch, clock, rate=2000.0)  # 2 chunks a second
    clock.advance(0)
    assert len(branch.requests) == 1 and prefetch.state == "fetching"
    clock.advance(1.9)
    assert len(branch.requests) == 1
    clock.advance(0.1)  # 4 chunks = 4000 bytes = 2 s
    assert len(branch.requests) == 2
    clock.advance(2)
    assert len(branch.requests) == 3 and prefetch.state == "fetching"
    clock.advance(0.9)  # the last one (2 chunks: 1 s) is paced too, then the pass ends
    assert prefetch.state == "fetching"
    clock.advance(0.1)
    assert prefetch.state == "idle"


def test_stop_cancels_a_pass_and_the_timer() -> None:
    branch, clock = FakeBranch(), Clock()
    prefetch = started(branch, clock, rate=2000.0)
    clock.advance(0)
    prefetch.stopService()
    assert prefetch.state == "stopped" and not clock.getDelayedCalls()
    clock.advance(100)
    assert len(branch.requests) == 1


def test_credential_file_is_private_and_well_formed(tmp_path: Path) -> None:
    secret = new_secret()
    path = tmp_path / "branch.credential"
    write_credential(str(path), secret)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_credential(str(path)) == secret
    with pytest.raises(FileExistsError):
        write_credential(str(path), new_secret())  # never overwritten
    path.chmod(0o640)
    with pytest.raises(CredentialFileError, match="chmod 600") as refused:
        read_credential(str(path))
    assert secret not in str(refused.value)
    other = tmp_path / "other"
    other.write_text("not a credential\n")
    other.chmod(0o600)
    with pytest.raises(CredentialFileError, match="does not hold a branch credential"):
        read_credential(str(other))


def test_header_scheme_is_not_a_bearer_token() -> None:
    secret = new_secret()
    header = header_value(secret)
    assert uses_branch_scheme(header) and secret_from_header(header) == secret
    assert uses_branch_scheme(b"smartsyncbranch junk") and secret_from_header(b"SmartsyncBranch junk") is None
    assert not uses_branch_scheme(f"Bearer {secret}".encode())


def _pack(cache: ChunkCache, engagement_id: int, size: int) -> str:
    data = os.urandom(size)
    codec, payload = chunkstream.compress_chunk(data)
    chunk = VerifiedChunk(hash=chunk_hash(data), codec=codec, raw_size=size, payload=payload)
    assert cache.add(engagement_id, [chunk]) == 1
    return chunk.hash


def test_trim_removes_least_recently_read_packs_of_engagements_not_carried_first(tmp_path: Path) -> None:
    cache = ChunkCache(PackStore(str(tmp_path / "chunks")))
    cache.load()
    old, newer, read_lately = (_pack(cache, 2, 10_000) for _ in range(3))
    carried_head, carried_old = _pack(cache, 1, 10_000), _pack(cache, 1, 10_000)
    time.sleep(0.01)  # last reads are wall-clock times
    assert cache.read(2, [read_lately])  # now the most recently read of engagement 2
    per_pack = cache.total_bytes // 5
    assert cache.trim(cache.total_bytes, {1}, {(1, carried_head)}).packs == 0  # under the limit

    report = cache.trim(per_pack * 4, {1}, {(1, carried_head)})  # down to 90 %: two packs go
    assert report.packs == 2 and report.bytes_kept == cache.total_bytes <= per_pack * 4 * 0.9
    assert cache.lacking(2, [old, newer, read_lately]) == [old, newer]
    assert len(list((tmp_path / "chunks" / "2").rglob("*.pack"))) == 1  # the files went too
    # tighter: engagement 2's last pack, then the carried engagement's old version; its head stays
    report = cache.trim(per_pack, {1}, {(1, carried_head)})
    assert cache.lacking(2, [read_lately]) == [read_lately]
    assert cache.lacking(1, [carried_head, carried_old]) == [carried_old]
    assert report.bytes_kept == cache.total_bytes and len(list((tmp_path / "chunks").rglob("*.pack"))) == 1
    assert ChunkCache(PackStore(str(tmp_path / "chunks"))).load() == 1  # a restart agrees


def test_read_spool_keeps_batches_durably_until_removed(tmp_path: Path) -> None:
    spool = ReadSpool(str(tmp_path / "read-spool"))
    assert spool.prepare() == 0
    at = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
    first = spool.add([ReadEvent(3, "download", "bob", at, {"content": "c" * 64, "size": 5})])
    second = spool.add([ReadEvent(3, "history", "bob", at, {"path": "a.txt"})] * 2)
    assert (tmp_path / "read-spool").stat().st_mode & 0o777 == 0o700
    assert ReadSpool(str(tmp_path / "read-spool")).prepare() == 2  # a restart finds them
    batches = spool.pending(2)  # whole batches only: the second would pass the cap
    assert [name for name, _ in batches] == [first]
    assert batches[0][1][0] == {"engagement_id": 3, "event": "download", "actor": "bob",
                                "at": at.isoformat(), "detail": {"content": "c" * 64, "size": 5}}
    assert [name for name, _ in spool.pending(1000)] == [first, second]
    spool.remove([first])
    spool.set_aside([second])
    assert spool.pending(1000) == [] and (tmp_path / "read-spool" / (second + ".rejected")).exists()
    # what central makes of a spooled event: the reader, the time of the read, and where
    event = parse_events(batches[0][1], "branch:office1")[0]
    assert (event.actor, event.at, event.detail["via"]) == ("bob", at, "branch:office1")


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ("x", "events"),
        ([{"engagement_id": "1", "event": "download", "actor": "a", "at": "2026-01-01T00:00:00", "detail": {}}], "events[0]"),
        ([{"engagement_id": 1, "event": "commit", "actor": "a", "at": "2026-01-01T00:00:00", "detail": {}}], "events[0]"),
        ([{"engagement_id": 1, "event": "download", "actor": "", "at": "2026-01-01T00:00:00", "detail": {}}], "events[0]"),
        ([{"engagement_id": 1, "event": "download", "actor": "a", "at": "yesterday", "detail": {}}], "events[0]"),
        ([{"engagement_id": 1, "event": "download", "actor": "a", "at": "2026-01-01T00:00:00", "detail": {"x": "y" * 5000}}], "events[0]"),
        ([{}] * 1001, "events"),
    ],
)
def test_central_refuses_malformed_read_events(events: object, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_events(events, "branch:office1")
    assert refused.value.status == 400 and refused.value.to_json()["field"] == field


class FakeCacheStore:
    def __init__(self) -> None:
        self.cache = self
        self.total_bytes = 0
        self.protected_reads = 0
        self.kept_floor = 0  # what a trim cannot go below (carried heads)

    async def trim_cache(self, max_bytes: int, carried: set[int], protected: set[tuple[int, str]]) -> TrimReport:
        before = self.total_bytes
        self.total_bytes = max(self.kept_floor, min(before, int(max_bytes * 0.9)))
        return TrimReport(1, 1, before - self.total_bytes, self.total_bytes)

    async def protected(self) -> tuple[set[int], set[tuple[int, str]]]:
        self.protected_reads += 1
        return {1}, set()


def test_trimmer_trims_when_over_and_not_again_while_carried_heads_fill_it() -> None:
    store, clock = FakeCacheStore(), Clock()
    trimmer = CacheTrimmer(store, 1000, clock, store.protected, interval=60)
    trimmer.startService()
    assert store.protected_reads == 0  # under the limit: nothing read
    store.total_bytes = 1500
    trimmer.poke()
    assert store.total_bytes == 900 and trimmer.trims == 1 and trimmer.bytes_freed == 600
    store.kept_floor, store.total_bytes = 1200, 1300  # the carried heads alone are over it
    trimmer.poke()
    assert store.total_bytes == 1200 and trimmer.trims == 2
    store.total_bytes = 1230
    trimmer.poke()  # grown by less than 5 % of the limit: no new read of the carried heads
    clock.advance(60)
    assert trimmer.trims == 2 and store.protected_reads == 2
    store.total_bytes = 1260
    trimmer.poke()
    assert trimmer.trims == 3
    trimmer.stopService()
