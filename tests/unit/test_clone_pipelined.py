"""A clone asks the requests that do not depend on each other together (client/engine.py,
client/clonestart.py): the snapshot (carrying the first files' chunk lists) with the first
small files' chunks, which the server picks (``GET .../snapshot/chunks``); then the
engagement's rules, which decide what is written; the copy's session and registration after.
When the server picks none (an engagement with rules, an older server): the rules at once,
then the chunks as soon as the snapshot and the rules are here. From a server whose snapshot
carries no chunk lists either: the snapshot with the chunks' ask, then the first files'
manifests with the session (the registration right after the session, on its connection,
while the manifests are still coming), then the chunks, which do not wait for the
registration. Each request here takes 50 ms of Clock time before the in-memory server
answers, as a WAN's round trip would; the order of asking and answering shows which went
together."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven, files_of
from twisted.internet.defer import succeed
from twisted.internet.task import deferLater

from smartsyncd.client.http import ServerAPI

RTT = 0.05


class SlowAPI(ServerAPI):
    """The real client, each of the clone's first requests 50 ms late; logs (event, time)."""

    events: list[tuple[str, float]]
    clock: Any  # the test's Clock

    def _note(self, what: str) -> None:
        self.events.append((what, self.clock.seconds()))

    async def _late(self, name: str, call: Any, extra: float = 0.0) -> Any:
        self._note(f"{name} asked")
        await deferLater(self.clock, RTT + extra, lambda: None)
        answer = await call
        self._note(f"{name} answered")
        return answer

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Any:
        # 20 ms more: the file list is a larger answer than most
        return await self._late("snapshot", super().snapshot(eng, chunks=chunks), 0.02)

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

    async def first_chunks(self, *args: Any, **kwargs: Any) -> Any:
        return await self._late("first chunks", super().first_chunks(*args, **kwargs))

    async def fetch_chunks(self, *args: Any, **kwargs: Any) -> Any:
        if "fetch asked" not in dict(self.events):
            self._note("fetch asked")
        return await super().fetch_chunks(*args, **kwargs)


class OlderServerAPI(SlowAPI):
    """As against a server that sends no chunk lists with the snapshot and has no route for
    the first chunks (its 404 is an empty pick to ``ServerAPI.first_chunks``)."""

    async def snapshot(self, eng: str, *, chunks: bool = False) -> Any:
        return await super().snapshot(eng)

    async def first_chunks(self, *args: Any, **kwargs: Any) -> Any:
        return await self._late("first chunks", succeed({}))


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


async def _clone_timed(server: MemoryServer, tmp_path: Path, kind: type[SlowAPI]) -> tuple[
    dict[str, float], Callable[[str], int]
]:
    """Clone into ``copy`` through ``kind``: when each event happened, and their order."""
    api: SlowAPI = await server.api("alice", kind)
    api.events = []
    api.clock = server.clock
    copy = await server.clone(api, tmp_path / "copy")
    copy.close()
    return dict(api.events), [event for event, _ in api.events].index


@driven
async def test_a_clone_gets_the_chunk_lists_with_the_snapshot(
    server: MemoryServer, tmp_path: Path
) -> None:
    files = await _engagement(server, tmp_path)
    at, order = await _clone_timed(server, tmp_path, SlowAPI)
    assert files_of(tmp_path / "copy") == files
    assert "manifests asked" not in at  # every list came with the snapshot
    # every small file's chunks came with the snapshot's turn, picked by the server
    assert at["first chunks asked"] < at["snapshot answered"] and "fetch asked" not in at
    assert order("snapshot answered") < order("rules asked")
    assert order("rules answered") < order("session asked") < order("register asked")


@driven
async def test_a_clone_asks_independent_requests_together(
    server: MemoryServer, tmp_path: Path
) -> None:
    """From a server whose snapshot carries no chunk lists."""
    files = await _engagement(server, tmp_path)
    at, order = await _clone_timed(server, tmp_path, OlderServerAPI)
    assert files_of(tmp_path / "copy") == files
    # the rules as soon as the server picked no chunks, beside the snapshot
    assert at["first chunks asked"] < at["snapshot answered"]
    assert order("first chunks answered") < order("rules asked")
    assert at["rules asked"] < at["snapshot answered"]
    # the manifests leave with the snapshot's answer, beside the session
    assert order("snapshot answered") < order("manifests asked")
    assert at["session asked"] < at["manifests answered"]
    # the registration follows the session, and the chunks do not wait for it
    assert order("session answered") < order("register asked") < order("manifests answered")
    assert order("fetch asked") < order("register answered")
    # snapshot and rules, then manifests beside the session, then chunks: no wait between
    assert at["manifests asked"] == max(at["snapshot answered"], at["rules answered"])
    assert at["fetch asked"] == at["manifests answered"]


@driven
async def test_under_ignore_rules_the_clone_asks_the_chunks_itself(
    server: MemoryServer, tmp_path: Path
) -> None:
    """The server picks nothing for an engagement with rules (they decide what is written):
    the rules go at once, the chunks as soon as the snapshot and the rules are here, and an
    ignored file is neither fetched nor written."""
    files = await _engagement(server, tmp_path)
    await server.env.store.set_ignore_rules("alpha", "wp/03.txt\n")
    at, order = await _clone_timed(server, tmp_path, SlowAPI)
    del files["wp/03.txt"]
    assert files_of(tmp_path / "copy") == files
    assert order("first chunks answered") < order("rules asked")
    assert at["rules asked"] < at["snapshot answered"]
    # the fetch as soon as both are here
    assert at["fetch asked"] == max(at["snapshot answered"], at["rules answered"])
    assert order("fetch asked") < order("session answered")
