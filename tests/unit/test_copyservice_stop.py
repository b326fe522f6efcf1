"""Stopping the sync loop (client/copyservice.py) and what ``watch`` hears from it, on a Clock
against the real server Site in memory: a stop lets a running sync end, one that hangs is
cancelled after the grace period without leaving a half-written file, reachability is told once
per outage, and ``SyncCopy.watch`` (client/watch.py) runs on the same loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven, files_of
from test_copyservice import SwitchableAPI
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from smartsyncd.client.copyservice import CopyEvent, CopyService, Reachability, ServiceState
from smartsyncd.client.errors import AuthError
from smartsyncd.client.localfs import TEMP_PREFIX
from smartsyncd.client.watch import steady

S = ServiceState


class SlowFetchAPI(SwitchableAPI):
    """Chunk downloads that take ``delay`` seconds of Clock time, or never end (``hang``)."""

    hang = False
    delay = 0.0
    fetches = 0

    async def fetch_chunks(self, eng: str, hashes: Any, stream: bool = False) -> dict[str, bytes]:
        self.fetches += 1
        if self.hang:
            await Deferred()  # a download stuck on a dead connection: only a cancel ends it
        if self.delay:
            await deferLater(self.clock, self.delay, lambda: None)
        return await super().fetch_chunks(eng, hashes)

    @property
    def clock(self) -> Any:
        return self._reactor


async def _bob_adds(server: MemoryServer, tmp_path: Path, name: str, data: bytes) -> None:
    bob_api = await server.api("bob")
    bob = await server.clone(bob_api, tmp_path / "bob")
    (tmp_path / "bob" / name).write_bytes(data)
    await bob.sync(bob_api)
    bob.close()


def _outcome(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@driven
async def test_a_stop_that_hangs_is_cancelled_after_the_grace_period_leaving_no_part(
    server: MemoryServer, tmp_path: Path
) -> None:
    api: SlowFetchAPI = await server.api("alice", SlowFetchAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, long_poll=10.0)
    ended = _outcome(service.start())
    await server.wait_for(lambda: service.state is S.IDLE)
    api.hang = True
    await _bob_adds(server, tmp_path, "ledger.xlsx", b"a workbook being pulled")
    await server.wait_for(lambda: api.fetches == 1)  # the pull hangs on its download
    assert service.state is S.SYNCING

    asked = server.clock.seconds()
    stopping = _outcome(service.stop(grace=10.0))
    await server.wait_for(lambda: server.clock.seconds() - asked >= 9.9)
    assert stopping == [] and service.state is S.SYNCING  # the sync still had its chance
    await server.wait_for(lambda: bool(stopping))
    assert stopping == [False]  # not a clean stop: the running sync was cancelled
    assert 10.0 <= server.clock.seconds() - asked < 10.1
    await server.wait_for(lambda: bool(ended))
    assert service.state is S.STOPPED
    assert isinstance(ended[0], Failure) and ended[0].check(CancelledError)
    # nothing half-written: neither the file nor its temp file is in the copy
    assert "ledger.xlsx" not in files_of(tmp_path / "a") and _temps(tmp_path / "a") == []

    api.hang = False  # the next sync brings the file whole
    report = await copy.sync(api)
    assert report.downloaded == 1
    assert (tmp_path / "a" / "ledger.xlsx").read_bytes() == b"a workbook being pulled"
    copy.close()


@driven
async def test_a_stop_lets_the_running_sync_end_within_the_grace_period(
    server: MemoryServer, tmp_path: Path
) -> None:
    api: SlowFetchAPI = await server.api("alice", SlowFetchAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, long_poll=10.0)
    reports: list[Any] = []
    service.subscribe(lambda e: e.kind == "report" and reports.append(e.value))
    running = _outcome(service.start())
    await server.wait_for(lambda: service.state is S.IDLE)
    api.delay = 3.0  # a slow download, not a stuck one
    await _bob_adds(server, tmp_path, "memo.txt", b"slow but sure")
    await server.wait_for(lambda: api.fetches == 1)

    asked = server.clock.seconds()
    stopping = _outcome(service.stop(grace=10.0))
    await server.wait_for(lambda: bool(stopping))
    assert stopping == [True] and running == [None]
    assert server.clock.seconds() - asked < 10.0
    assert reports[-1].downloaded == 1  # the sync ended whole, then the loop stopped
    assert (tmp_path / "a" / "memo.txt").read_bytes() == b"slow but sure"
    assert not server.clock.getDelayedCalls() or all(
        not call.active() for call in server.clock.getDelayedCalls())  # no grace timer left
    copy.close()


@driven
async def test_reachability_is_told_once_per_outage(server: MemoryServer, tmp_path: Path) -> None:
    api: SwitchableAPI = await server.api("alice", SwitchableAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, long_poll=10.0, backoff=steady(5.0),
                          poll_retry=5.0)
    events: list[CopyEvent] = []
    service.subscribe(events.append)
    api.down = True
    service.start()
    await server.wait_for(lambda: service.state is S.OFFLINE)  # three failed syncs
    assert [e.value["retry_in"] for e in events if e.kind == "retry"] == [5.0, 5.0, 5.0]
    api.down = False
    await server.wait_for(lambda: service.state is S.IDLE)
    told = [e.value for e in events if e.kind == "reachability"]
    assert told[0] == Reachability(False, "connection refused (injected)", 5.0)
    assert told[0].describe() == ("server unreachable (connection refused (injected)); "
                                  "trying again in 5 s")
    assert told[1:] == [Reachability(True)] and told[1].describe() == "server reachable again"

    api.down = True  # the server goes away while the loop waits on its long-poll
    await server.wait_for(lambda: service.state is S.OFFLINE)
    api.down = False
    await server.wait_for(lambda: service.state is S.IDLE)
    told = [e.value for e in events if e.kind == "reachability"]
    assert [t.reachable for t in told] == [False, True, False, True]
    assert told[2].retry_in == 5.0
    await service.stop()


@driven
async def test_an_ended_session_ends_a_cli_style_loop(server: MemoryServer, tmp_path: Path) -> None:
    class SignedOutAPI(SwitchableAPI):
        async def _request(self, *args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise AuthError("session expired (injected)")
            return await super()._request(*args, **kwargs)

    api: SignedOutAPI = await server.api("alice", SignedOutAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, end_when_signed_out=True)
    api.down = True
    ended = _outcome(service.start())
    await server.wait_for(lambda: bool(ended))
    assert isinstance(ended[0], Failure) and ended[0].check(AuthError)
    assert service.state is S.STOPPED  # not SIGNED_OUT waiting for a wake nobody sends
    copy.close()


@driven
async def test_syncopy_watch_runs_on_the_service_loop(server: MemoryServer, tmp_path: Path) -> None:
    """``SyncCopy.watch`` (the library's call) hears reports and reachability as before, and
    its retries wait ``retry_delay`` seconds each, without growth."""
    api: SwitchableAPI = await server.api("alice", SwitchableAPI)
    copy = await server.clone(api, tmp_path / "a")
    reports: list[Any] = []
    statuses: list[Reachability] = []
    stop: Deferred[None] = Deferred()
    api.down = True
    watching = _outcome(Deferred.fromCoroutine(copy.watch(
        api, stop, reports.append, poll_interval=0.05, long_poll=5, retry_delay=2.0,
        native_watch=False, on_status=statuses.append)))
    started = server.clock.seconds()
    await server.wait_for(lambda: server.clock.seconds() - started >= 7.0)  # four tries
    assert statuses == [Reachability(False, "connection refused (injected)", 2.0)]
    assert reports == []
    api.down = False
    await server.wait_for(lambda: len(reports) >= 1)
    assert statuses[1:] == [Reachability(True)]
    (tmp_path / "a" / "typed.txt").write_bytes(b"local news")
    await server.wait_for(lambda: any(r.uploaded for r in reports))
    stop.callback(None)
    await server.wait_for(lambda: bool(watching))
    assert watching == [None]
    copy.close()
