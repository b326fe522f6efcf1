"""The desktop sync loop (client/copyservice.py) against the real server Site in memory, on a
Clock: its states, pause and resume, and waking up after a sleep (host notice or clock jump)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven, files_of
from twisted.internet.defer import Deferred

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.copyservice import CopyEvent, CopyService, ServiceState
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI

S = ServiceState


class SwitchableAPI(ServerAPI):
    """A ServerAPI whose every request fails as a network error while ``down`` is set."""

    down = False

    async def _request(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise NetworkError("connection refused (injected)", retryable=True)
        return await super()._request(*args, **kwargs)


async def _service(server: MemoryServer, tmp_path: Path, **kwargs: Any
                   ) -> tuple[CopyService, SwitchableAPI, list[CopyEvent]]:
    api: SwitchableAPI = await server.api("alice", SwitchableAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, long_poll=10.0, **kwargs)
    events: list[CopyEvent] = []
    service.subscribe(events.append)
    return service, api, events


def _states(events: list[CopyEvent]) -> list[ServiceState]:
    return [e.value for e in events if e.kind == "state"]


async def _bob_files(server: MemoryServer, tmp_path: Path) -> dict[str, bytes]:
    bob = await server.api("bob")
    await server.clone(bob, tmp_path / "bob")
    return files_of(tmp_path / "bob")


@driven
async def test_states_and_a_local_edit_synced(server: MemoryServer, tmp_path: Path) -> None:
    service, _api, events = await _service(server, tmp_path)
    done = service.start()
    await server.wait_for(lambda: service.state is S.IDLE)
    (tmp_path / "a" / "memo.txt").write_bytes(b"hello")
    await server.wait_for(lambda: any(e.kind == "report" and e.value.uploaded for e in events))
    await server.wait_for(lambda: service.state is S.IDLE)
    await service.stop()
    assert done.called and service.state is S.STOPPED
    assert _states(events)[:3] == [S.SYNCING, S.IDLE, S.SYNCING]
    assert _states(events)[-1] is S.STOPPED
    assert (await _bob_files(server, tmp_path))["memo.txt"] == b"hello"


@driven
async def test_pause_lets_the_sync_end_and_resume_sends_edits(
    server: MemoryServer, tmp_path: Path
) -> None:
    service, _api, events = await _service(server, tmp_path)
    (tmp_path / "a" / "first.txt").write_bytes(b"one")

    def pause_mid_sync(event: CopyEvent) -> None:  # the first sync is running when paused
        if event.kind == "state" and event.value is S.SYNCING:
            service.listeners.remove(pause_mid_sync)
            service.pause()

    service.subscribe(pause_mid_sync)
    service.start()
    await server.wait_for(lambda: service.state is S.PAUSED)
    reports = [e.value for e in events if e.kind == "report"]
    assert len(reports) == 1 and reports[0].uploaded == 1  # the sync ended whole

    (tmp_path / "a" / "while-paused.txt").write_bytes(b"two")
    start = server.clock.seconds()
    await server.wait_for(lambda: server.clock.seconds() - start > 120)  # long pause
    assert service.state is S.PAUSED
    assert len([e for e in events if e.kind == "report"]) == 1  # nothing synced meanwhile
    assert "while-paused.txt" not in await _bob_files(server, tmp_path)

    service.resume()
    await server.wait_for(lambda: service.state is S.IDLE)
    await service.stop()
    assert (await _bob_files(server, tmp_path / "2"))["while-paused.txt"] == b"two"


@driven
async def test_offline_then_host_wake_syncs_at_once(server: MemoryServer, tmp_path: Path) -> None:
    backoff = Backoff(initial=1000.0, maximum=1000.0, jitter=lambda: 1.0)
    service, api, events = await _service(server, tmp_path, backoff=backoff, offline_after=2)
    api.down = True
    service.start()
    await server.wait_for(lambda: service.state is S.WAITING_TO_RETRY)
    retries = [e.value for e in events if e.kind == "retry"]
    assert retries[0]["retry_in"] == 1000.0 and "refused" in retries[0]["error"]
    await server.wait_for(lambda: service.state is S.OFFLINE)  # second failure, 1000 s on

    (tmp_path / "a" / "offline-edit.txt").write_bytes(b"kept")
    api.down = False
    woke_at = server.clock.seconds()
    service.wake()  # the host's "network changed" notice
    await server.wait_for(lambda: service.state is S.IDLE)
    assert server.clock.seconds() - woke_at < 100  # not the 1000 s backoff
    assert ("woke", "host") in [(e.kind, e.value) for e in events]
    await service.stop()
    assert (await _bob_files(server, tmp_path))["offline-edit.txt"] == b"kept"


@driven
async def test_a_clock_jump_drops_the_backoff_wait(server: MemoryServer, tmp_path: Path) -> None:
    backoff = Backoff(initial=1000.0, maximum=1000.0, jitter=lambda: 1.0)
    service, api, events = await _service(server, tmp_path, backoff=backoff, tick=5.0, jump=30.0)
    api.down = True
    service.start()
    await server.wait_for(lambda: service.state is S.WAITING_TO_RETRY)
    api.down = False
    failed_at = server.clock.seconds()
    server.clock.advance(200)  # the laptop slept: the tick timer fires 195 s late
    await server.wait_for(lambda: service.state is S.IDLE)
    assert server.clock.seconds() - failed_at < 1000
    assert ("woke", "clock-jump") in [(e.kind, e.value) for e in events]
    await service.stop()


@driven
async def test_idle_long_poll_is_restarted_and_wake_syncs(
    server: MemoryServer, tmp_path: Path
) -> None:
    service, _api, events = await _service(server, tmp_path)
    service.start()
    await server.wait_for(lambda: service.state is S.IDLE)
    syncs = len([e for e in events if e.kind == "report"])
    start = server.clock.seconds()
    await server.wait_for(lambda: server.clock.seconds() - start > 100)  # several long-polls
    assert service.state is S.IDLE
    service.wake("network-changed")
    await server.wait_for(lambda: len([e for e in events if e.kind == "report"]) > syncs)
    await service.stop()


class HangingAPI(SwitchableAPI):
    """Long-polls that never answer while ``hang`` is set (a connection dead after a sleep)."""

    hang = False
    long_polls = 0

    async def changes(self, eng: str, since: int, limit: int = 5000, wait: float = 0) -> Any:
        if wait and self.hang:
            self.long_polls += 1
            await Deferred()  # never fires; only a cancel ends it
        return await super().changes(eng, since, limit, wait)


@driven
async def test_a_hung_long_poll_is_abandoned_and_restarted(
    server: MemoryServer, tmp_path: Path
) -> None:
    api: HangingAPI = await server.api("alice", HangingAPI)
    copy = await server.clone(api, tmp_path / "a")
    service = CopyService(copy, api, native_watch=False, long_poll=10.0, poll_grace=5.0)
    reports: list[Any] = []
    service.subscribe(lambda e: e.kind == "report" and reports.append(e.value))
    api.hang = True
    service.start()
    await server.wait_for(lambda: api.long_polls == 1)
    started = server.clock.seconds()
    await server.wait_for(lambda: api.long_polls == 3)  # each abandoned after 10 + 5 s
    assert 29 <= server.clock.seconds() - started <= 31
    service.wake()  # the machine woke: the hung poll is dropped and a sync runs at once
    woke_at = server.clock.seconds()
    await server.wait_for(lambda: len(reports) == 2)
    assert server.clock.seconds() - woke_at < 1
    await service.stop()
    assert service.state is S.STOPPED


@driven
async def test_events_name_the_conflict_copy_made_after_resume(
    server: MemoryServer, tmp_path: Path
) -> None:
    service, _api, events = await _service(server, tmp_path)
    (tmp_path / "a" / "B-1.xlsx").write_bytes(b"original")
    service.start()
    await server.wait_for(lambda: service.state is S.IDLE)
    service.pause()
    bob_api = await server.api("bob")
    bob = await server.clone(bob_api, tmp_path / "b")
    (tmp_path / "b" / "B-1.xlsx").write_bytes(b"bob's numbers")
    await bob.sync(bob_api)
    (tmp_path / "a" / "B-1.xlsx").write_bytes(b"alice's numbers")  # while paused
    service.resume()
    await server.wait_for(lambda: any(e.kind == "conflict" for e in events))
    await server.wait_for(lambda: service.state is S.IDLE)
    await service.stop()
    conflict = next(e.value for e in events if e.kind == "conflict")
    assert conflict.startswith("B-1 (conflict alice ")
    assert (tmp_path / "a" / conflict).read_bytes() == b"alice's numbers"  # nothing lost
    assert (tmp_path / "a" / "B-1.xlsx").read_bytes() == b"bob's numbers"
