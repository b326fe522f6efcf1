"""The push of empty folders (folder entries, issue 16) with the real copy state and scanner:
an entry travels by its id alone, and a server older than folder entries (``409
unknown_content`` for it) leaves the folder local and reported while the rest is committed."""

from __future__ import annotations

from test_push_refusals import ScriptedServer, copy, paths, push

from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import UnknownContent
from smartsyncd.core.model import FOLDER_CONTENT

__all__ = ["copy"]  # the fixture


def test_empty_folders_travel_by_id_and_only_the_innermost(copy: SyncCopy) -> None:
    (copy.directory / "Permanent/Tax").mkdir(parents=True)
    (copy.directory / "Current").mkdir()
    (copy.directory / "Current/a.txt").write_bytes(b"a")
    api = ScriptedServer()
    report = push(copy, api)
    sent = {c.path: c for c in api.commits[0]}
    assert set(sent) == {"Permanent/Tax", "Current/a.txt"}  # Permanent and Current are implied
    tax = sent["Permanent/Tax"]
    assert (tax.content, tax.size, tax.manifest, tax.delta) == (FOLDER_CONTENT, 0, None, None)
    assert report.uploaded == 2
    assert copy.state.all_files()["Permanent/Tax"].content == FOLDER_CONTENT
    again = ScriptedServer()
    push(copy, again)
    assert again.commits == []  # synced: nothing to send


def test_a_server_without_folder_entries_leaves_the_folder_local(copy: SyncCopy) -> None:
    (copy.directory / "Tax").mkdir()
    (copy.directory / "a.txt").write_bytes(b"a")
    old_server = UnknownContent("unknown_content", "no manifest for 'Tax'", 409, {"path": "Tax"})
    api = ScriptedServer(old_server)
    report = push(copy, api)
    assert [sorted(paths(c)) for c in api.commits] == [["Tax", "a.txt"], ["a.txt"]]
    assert report.skipped == [("Tax", "the server does not sync empty folders")]
    assert set(copy.state.all_files()) == {"a.txt"}
    assert (copy.directory / "Tax").is_dir()
