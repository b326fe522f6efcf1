"""Issue 7 client paths through the real daemon: many small files in a few compact requests
(no pull of the copy's own commit back), another copy's commit in between still pulled, and a
download cut mid-way that resumes without fetching again the chunks it already wrote."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from twisted.internet import reactor
from twisted.protocols import portforward

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import NetworkError
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = running_daemon(tmp_path_factory.mktemp("bulk"))
    try:
        d.add_user("alice", PASSWORD)
        yield d
    finally:
        d.stop()


_count = iter(range(1, 1000))


def new_engagement(server: Daemon) -> str:
    return server.new_engagement(f"b-{next(_count)}", editors=["alice"])


async def connect(server: Daemon, url: str | None = None, **kw: object) -> ServerAPI:
    api = ServerAPI(url or server.url, reactor=reactor, policy=PinnedPolicy(server.fingerprint), **kw)  # type: ignore[arg-type]
    await api.login("alice", PASSWORD)
    return api


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*") if p.is_file() and ".smartsync" not in p.relative_to(root).parts
    }


@pytest_twisted.ensureDeferred
async def test_small_files_travel_in_a_few_compact_requests(server: Daemon, tmp_path: Path) -> None:
    eng = new_engagement(server)
    api = await connect(server)
    try:
        a = await SyncCopy.clone(api, eng, tmp_path / "a")
        rng = random.Random(1)
        n, size = 300, 4096
        for i in range(n):
            folder = tmp_path / "a" / f"folder{i % 20:02d}"
            folder.mkdir(exist_ok=True)
            (folder / f"file{i:04d}.bin").write_bytes(rng.randbytes(size))
        sent0, received0, requests0 = api.bytes_sent, api.bytes_received, api.requests
        report = await a.sync(api)
        assert report.uploaded == n and report.unsynced == 0
        sent, received = api.bytes_sent - sent0, api.bytes_received - received0
        # bodies on the wire: the payload (random, incompressible) plus chunk record headers
        # (41 B each) plus the compressed commit and missing query; before issue 7's compact
        # forms this was about 1.16 x payload
        assert sent <= n * size * 1.04, sent
        # the answers: compressed index list and commit results; the copy's own changes
        # are not pulled back
        assert received <= 20_000, received
        assert api.requests - requests0 <= 8
        assert report.last_seq == (await api.changes(eng, 0, 1))[0]

        # another copy gets them all, and a commit of B between A's syncs is still pulled
        b = await SyncCopy.clone(api, eng, tmp_path / "b")
        assert files(tmp_path / "b") == files(tmp_path / "a")
        (tmp_path / "b" / "folder00" / "file0000.bin").write_bytes(b"edited in b")
        await b.sync(api)
        (tmp_path / "a" / "new in a.txt").write_bytes(b"new")
        report = await a.sync(api)
        assert report.uploaded == 1 and report.downloaded == 1
        assert (tmp_path / "a" / "folder00" / "file0000.bin").read_bytes() == b"edited in b"
        await b.sync(api)
        assert files(tmp_path / "b") == files(tmp_path / "a")
        a.close()
        b.close()
    finally:
        await api.close()


class _CuttingServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        if self.factory.cut:  # type: ignore[attr-defined]
            self.transport.loseConnection()
            return
        super().connectionMade()


class _CuttingClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        factory = self.factory.outer  # type: ignore[attr-defined]
        factory.down += len(data)
        super().dataReceived(data)
        if factory.down >= factory.cap and not factory.cut:
            # cut every connection and refuse new ones: the pull fails mid-way
            factory.cut = True
            for proto in list(factory.open):
                proto.transport.abortConnection()


class _CuttingClientFactory(portforward.ProxyClientFactory):
    protocol = _CuttingClient


class CuttingProxy(portforward.ProxyFactory):
    """Forwards to the daemon until ``cap`` bytes went to the client, then cuts everything."""

    protocol = _CuttingServer

    def __init__(self, port: int, cap: int) -> None:
        super().__init__("127.0.0.1", port)
        self.cap = cap
        self.down = 0
        self.cut = False
        self.open: set[portforward.ProxyServer] = set()
        outer = self

        class _Server(_CuttingServer):
            clientProtocolFactory = type("_F", (_CuttingClientFactory,), {"outer": outer})

            def connectionMade(self) -> None:
                outer.open.add(self)
                super().connectionMade()

            def connectionLost(self, reason: object) -> None:
                outer.open.discard(self)
                super().connectionLost(reason)  # type: ignore[arg-type]

        self.protocol = _Server


@pytest_twisted.ensureDeferred
async def test_a_cut_download_resumes_without_refetching_what_it_has(
    server: Daemon, tmp_path: Path
) -> None:
    eng = new_engagement(server)
    api = await connect(server)
    size = 24 * MiB
    data = random.Random(2).randbytes(size)
    try:
        a = await SyncCopy.clone(api, eng, tmp_path / "a")
        b = await SyncCopy.clone(api, eng, tmp_path / "b", window_bytes=2 * MiB)
        b.close()
        (tmp_path / "a" / "ledger.db").write_bytes(data)
        await a.sync(api)
        a.close()
    finally:
        await api.close()

    proxy = CuttingProxy(server.port, cap=12 * MiB)
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    cut = await connect(server, f"https://127.0.0.1:{port.getHost().port}", max_attempts=1,
                        backoff=Backoff(initial=0.01, maximum=0.01))
    b = SyncCopy.open(tmp_path / "b", window_bytes=2 * MiB)
    try:
        with pytest.raises(NetworkError):
            await b.sync(cut)
        assert proxy.cut
        assert not (tmp_path / "b" / "ledger.db").exists()
        [partial] = (tmp_path / "b" / ".smartsync" / "partial").iterdir()
        kept = partial.stat().st_size
        assert kept >= 6 * MiB, kept  # windows of 2 MiB written before the cut
    finally:
        await cut.close()
        await port.stopListening()

    direct = await connect(server)
    try:
        report = await b.sync(direct)
        assert report.downloaded == 1
        assert (tmp_path / "b" / "ledger.db").read_bytes() == data
        # only what was not in the partial file travelled again (plus a chunk or two of slack
        # for the one cut mid-write)
        assert report.bytes_received <= size - kept + 512 * 1024, (report.bytes_received, kept)
        assert not any((tmp_path / "b" / ".smartsync" / "partial").iterdir())
        assert files(tmp_path / "b") == {"ledger.db": data}
    finally:
        b.close()
        await direct.close()
