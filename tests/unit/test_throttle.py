"""Per-account failure counts in the store: the configurable window, on a Clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from smartsyncd.auth.identity import UnknownUser
from smartsyncd.auth.throttle import AccountThrottle
from smartsyncd.core.errors import RateLimited
from smartsyncd.service.config import load_config
from smartsyncd.testing.memory_store import MemoryServerStore


class Resolver:
    name = "dir"

    async def throttle_key(self, user: str) -> str | None:
        if user.strip().casefold() in ("alice", "firm\\alice", "alice@firm.example"):
            return "sid:S-1-5-21-1-2-3-1104"
        raise UnknownUser("not ours")


@pytest_twisted.ensureDeferred
async def test_failures_count_for_the_whole_window_then_expire() -> None:
    clock = Clock()
    clock.advance(1_000_000)
    store = MemoryServerStore()
    throttle = AccountThrottle(store, clock, limit=3, window=1800.0)
    key = await throttle.key_for("FIRM\\alice", [Resolver()])
    assert key == await throttle.key_for(" ALICE@firm.example", [Resolver()])
    assert await throttle.key_for("bob", [Resolver()]) == "name:bob"
    for _ in range(3):
        await throttle.check(key)
        await throttle.record_failure(key)
        clock.advance(60)
    with pytest.raises(RateLimited) as limited:
        await throttle.check(key)
    assert limited.value.details["retry_after"] == 1800 - 180
    clock.advance(1800 - 180 - 1)  # the default 5-minute window would have let it in long ago
    with pytest.raises(RateLimited):
        await throttle.check(key)
    clock.advance(2)
    await throttle.check(key)
    await throttle.record_success(key)
    assert await store.login_failures_since(key, 0, 10) == []


def test_window_is_configurable_and_defaults_to_30_minutes(tmp_path: Path) -> None:
    assert load_config(data_dir=str(tmp_path)).login_failure_window_minutes == 30.0
    ini = tmp_path / "s.ini"
    ini.write_text("[limits]\nlogin_failure_window_minutes = 45\n")
    assert load_config(str(ini), data_dir=str(tmp_path)).login_failure_window_minutes == 45.0
