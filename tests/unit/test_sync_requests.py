"""Requests per sync (issue 15, "fewer bytes per small sync"): the real client and the real
server Site in memory (tests/unit/clientkit.py), each request the client sends recorded.

A no-op sync is one request (the copy report, whose answer says the log's head); a small edit
sync is one request too (the commit carries the report and what the copy assumed,
client/onerequest.py), compressed when that makes it smaller; a server older than both (it
ignores the fields it does not know) gets the old flow, with nothing lost.

When an assumption no longer holds (another user's lock, a finalized engagement, new ignore
rules), the commit is refused with what the report alone would have answered and the sync goes
on from there exactly as after a report: the same outcome and user message, no request more.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from clientkit import MemoryServer, driven
from twisted.web.resource import Resource
from twisted.web.server import Request
from webkit import PASSWORD

from smartsyncd.client.errors import CopyAbandoned, SessionExpired, WipeOrdered
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.onerequest import OFFER_NAME
from smartsyncd.client.wire import CommitChange, ManifestDelta, encode_commit
from smartsyncd.core import bodycodec
from smartsyncd.storage.api import Grant
from smartsyncd.web.copyreport import ReportAnswers


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
            if request.getHeader(b"content-encoding") == b"zstd":  # a small commit may be
                raw = bodycodec.decode(raw, "zstd", 1 << 20)
                request.requestHeaders.removeHeader(b"content-encoding")
            body = json.loads(raw)
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
async def test_an_edit_sync_is_one_request(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    notes = tmp_path / "a" / "notes.txt"
    notes.write_bytes(b"first version\n" * 50)
    assert (await copy.sync(api)).uploaded == 1
    # the last report offered it: a small new file's chunks and the report ride in the commit
    assert api.take() == ["POST commit"]
    notes.write_bytes(b"second version\n" * 50)
    report = await copy.sync(api)
    assert report.uploaded == 1 and report.unsynced == 0
    # no report, no upload, no changes feed: the commit was the head by itself
    assert api.take() == ["POST commit"]
    copies = await server.env.store.list_copies(server.env.alpha)
    assert [(c.copy_id, c.unsynced) for c in copies] == [(copy.copy_id, 0)]
    assert (await copy.sync(api)).uploaded == 0
    assert api.take() == ["POST report"]
    (_head, changes) = await server.env.store.changes_since(server.env.alpha, 0, 10)
    assert [(c.path, c.size) for c in changes] == [("notes.txt", 700), ("notes.txt", 750)]


@driven
async def test_an_upload_over_the_inline_limit_goes_ahead(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    big = tmp_path / "a" / "big.bin"
    big.write_bytes(b"")
    await copy.sync(api)
    api.take()
    big.write_bytes(os.urandom(40 * 1024))  # over the 32 KiB a commit may carry, encoded
    assert (await copy.sync(api)).uploaded == 1
    # found too large once encoded: nothing went before the report
    assert api.take() == ["POST report", "POST chunks", "POST commit"]


@driven
async def test_an_edit_inside_a_large_chunk_is_one_request(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    module = tmp_path / "a" / "module.py"
    lines = [b"def f%d(x):\n    return x + %d\n" % (i % 50, i % 7) for i in range(3000)]
    module.write_bytes(b"".join(lines))  # about 80 KB: over 32 KiB raw, small once encoded
    await copy.sync(api)
    api.take()
    lines[1500] = b"def changed(x):\n    return x\n"
    module.write_bytes(b"".join(lines))
    report = await copy.sync(api)
    assert report.uploaded == 1 and report.unsynced == 0
    # the server counts what a commit carries as sent: no report and no upload first
    assert api.take() == ["POST commit"]
    assert (tmp_path / "a" / "module.py").read_bytes() == b"".join(lines)


@driven
async def test_a_server_that_counts_raw_bytes_gets_the_large_chunk_uploaded_first(
    server: MemoryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = ReportAnswers.answer

    async def without_raw(self: ReportAnswers, *a: Any, **kw: Any) -> Any:
        body = await answer(self, *a, **kw)
        body.pop("inline_raw", None)  # as main's server before issue 15's s12 answered
        return body

    monkeypatch.setattr(ReportAnswers, "answer", without_raw)
    copy, api = await _copy(server, tmp_path, "a")
    module = tmp_path / "a" / "module.py"
    lines = [b"def f%d(x):\n    return x + %d\n" % (i % 50, i % 7) for i in range(3000)]
    module.write_bytes(b"".join(lines))
    await copy.sync(api)
    api.take()
    lines[1500] = b"def changed(x):\n    return x\n"
    module.write_bytes(b"".join(lines))
    assert (await copy.sync(api)).uploaded == 1
    assert api.take() == ["POST report", "POST chunks", "POST commit"]  # its limit is raw


@driven
async def test_a_new_file_of_a_few_kib_is_one_request(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    await copy.sync(api)
    api.take()
    text = os.urandom(2000).hex().encode()  # 4 KB: over the 2 KiB left to the push before
    (tmp_path / "a" / "changes.rst").write_bytes(text)
    assert (await copy.sync(api)).uploaded == 1
    # left to the push (not uploaded while the scan went on): it rides in the commit
    assert api.take() == ["POST commit"]


class BodyAPI(RecordingAPI):
    """Also keeps the report each commit carried."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.folded: list[dict[str, Any]] = []

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        if path.endswith("/commit"):
            data, encoding = kw["data"], kw.get("encoding")
            if encoding is not None:
                data = bodycodec.decode(data, "zstd", 1 << 22)
            self.folded.append(json.loads(data)["report"])
        return await super()._request(method, path, **kw)


