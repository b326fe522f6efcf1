"""What a branch knows of its standby's replay: lag, engagement heads, and waits on them.

``ReplicaWatcher.poll`` asks the standby one cheap question (``storage/standby.replay_state``:
the replayed WAL position and the lag); only when the position moved does it read the
engagement heads (one small query), wake the long-polls parked behind a head that moved
(``ChangeNotifier.notify``, as the PostgreSQL NOTIFY bridge does on central: LISTEN does not
work on a standby, notifications are not replicated) and fire the waits of ``wait_for_head``
(a commit forwarded to central, answered once it replayed here). ``run`` polls every
``interval`` seconds (0.2 by default: about 5 tiny queries a second, and a replayed commit
wakes the branch's long-polls within that) on the injected clock.

The lag is 0 while the standby has replayed all it received (so an idle central does not read
as lag), else the age of the last replayed transaction. Unit tests drive ``poll`` with a fake
replica and a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="smartsyncd.branch")

POLL_INTERVAL_S = 0.2


class Replica(Protocol):
    async def replay_state(self) -> tuple[str | None, float | None]: ...

    async def engagement_heads(self) -> dict[int, int]: ...


class ReplicaWatcher:
    def __init__(
        self, replica: Replica, notify: Callable[[int, int], None], clock: IReactorTime,
        interval: float = POLL_INTERVAL_S,
    ) -> None:
        self._replica = replica
        self._notify = notify
        self._clock = clock
        self.interval = interval
        self.lsn: str | None = None
        self.lag_seconds: float | None = None
        self.heads: dict[int, int] = {}
        self.healthy = False  # the last poll reached the standby
        self._waits: list[tuple[int, int, Deferred[bool]]] = []
        self._loop: LoopingCall | None = None
        self._running: Deferred[LoopingCall] | None = None

    async def poll(self) -> None:
        """One look at the standby (never raises: a failed look is logged and retried)."""
        try:
            lsn, lag = await self._replica.replay_state()
            self.lag_seconds = lag
            if lsn != self.lsn or not self.heads:
                heads = await self._replica.engagement_heads()
                self.lsn = lsn
                self._moved(heads)
        except Exception as e:  # noqa: BLE001 - the standby may restart; the next poll retries
            if self.healthy:
                log.warn("cannot read the standby's replay state: {error}", error=repr(e))
            self.healthy = False
            return
        self.healthy = True

    def _moved(self, heads: dict[int, int]) -> None:
        before, self.heads = self.heads, heads
        for engagement_id, head in heads.items():
            if before and head > before.get(engagement_id, -1):
                self._notify(engagement_id, head)
        waiting, self._waits = self._waits, []
        for engagement_id, seq, done in waiting:
            if heads.get(engagement_id, -1) >= seq:
                done.callback(True)
            else:
                self._waits.append((engagement_id, seq, done))

    async def wait_for_head(self, engagement_id: int, seq: int, timeout: float) -> bool:
        """True once the standby replayed ``engagement_id`` up to ``seq``; False after
        ``timeout`` seconds (the commit is on central all the same)."""
        if self.heads.get(engagement_id, -1) >= seq:
            return True
        done: Deferred[bool] = Deferred()
        entry = (engagement_id, seq, done)
        self._waits.append(entry)
        timer: IDelayedCall = self._clock.callLater(timeout, self._time_out, entry)
        try:
            return await done
        finally:
            if timer.active():
                timer.cancel()

    def _time_out(self, entry: tuple[int, int, Deferred[bool]]) -> None:
        if entry in self._waits:
            self._waits.remove(entry)
            entry[2].callback(False)

    def start(self) -> None:
        loop = LoopingCall(lambda: Deferred.fromCoroutine(self.poll()))
        loop.clock = self._clock
        self._loop = loop
        self._running = loop.start(self.interval, now=True)

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        running, self._running = self._running, None
        if running is not None:
            await running
        for _, _, done in self._waits:
            done.callback(False)
        self._waits = []


async def poll_until(check: Callable[[], Awaitable[bool]], clock: IReactorTime, timeout: float,
                     interval: float = 0.05) -> bool:
    """Call ``check`` every ``interval`` seconds until it is true (True) or ``timeout`` passed
    (False): for a row central wrote that has no head to wait on (a new session)."""
    deadline = clock.seconds() + timeout
    while True:
        if await check():
            return True
        if clock.seconds() >= deadline:
            return False
        pause: Deferred[None] = Deferred()
        clock.callLater(interval, pause.callback, None)
        await pause
