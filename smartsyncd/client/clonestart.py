"""A clone's first requests, asked so that its data starts moving as soon as it can (issue 15).

Beside the snapshot goes ``GET .../snapshot/chunks`` (docs/protocol.md, "First chunks"): the
server picks the first small files' chunks itself, so they are on the wire while the snapshot
is, and not a round trip (and the client's work on the snapshot) after it. The engagement's
rules (which decide what a copy writes; a new copy keeps none, so they are asked without an
ETag) follow on the first connection free: the snapshot's, or the chunks' when the server
picked none (an engagement with rules, an older server). Then, and only then, the chunks are
asked the usual way (``pullbatch.ask_first_chunks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from twisted.internet.defer import Deferred

from smartsyncd.client.pullbatch import GROUP_FILES, ask_first_chunks, drop_asked
from smartsyncd.client.pullwrite import PARTIAL_MIN, Write
from smartsyncd.client.server import Server
from smartsyncd.client.serverrules import first_rules
from smartsyncd.client.wire import Snapshot
from smartsyncd.core.ignore import EngagementRules


@dataclass
class CloneStart:
    """What a clone starts from: its snapshot, the engagement's rules (``answered``: from an
    answer, to be kept) and the first small files' chunks the server picked (``early``:
    possibly still coming; empty when it picked none)."""

    snapshot: Snapshot
    rules: EngagementRules | None
    answered: bool
    early: Deferred[dict[str, bytes]]
    declined: bool  # the server picked none: ``chunks`` asks for them

    def chunks(self, api: Server, engagement: str, writes: list[Write],
               window_bytes: int) -> Deferred[dict[str, bytes]] | None:
        """The first small files' chunks on their way: the server's pick, or asked now."""
        if self.declined:
            return ask_first_chunks(api, engagement, writes, window_bytes)
        return self.early


async def start_clone(api: Server, engagement: str, window_bytes: int) -> CloneStart:
    """Ask the snapshot, the first chunks and the rules (see the module's docstring)."""
    early = Deferred.fromCoroutine(
        api.first_chunks(engagement, PARTIAL_MIN, window_bytes, GROUP_FILES))
    asked: list[Deferred[tuple[EngagementRules | None, bool]]] = []
    declined: list[bool] = []

    def ask_rules() -> Deferred[tuple[EngagementRules | None, bool]]:
        if not asked:
            asked.append(Deferred.fromCoroutine(
                first_rules(partial(api.ignore_rules, engagement))))
        return asked[0]

    def picked(got: dict[str, bytes]) -> dict[str, bytes]:
        if not got:
            declined.append(True)
            ask_rules()  # on the connection this answer freed
        return got

    early.addCallback(picked)
    try:
        snapshot = await api.snapshot(engagement, chunks=True)
        rules, answered = await ask_rules()
    except BaseException:
        drop_asked(early)
        if asked:
            drop_asked(asked[0])
        raise
    return CloneStart(snapshot, rules, answered, early, bool(declined))