@pytest.mark.parametrize("keyed", [True, False])
@driven
async def test_a_commit_names_the_key_hash_until_the_server_says_it_has_it(
    server: MemoryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    if not keyed:  # a server from before issue 15's s12: it never says so
        answer = ReportAnswers.answer

        async def unkeyed(self: ReportAnswers, *a: Any, **kw: Any) -> Any:
            body = await answer(self, *a, **kw)
            body.pop("keyed", None)
            return body

        monkeypatch.setattr(ReportAnswers, "answer", unkeyed)
    api: BodyAPI = await server.api("alice", BodyAPI)
    copy = await server.clone(api, tmp_path / "a")
    await copy.sync(api)  # a report alone: it names the key hash
    (tmp_path / "a" / "notes.txt").write_bytes(b"an edit\n")
    assert (await copy.sync(api)).uploaded == 1
    assert api.take()[-1:] == ["POST commit"]
    assert ("key_hash" in api.folded[-1]) is not keyed
    assert len(api.folded[-1].get("key_hash", "ab" * 32)) == 64


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


# -- a commit that carries the report, refused: the sync goes on as after a report -------------


async def _log(server: MemoryServer) -> list[tuple[str, str]]:
    _head, changes = await server.env.store.changes_since(server.env.alpha, 0, 100)
    return [(c.path, c.user) for c in changes]


async def _unsynced(server: MemoryServer) -> list[int]:
    return [c.unsynced for c in await server.env.store.list_copies(server.env.alpha)]


@driven
async def test_a_file_another_user_checked_out_waits_as_after_a_report(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    notes = tmp_path / "a" / "notes.txt"
    notes.write_bytes(b"v1\n")
    await copy.sync(api)
    bob = await server.api("bob")
    await bob.checkout("alpha", "notes.txt")
    api.take()
    notes.write_bytes(b"v2, while bob has it\n")
    (tmp_path / "a" / "other.txt").write_bytes(b"not locked\n")
    report = await copy.sync(api)
    # the commit refused with the report's answer (nothing applied), then the push it lets
    # the sync decide: two requests, as a report and a commit were
    assert api.take() == ["POST commit", "POST commit"]
    assert report.locked == ["notes.txt"] and report.uploaded == 1 and report.unsynced == 1
    [(path, why)] = report.skipped
    # the message of the report's locks (client/contact.py), not the commit's refusal
    assert path == "notes.txt" and why.startswith("checked out by bob since")
    assert why.endswith("; kept locally until check-in")
    assert await _log(server) == [("notes.txt", "alice"), ("other.txt", "alice")]
    assert notes.read_bytes() == b"v2, while bob has it\n"
    assert await _unsynced(server) == [1]


@driven
async def test_a_finalized_engagement_keeps_the_edit_local_in_one_request(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    notes = tmp_path / "a" / "notes.txt"
    notes.write_bytes(b"v1\n")
    await copy.sync(api)
    api.take()
    await server.env.store.finalize(server.env.alpha, "admin:root", "signed off", True)
    notes.write_bytes(b"too late\n")
    report = await copy.sync(api)
    assert api.take() == ["POST commit"]  # refused: the report's answer says finalized
    assert report.refused is not None and report.refused.startswith("the engagement was finalized")
    assert report.unsynced == 1 and report.uploaded == 0
    assert await _log(server) == [("notes.txt", "alice")]
    assert notes.read_bytes() == b"too late\n"
    assert await _unsynced(server) == [1]  # recorded as the report alone would have been


@driven
async def test_new_engagement_rules_are_fetched_before_anything_is_pushed(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    await server.env.store.set_ignore_rules("alpha", "*.tmp\n")
    (tmp_path / "a" / "scratch.tmp").write_bytes(b"scratch\n")
    (tmp_path / "a" / "a.txt").write_bytes(b"work\n")
    report = await copy.sync(api)
    # refused (the rules moved), the new rules fetched, the folder scanned again, then pushed
    assert api.take() == ["POST commit", "GET ignore", "POST commit"]
    assert report.uploaded == 1 and report.skipped == [] and report.unsynced == 0
    assert await _log(server) == [("a.txt", "alice")]


@driven
async def test_a_wipe_order_answers_the_commit_and_nothing_is_committed(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    await server.env.store.order_wipe(server.env.alpha, copy.copy_id, "admin:root")
    (tmp_path / "a" / "a.txt").write_bytes(b"work\n")
    with pytest.raises(WipeOrdered):
        await copy.sync(api)
    assert api.take() == ["POST commit"]
    assert await _log(server) == []
    # the next sync reports first, as before the offer (client/onerequest.py)
    assert not (tmp_path / "a" / ".smartsync" / OFFER_NAME).exists()


@driven
async def test_a_server_that_stops_offering_it_is_asked_the_old_way(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    assert (tmp_path / "a" / ".smartsync" / OFFER_NAME).exists()
    site = server.env.stub.site
    site.resource = OlderServer(site.resource)  # the daemon downgraded
    (tmp_path / "a" / "notes.txt").write_bytes(b"an edit\n")
    assert (await copy.sync(api)).uploaded == 1
    # it ignored what it did not know: the commit applied, and no "reported" in its answer
    assert api.take() == ["POST commit", "POST report"]
    assert not (tmp_path / "a" / ".smartsync" / OFFER_NAME).exists()
    (tmp_path / "a" / "notes.txt").write_bytes(b"a second edit\n")
    assert (await copy.sync(api)).uploaded == 1
    assert api.take() == ["POST report", "POST chunks", "POST commit", "POST report"]
    assert await _unsynced(server) == [0]


@driven
async def test_an_abandoned_copy_commits_nothing(server: MemoryServer, tmp_path: Path) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    await server.env.store.abandon_copy(server.env.alpha, copy.copy_id, "admin:root")
    (tmp_path / "a" / "a.txt").write_bytes(b"work\n")
    with pytest.raises(SessionExpired):  # its session ended with it, as its report would hear
        await copy.sync(api)
    assert api.take() == ["POST commit"]
    assert await _log(server) == []
    # signed in again, the commit is refused for the copy: the offer goes, the next sync reports
    api.token = await api.login("alice", PASSWORD)
    api.take()
    with pytest.raises(CopyAbandoned):
        await copy.sync(api)
    assert api.take() == ["POST commit"]
    assert await _log(server) == []
    assert not (tmp_path / "a" / ".smartsync" / OFFER_NAME).exists()
    with pytest.raises(CopyAbandoned):
        await copy.sync(api)
    assert api.take() == ["POST report"]


@driven
async def test_a_user_made_a_reader_since_the_last_report_is_told_as_before(
    server: MemoryServer, tmp_path: Path
) -> None:
    copy, api = await _copy(server, tmp_path, "a")
    await server.env.store.grant(Grant("alpha", "user", "local:alice", "alice", "reader"))
    (tmp_path / "a" / "a.txt").write_bytes(b"work\n")
    report = await copy.sync(api)
    # refused for the role: the report it skipped, then the push it decides, as before
    assert api.take() == ["POST commit", "POST report", "POST commit"]
    assert report.refused is not None and "reader" in report.refused and report.unsynced == 1
    assert await _log(server) == [] and await _unsynced(server) == [1]
    # a reader's report offers nothing: from now on it reports first
    assert not (tmp_path / "a" / ".smartsync" / OFFER_NAME).exists()
    await copy.sync(api)
    assert api.take() == ["POST report", "POST commit"]


def test_a_small_commit_goes_compressed_when_that_is_smaller() -> None:
    ids = [secrets.token_hex(32) for _ in range(4)]  # hex ids, as random as real ones
    edit = CommitChange("x.py", "put", 1, ids[0], 3007,
                        delta=ManifestDelta(ids[1], [["add", [[ids[2], 3007]]]]))
    history = {"seq": 1, "hash": ids[3], "store": str(uuid.uuid4()), "generation": 1}
    plain, none = encode_commit(str(uuid.uuid4()), [edit], history, compress=False)
    data, encoding = encode_commit(str(uuid.uuid4()), [edit], history, compress=True)
    assert none is None and encoding == b"zstd" and len(plain) < bodycodec.MIN_COMPRESS
    assert len(data) + len(b"Content-Encoding: zstd\r\n") < len(plain) * 0.85
    assert json.loads(bodycodec.decode(data, "zstd", 1 << 20))["changes"] == [edit.to_json()]
    tiny, encoding = encode_commit("b", [CommitChange.delete("a.txt", 1)], None, compress=True)
    assert encoding is None and json.loads(tiny)["changes"][0]["path"] == "a.txt"
