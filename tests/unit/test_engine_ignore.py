"""Ignore rules through ``SyncCopy`` and the real server Site in memory (the ``server``
fixture): ignored files never upload, a local delete of an ignored file never deletes it on the
server, a remote change to it is never written, and ``status`` lists what it ignores."""

from __future__ import annotations

from pathlib import Path

from clientkit import ENG, MemoryServer, driven, files_of

from smartsyncd.client.http import ServerAPI
from smartsyncd.client.serverrules import RulesAnswer
from smartsyncd.core.ignore import rules_digest, rules_etag


class RulesWatchingAPI(ServerAPI):
    """The real API, noting each rules request's ETag and whether the set had changed."""

    asked: list[tuple[str | None, bool]]

    async def ignore_rules(self, eng: str, etag: str | None) -> RulesAnswer:
        answer = await super().ignore_rules(eng, etag)
        self.asked = [*getattr(self, "asked", []), (etag, answer.changed)]
        return answer


@driven
async def test_ignored_files_never_upload_delete_or_get_written(
    server: MemoryServer, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    b = await server.clone(b_api, b_dir)

    (a_dir / ".smartsyncignore").write_text("drafts/\n")
    (a_dir / "Ledger.xlsx").write_bytes(b"ledger v1")
    (a_dir / "~$Ledger.xlsx").write_bytes(b"excel owner file")
    (a_dir / "Thumbs.db").write_bytes(b"thumbnails")
    (a_dir / "drafts").mkdir()
    (a_dir / "drafts" / "idea.xlsx").write_bytes(b"not for the file")
    report = await a.sync(a_api)
    assert report.uploaded == 2  # Ledger.xlsx and the rules file itself

    status = await a.status(a_api)
    assert status.ignored == ["Thumbs.db", "drafts/", "~$Ledger.xlsx"]
    assert status.ignored_by == {
        "Thumbs.db": "built-in", "drafts/": ".smartsyncignore", "~$Ledger.xlsx": "built-in"}
    assert status.to_json()["ignored"][1] == {"path": "drafts/", "rules": ".smartsyncignore"}
    assert status.clean

    await b.sync(b_api)
    assert sorted(files_of(b_dir)) == [".smartsyncignore", "Ledger.xlsx"]

    # a file synced before a rule named it: from then on it is outside the sync both ways
    (b_dir / "notes.bak").write_bytes(b"notes v1")
    await b.sync(b_api)
    await a.sync(a_api)
    assert (a_dir / "notes.bak").read_bytes() == b"notes v1"
    (a_dir / ".smartsyncignore").write_text("drafts/\n*.bak\n")
    await a.sync(a_api)
    await b.sync(b_api)  # b receives the new rule

    (a_dir / "notes.bak").unlink()
    report = await a.sync(a_api)
    assert report.deleted_remote == 0 and report.uploaded == 0
    (b_dir / "notes.bak").write_bytes(b"notes v2 by bob")
    report = await b.sync(b_api)
    assert report.uploaded == 0
    assert (b_dir / "notes.bak").read_bytes() == b"notes v2 by bob"
    report = await a.sync(a_api)
    assert report.downloaded == 0 and not (a_dir / "notes.bak").exists()

    # the server still holds the last synced notes.bak; a fresh clone receives what the server
    # holds (the rules it brings apply from its next sync)
    c_dir = tmp_path / "c"
    await server.clone(await server.api("alice"), c_dir)
    assert (c_dir / "notes.bak").read_bytes() == b"notes v1"
    for copy in (a, b):
        copy.close()


@driven
async def test_engagement_rules_keep_files_local_both_ways(
    server: MemoryServer, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    b = await server.clone(b_api, b_dir)
    (a_dir / "draft.bak").write_bytes(b"alice's draft")  # before the rule: it uploads
    (a_dir / "notes.bak").write_bytes(b"alice's notes")
    assert (await a.sync(a_api)).uploaded == 2
    await server.env.store.set_ignore_rules(ENG, "*.bak\n", actor="local:alice")

    (b_dir / "draft.bak").write_bytes(b"bob's draft")
    (b_dir / "B-1.txt").write_bytes(b"cash")
    report = await b.sync(b_api)  # fetches the rules: the pull writes no .bak file
    assert (report.uploaded, report.skipped, report.downloaded) == (1, [], 0), report
    assert not (b_dir / "notes.bak").exists()
    assert (b_dir / "draft.bak").read_bytes() == b"bob's draft"
    assert "*.bak" in (b_dir / ".smartsync" / "engagement-ignore.json").read_text()
    # a later `smartsync status` (a new process) applies the rules the last sync fetched
    fresh = server.open(b_dir, exclusive=False)
    status = await fresh.status(b_api)
    assert "draft.bak" in status.ignored and status.clean, status
    assert status.ignored_by["draft.bak"] == "engagement"
    fresh.close()

    (a_dir / "draft.bak").unlink()  # a's own sync now knows the rule: this deletes nothing
    assert (await a.sync(a_api)).deleted_remote == 0
    (b_dir / "draft.bak").unlink()
    (a_dir / "notes.bak").write_bytes(b"alice's notes v2")
    await a.sync(a_api)
    report = await b.sync(b_api)
    assert report.deleted_remote == 0 and not (b_dir / "notes.bak").exists()
    assert (a_dir / "notes.bak").read_bytes() == b"alice's notes v2"


@driven
async def test_a_clone_applies_the_engagement_rules_and_later_syncs_ask_only_when_they_change(
    server: MemoryServer, tmp_path: Path
) -> None:
    a_api = await server.api("alice")
    a_dir, c_dir = tmp_path / "a", tmp_path / "c"
    a = await server.clone(a_api, a_dir)
    (a_dir / "memo.txt").write_bytes(b"memo")
    (a_dir / "draft.bak").write_bytes(b"committed before the rule")
    (a_dir / "old.bak").mkdir()  # a folder: "*.bak" ignores it as a folder too
    assert (await a.sync(a_api)).uploaded == 3  # two files and the folder
    await server.env.store.set_ignore_rules(ENG, "*.bak\n", actor="local:alice")

    c_api = await server.api("bob", kind=RulesWatchingAPI)
    c = await server.clone(c_api, c_dir)  # its first pull already knows the rules
    assert files_of(c_dir) == {"memo.txt": b"memo"} and not (c_dir / "old.bak").exists()
    tag = rules_etag(rules_digest("*.bak\n"))
    assert c_api.asked == [(None, True)]
    (c_dir / "mine.bak").write_bytes(b"bob's own draft")
    report = await c.sync(c_api)  # the report's answer names the same rules: no request
    assert (report.uploaded, report.downloaded, report.skipped) == (0, 0, []), report
    assert c_api.asked == [(None, True)]

    await server.env.store.set_ignore_rules(ENG, None, actor="local:alice")
    report = await c.sync(c_api)  # the report names other rules: fetched, mine.bak uploads
    assert c_api.asked[-1] == (tag, True) and report.uploaded == 1, report
    assert (await c.sync(c_api)).uploaded == 0 and len(c_api.asked) == 2
    for copy in (a, c):
        copy.close()


@driven
async def test_rules_newer_than_the_kept_set_apply_before_anything_is_pushed(
    server: MemoryServer, tmp_path: Path
) -> None:
    a_api = await server.api("alice")
    a_dir = tmp_path / "a"
    a = await server.clone(a_api, a_dir)
    (a_dir / "old.bak").write_bytes(b"stored before the rule")
    assert (await a.sync(a_api)).uploaded == 1  # keeps "no rules"
    await server.env.store.set_ignore_rules(ENG, "*.bak\n", actor="local:alice")
    (a_dir / "draft.bak").write_bytes(b"draft")
    (a_dir / "old.bak").unlink()
    (a_dir / "memo.txt").write_bytes(b"memo")
    # the report's answer names the new rules' ETag: fetched and scanned again before the push
    report = await a.sync(a_api)
    assert (report.uploaded, report.deleted_remote, report.skipped) == (1, 0, []), report
    assert not report.partial and (a_dir / "draft.bak").read_bytes() == b"draft"
    fresh = server.open(a_dir, exclusive=False)
    assert (await fresh.status(a_api)).ignored_by["draft.bak"] == "engagement"
    fresh.close()
    a.close()
