"""Requests per sync (issue 15, "fewer bytes per small sync"): the real client and the real
server Site in memory (tests/unit/clientkit.py), each request the client sends recorded.

A no-op sync is one request (the copy report, whose answer says the log's head); an edit
sync's report after the push rides in the commit; a server older than both (it ignores the
fields it does not know) gets today's flow, with nothing lost.
"""

from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path
from typing import Any

from clientkit import MemoryServer, driven
from twisted.web.resource import Resource
from twisted.web.server import Request

from smartsyncd.client.http import ServerAPI


class RecordingAPI(ServerAPI):
    """The real ServerAPI; remembers each request's method and last path segment."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append(f"{method} {path.rsplit('/', 1)[-1]}")
        return await super()._request(method, path, **kw)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


class OlderServer(Resource):
    """The same app as a server from before issue 15 sees a request: the fields it did not
    know (a report's ``history``, a commit's ``report``) are taken out before it reads it."""

    isLeaf = True

    def __init__(self, app: Resource) -> None:
        super().__init__()
        self.app = app

    def render(self, request: Request) -> Any:
        path = request.path.rstrip(b"/")
        if request.method == b"POST" and (path.endswith(b"/report") or path.endswith(b"/commit")):
            raw = request.content.read()
            body = json.loads(raw)  # small commits go uncompressed
            body.pop("history" if path.endswith(b"/report") else "report", None)
            request.content = BytesIO(json.dumps(body).encode())
        return self.app.render(request)


async def _copy(server: MemoryServer, tmp_path: Path, name: str) -> tuple[Any, RecordingAPI]:
    api: RecordingAPI = await server.api("alice", RecordingAPI)
    copy = await server.clone(api, tmp_path / name)
    await copy.sync(api)
    api.take()
    return copy, api


@driven
async def test_a_no_op_sync_is_one_request(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    report = await copy.sync(api)
    assert api.take() == ["POST report"]
    assert report.unsynced == 0 and report.downloaded == 0


@driven
async def test_an_edit_sync_reports_in_its_commit(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    notes = tmp_path / "a" / "notes.txt"
    notes.write_bytes(b"first version\n" * 50)
    assert (await copy.sync(api)).uploaded == 1
    # a small new file's chunks go in the commit (client/inline.py), as does the report after
    assert api.take() == ["POST report", "POST commit"]
    notes.write_bytes(b"second version\n" * 50)
    report = await copy.sync(api)
    assert report.uploaded == 1 and report.unsynced == 0
    # no upload, no second report, no changes feed: the commit was the head by itself
    assert api.take() == ["POST report", "POST commit"]
    copies = await server.env.store.list_copies(server.env.alpha)
    assert [(c.copy_id, c.unsynced) for c in copies] == [(copy.copy_id, 0)]
    assert (await copy.sync(api)).uploaded == 0
    assert api.take() == ["POST report"]


@driven
async def test_an_upload_over_the_inline_limit_goes_ahead(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    big = tmp_path / "a" / "big.bin"
    big.write_bytes(b"")
    await copy.sync(api)
    api.take()
    big.write_bytes(os.urandom(40 * 1024))  # over the 32 KiB a commit may carry
    assert (await copy.sync(api)).uploaded == 1
    assert api.take() == ["POST report", "POST chunks", "POST commit"]


@driven
async def test_a_remote_change_is_still_pulled(server: MemoryServer, tmp_path: Path) -> None:
    a, a_api = await _copy(server, tmp_path, "a")
    b, b_api = await _copy(server, tmp_path, "b")
    (tmp_path / "a" / "x.txt").write_bytes(b"from a\n")
    await a.sync(a_api)
    report = await b.sync(b_api)
    assert report.downloaded == 1 and (tmp_path / "b" / "x.txt").read_bytes() == b"from a\n"
    assert b_api.take()[:2] == ["POST report", "GET changes"]
    await b.sync(b_api)
    assert b_api.take() == ["POST report"]


@driven
async def test_an_older_server_gets_the_old_flow(server: MemoryServer, tmp_path: Path) -> None:
    site = server.env.stub.site
    site.resource = OlderServer(site.resource)
    copy, api = await _copy(server, tmp_path, "a")
    assert (await copy.sync(api)).unsynced == 0
    assert api.take() == ["POST report", "GET changes"]  # no head in the report's answer
    (tmp_path / "a" / "notes.txt").write_bytes(b"an edit\n")
    report = await copy.sync(api)
    assert report.uploaded == 1
    # the commit's answer did not say "reported": the report after the push goes alone
    assert api.take() == ["POST report", "POST chunks", "POST commit", "POST report"]
    copies = await server.env.store.list_copies(server.env.alpha)
    assert [c.unsynced for c in copies] == [0]


@driven
async def test_many_tiny_new_files_go_ahead_of_the_commit(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    for i in range(70):  # 70 chunks: over the 64 a commit may carry, under its 32 KiB
        (tmp_path / "a" / f"n{i:02d}.txt").write_bytes(b"note %d\n" % i)
    assert (await copy.sync(api)).uploaded == 70
    assert api.take() == ["POST report", "POST chunks", "POST commit"]
