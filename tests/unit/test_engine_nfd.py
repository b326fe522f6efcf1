"""Decomposed (NFD) names through ``SyncCopy`` and the real server Site in memory
(tests/unit/clientkit.py), on the test machine's own file system (ext4 and tmpfs keep the bytes
of a name as given): the name travels as NFC, keeps its NFD spelling on the copy that made it,
edits and deletes go both ways without a second file or a ping-pong, and an NFC and an NFD name
side by side are never merged."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from clientkit import MemoryServer as Server
from clientkit import driven, files_of

from smartsyncd.client.progress import NullProgress
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import Scanner

NFC = "café.txt"
NFD = unicodedata.normalize("NFD", NFC)
FOLDER_NFD = unicodedata.normalize("NFD", "Déclarations")
FOLDER_NFC = "Déclarations"


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_scanner_reports_a_decomposed_name_under_its_nfc_form(tmp_path: Path) -> None:
    (tmp_path / NFD).write_bytes(b"v1")
    (tmp_path / FOLDER_NFD).mkdir()
    (tmp_path / FOLDER_NFD / "q1.txt").write_bytes(b"q1")
    scanner = Scanner(tmp_path)
    result = scanner.scan({})
    assert sorted(result.entries) == [FOLDER_NFC + "/q1.txt", NFC]
    assert result.skipped == []
    assert result.spellings == {
        NFC: NFD, FOLDER_NFC: FOLDER_NFD, f"{FOLDER_NFC}/q1.txt": f"{FOLDER_NFD}/q1.txt",
    }
    assert scanner.local_name(f"{FOLDER_NFC}/new.txt") == f"{FOLDER_NFD}/new.txt"
    assert scanner.local_name("other.txt") == "other.txt"
    assert scanner.check(NFC, None) is not None  # reads the NFD file by its wire name


def test_both_forms_side_by_side_are_never_merged(tmp_path: Path) -> None:
    (tmp_path / NFC).write_bytes(b"composed")
    (tmp_path / NFD).write_bytes(b"decomposed")
    result = Scanner(tmp_path).scan({})
    assert list(result.entries) == [NFC]
    assert [path for path, _ in result.skipped] == [NFD]
    assert "after Unicode normalization" in result.skipped[0][1]
    # the spelling synced before keeps its place when the other form appears later
    scanner = Scanner(tmp_path)
    scanner.spellings = {NFC: NFD}
    result = scanner.scan({})
    assert result.spellings == {NFC: NFD}
    assert [path for path, _ in result.skipped] == [NFC]


@driven
async def test_nfd_name_syncs_as_nfc_and_keeps_its_spelling(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    b = await server.clone(b_api, b_dir)

    (a_dir / NFD).write_bytes(b"v1 by alice")
    (a_dir / FOLDER_NFD).mkdir()
    (a_dir / FOLDER_NFD / "q1.txt").write_bytes(b"q1 by alice")
    report = await a.sync(a_api)
    assert report.uploaded == 2 and report.skipped == []
    await b.sync(b_api)
    assert files_of(b_dir) == {NFC: b"v1 by alice", f"{FOLDER_NFC}/q1.txt": b"q1 by alice"}
    assert names(b_dir) == sorted([".smartsync", NFC, FOLDER_NFC])

    # bob edits and adds a file in the folder: alice's NFD names are written in place
    (b_dir / NFC).write_bytes(b"v2 by bob")
    (b_dir / FOLDER_NFC / "q2.txt").write_bytes(b"q2 by bob")
    await b.sync(b_api)
    report = await a.sync(a_api)
    assert report.downloaded == 2 and report.conflicts == []
    assert names(a_dir) == sorted([".smartsync", NFD, FOLDER_NFD])
    assert (a_dir / NFD).read_bytes() == b"v2 by bob"
    assert names(a_dir / FOLDER_NFD) == ["q1.txt", "q2.txt"]

    # alice edits her NFD file: it goes up under the NFC name
    (a_dir / NFD).write_bytes(b"v3 by alice, longer")
    assert (await a.sync(a_api)).uploaded == 1
    await b.sync(b_api)
    assert (b_dir / NFC).read_bytes() == b"v3 by alice, longer"

    # no ping-pong: three more rounds move nothing
    for _ in range(3):
        for copy, api in ((a, a_api), (b, b_api)):
            report = await copy.sync(api)
            assert (report.uploaded, report.downloaded, report.deleted_remote,
                    report.deleted_local) == (0, 0, 0, 0)
    assert names(a_dir) == sorted([".smartsync", NFD, FOLDER_NFD])

    # a spelling survives a reopen (state database): the pull still writes in place
    a.close()
    a = server.open(a_dir)
    assert a.scanner.spellings[NFC] == NFD
    (b_dir / NFC).write_bytes(b"v4 by bob")
    await b.sync(b_api)
    assert (await a.sync(a_api)).downloaded == 1
    assert names(a_dir) == sorted([".smartsync", NFD, FOLDER_NFD])
    assert (a_dir / NFD).read_bytes() == b"v4 by bob"

    # deletes both ways
    (a_dir / NFD).unlink()
    assert (await a.sync(a_api)).deleted_remote == 1
    assert (await b.sync(b_api)).deleted_local == 1
    assert not (b_dir / NFC).exists()
    (b_dir / FOLDER_NFC / "q1.txt").unlink()
    await b.sync(b_api)
    assert (await a.sync(a_api)).deleted_local == 1
    assert names(a_dir / FOLDER_NFD) == ["q2.txt"]
    for copy in (a, b):
        copy.close()


@driven
async def test_twin_forms_report_one_as_skipped(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    b = await server.clone(b_api, b_dir)
    (a_dir / NFC).write_bytes(b"composed")
    (a_dir / NFD).write_bytes(b"decomposed")
    report = await a.sync(a_api)
    assert report.uploaded == 1
    assert [path for path, _ in report.skipped] == [NFD]
    await b.sync(b_api)
    assert files_of(b_dir) == {NFC: b"composed"}
    # neither local file was touched by the pull of its own upload
    assert (a_dir / NFC).read_bytes() == b"composed"
    assert (a_dir / NFD).read_bytes() == b"decomposed"
    for copy in (a, b):
        copy.close()


@driven
async def test_conflict_in_a_decomposed_folder_stays_in_that_folder(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = await server.clone(a_api, a_dir)
    b = await server.clone(b_api, b_dir)
    (a_dir / FOLDER_NFD).mkdir()
    (a_dir / FOLDER_NFD / "q1.txt").write_bytes(b"v1")
    await a.sync(a_api)
    await b.sync(b_api)
    (b_dir / FOLDER_NFC / "q1.txt").write_bytes(b"v2 by bob")
    await b.sync(b_api)
    (a_dir / FOLDER_NFD / "q1.txt").write_bytes(b"v2 by alice, not pushed")
    await a._pull(a_api, report := SyncReport(), NullProgress())  # the pull half only
    assert len(report.conflicts) == 1
    # the conflict copy is beside the file, in the decomposed folder: no composed twin
    assert names(a_dir) == sorted([".smartsync", FOLDER_NFD])
    contents = sorted((a_dir / FOLDER_NFD / n).read_bytes() for n in names(a_dir / FOLDER_NFD))
    assert contents == [b"v2 by alice, not pushed", b"v2 by bob"]
    report = await a.sync(a_api)
    assert report.skipped == [] and report.uploaded == 1  # the conflict copy goes up
    await b.sync(b_api)
    assert len(names(b_dir / FOLDER_NFC)) == 2
    for copy in (a, b):
        copy.close()
