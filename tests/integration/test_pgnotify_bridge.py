"""The LISTEN/NOTIFY bridge against a real PostgreSQL: a commit made through one store reaches
the bridge's ``notify``; a dropped listening connection is re-established and every head is
delivered again (so a notification sent while it was away is not lost). Here, not in
tests/unit: the bridge and the store run on the real reactor and its threads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import pytest_twisted
from pg import PgCluster
from twisted.internet import reactor
from twisted.internet.task import deferLater

from smartsyncd.core.manifest import content_id
from smartsyncd.core.model import ProposedChange
from smartsyncd.service.pgnotify import PgNotifyBridge
from smartsyncd.storage.api import PutManifest
from smartsyncd.storage.sqlite import open_server_store

pytestmark = pytest.mark.integration

EMPTY = content_id(())


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_commits_reach_the_bridge_and_survive_a_lost_connection(pg: PgCluster, tmp_path) -> None:
    db = pg.create_database()
    url = pg.url(db)
    store = await open_server_store(str(tmp_path), reactor=reactor, database_url=url)
    seen: list[tuple[int, int]] = []
    bridge = PgNotifyBridge(url, lambda e, h: seen.append((e, h)), reactor)
    try:
        eid = (await store.create_engagement("acme", "")).id

        async def commit(path: str) -> int:
            result = await store.commit(
                eid, "alice", None, f"b-{path}",
                [ProposedChange(path=path, kind="put", base=None, content=EMPTY, size=0)],
                {path: PutManifest(content=EMPTY, chunks=())}, datetime.now(UTC),
            )
            return result.head

        bridge.startService()
        await until(bridge.listening.is_set, "LISTEN")
        assert (eid, 0) in seen  # the heads read at connection time
        head = await commit("a.txt")
        await until(lambda: (eid, head) in seen, "the notification of the commit")

        # the listening connection is cut; a commit lands while the bridge is away
        seen.clear()
        pg.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{db}' AND application_name = 'smartsyncd-notify'"
        )
        await until(lambda: not bridge.listening.is_set(), "the bridge to notice")
        head = await commit("b.txt")
        await until(lambda: (eid, head) in seen, "the head after reconnecting")
        await until(bridge.listening.is_set, "LISTEN again")
    finally:
        await bridge.stopService()
        await store.close()
    assert not bridge.listening.is_set()
