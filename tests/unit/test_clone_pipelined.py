"""A clone asks the requests that do not depend on each other together (client/engine.py):
the snapshot with the session, the engagement's rules with the copy's registration. Each
request here takes 50 ms of Clock time before the in-memory server answers, as a WAN's round
trip would; the order of asking and answering shows which went together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven
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

    async def snapshot(self, eng: str) -> Any:
        return await self._late("snapshot", super().snapshot(eng))

    async def session(self) -> Any:
        return await self._late("session", super().session())

    async def ignore_rules(self, eng: str, etag: str | None) -> Any:
        return await self._late("rules", super().ignore_rules(eng, etag))

    async def register_copy(self, *args: Any, **kwargs: Any) -> Any:
        return await self._late("register", super().register_copy(*args, **kwargs))


@driven
async def test_a_clone_asks_independent_requests_together(
    server: MemoryServer, tmp_path: Path
) -> None:
    api: SlowAPI = await server.api("alice", SlowAPI)
    api.events = []
    api.clock = server.clock
    await server.clone(api, tmp_path / "copy")
    at = dict(api.events)
    assert at["session asked"] < at["snapshot answered"]
    assert at["register asked"] < at["rules answered"]
    assert at["rules asked"] < at["register answered"]
    # four requests in two round trips, not four
    assert at["register answered"] - at["snapshot asked"] < 3 * RTT
