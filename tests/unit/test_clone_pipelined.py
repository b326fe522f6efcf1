"""A clone asks the requests that do not depend on each other together (client/engine.py):
the snapshot (carrying the first files' chunk lists) with the engagement's rules, which
decide what is written; then at once the first small files' chunks, beside the session (the
copy's state is made meanwhile) and then the copy's registration. From a server whose
snapshot carries no chunk lists: the snapshot with the rules, then the first files'
manifests with the session (the registration right after the session, on its connection,
while the manifests are still coming), then the chunks, which do not wait for the
registration. Each request here takes 50 ms of Clock time before the in-memory server
answers, as a WAN's round trip would; the order of asking and answering shows which went
together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven, files_of
from twisted.internet.task import deferLater

from smartsyncd.client.http import ServerAPI

RTT = 0.05


class SlowAPI(ServerAPI):
    """The real client, each of the clone's first requests 50 ms late; logs (event, time)."""

    events: list[tuple[str, float]]
    clock: Any  # the test's Clock

    def _note(self, what: str) -> None:
        self.events.append((what, self.clock.seconds()))

    async def _late(self, name: str, call: Any) -> Any:
        self._note(f"{name} asked")
        await deferLater(self.clock, RTT, lambda: None)
        answer = await call
        self._note(f"{name} answered")
        return answer

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Any:
        return await self._late("snapshot", super().snapshot(eng, chunks=chunks))

    async def session(self) -> Any:
        return await self._late("session", super().session())

    async def ignore_rules(self, eng: str, etag: str | None) -> Any:
        return await self._late("rules", super().ignore_rules(eng, etag))

    async def register_copy(self, *args: Any, **kwargs: Any) -> Any:
        return await self._late("register", super().register_copy(*args, **kwargs))

    async def manifests(self, *args: Any, **kwargs: Any) -> Any:
        # 80 ms: a larger answer than the others (the manifests of up to 1,000 files)
        self._note("manifests asked")
        await deferLater(self.clock, RTT + 0.03, lambda: None)
        answer = await super().manifests(*args, **kwargs)
        self._note("manifests answered")
        return answer

    async def fetch_chunks(self, *args: Any, **kwargs: Any) -> Any:
        if "fetch asked" not in dict(self.events):
            self._note("fetch asked")
        return await super().fetch_chunks(*args, **kwargs)


class OlderServerAPI(SlowAPI):
    """As against a server that sends no chunk lists with the snapshot."""

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Any:
        return await super().snapshot(eng)


async def _engagement(server: MemoryServer, tmp_path: Path) -> dict[str, bytes]:
    writer = await server.api("alice")
    first = await server.clone(writer, tmp_path / "first")
    files = {f"wp/{i:02d}.txt": f"paper {i}\n".encode() * (i + 1) for i in range(12)}
    for name, data in files.items():
        (tmp_path / "first" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "first" / name).write_bytes(data)
    await first.sync(writer)
    first.close()
    return files


@driven
async def test_a_clone_gets_the_chunk_lists_with_the_snapshot(
    server: MemoryServer, tmp_path: Path
) -> None:
    files = await _engagement(server, tmp_path)
    api: SlowAPI = await server.api("alice", SlowAPI)
    api.events = []
    api.clock = server.clock
    copy = await server.clone(api, tmp_path / "copy")
    copy.close()
    at = dict(api.events)
    order = [event for event, _ in api.events].index
    assert files_of(tmp_path / "copy") == files
    assert "manifests asked" not in at  # every list came with the snapshot
    assert at["rules asked"] < at["snapshot answered"]
    # the chunks as soon as both are here: before the copy is made (its session's answer)
    assert order("rules answered") < order("fetch asked") < order("session answered")
    assert order("session answered") < order("register asked")
    assert at["fetch asked"] - at["snapshot asked"] < 2 * RTT  # one turn, not three


@driven
async def test_a_clone_asks_independent_requests_together(
    server: MemoryServer, tmp_path: Path
) -> None:
    """From a server whose snapshot carries no chunk lists."""
    files = await _engagement(server, tmp_path)
    api: SlowAPI = await server.api("alice", OlderServerAPI)
    api.events = []
    api.clock = server.clock
    copy = await server.clone(api, tmp_path / "copy")
    copy.close()
    at = dict(api.events)
    order = [event for event, _ in api.events].index
    assert files_of(tmp_path / "copy") == files
    assert at["rules asked"] < at["snapshot answered"]
    # the manifests leave with the snapshot's answer, beside the session
    assert order("snapshot answered") < order("manifests asked")
    assert at["session asked"] < at["manifests answered"]
    # the registration follows the session, and the chunks do not wait for it
    assert order("session answered") < order("register asked") < order("manifests answered")
    assert order("fetch asked") < order("register answered")
    # snapshot, manifests beside rules, then chunks: the fetch is asked after two turns
    # (and the manifests' extra 30 ms), not four
    assert at["fetch asked"] - at["snapshot asked"] < 3 * RTT
    assert at["fetch asked"] >= at["manifests answered"]
