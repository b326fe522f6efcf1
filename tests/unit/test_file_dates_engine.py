"""File dates and the read-only attribute through the sync engine (issue 16), against the real
server Site in memory (tests/unit/clientkit.py): a pulled file gets the version's date and
attribute, its own stat cache then sees no change (no re-read, nothing pushed back), a local
edit of the same size is still seen, a read-only file is updated by a pull, a touch alone
makes no version, and the planner decides exactly as it does without dates."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clientkit import ENG, driven
from clientkit import MemoryServer as Server

from smartsyncd.client import osfs
from smartsyncd.client.scanner import Scanner
from smartsyncd.core.model import Change
from smartsyncd.core.planner import BaseEntry, LocalEntry, plan

MARCH_15 = int(datetime(2025, 3, 15, 9, 30, 12, tzinfo=UTC).timestamp()) * 10**9 + 345_678_900
MAY_1_2031 = int(datetime(2031, 5, 1, tzinfo=UTC).timestamp()) * 10**9


def dated(path: Path, data: bytes, mtime_ns: int, readonly: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    if readonly:
        osfs.set_readonly(path, True)


def counting_scanner(root: Path, opened: list[str]) -> Scanner:
    def counting_open(path: str) -> Any:
        opened.append(path)
        return open(path, "rb")

    return Scanner(root, open_file=counting_open)


@driven
async def test_a_pulled_file_keeps_its_date_and_read_only_and_never_ping_pongs(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a = await server.clone(a_api, tmp_path / "a")
    (await server.clone(b_api, tmp_path / "b")).close()
    dated(tmp_path / "a" / "WP" / "report.docx", b"signed off in March", MARCH_15, readonly=True)
    dated(tmp_path / "a" / "notes.txt", b"writable", MARCH_15 + 10**9)
    assert (await a.sync(a_api)).uploaded == 2

    opened: list[str] = []
    b = server.open(tmp_path / "b", scanner=counting_scanner(tmp_path / "b", opened))
    assert (await b.sync(b_api)).downloaded == 2
    report_st = (tmp_path / "b" / "WP" / "report.docx").stat()
    assert report_st.st_mtime_ns == MARCH_15 and osfs.is_readonly(report_st)
    notes_st = (tmp_path / "b" / "notes.txt").stat()
    assert notes_st.st_mtime_ns == MARCH_15 + 10**9 and not osfs.is_readonly(notes_st)
    # the copy's own stat cache holds the date it set: nothing is read or sent again
    head = (await b_api.snapshot(ENG)).head
    for copy, api in [(b, b_api), (a, a_api), (b, b_api)]:
        opened.clear()
        report = await copy.sync(api)
        assert (report.uploaded, report.downloaded) == (0, 0)
    assert opened == [] and (await b_api.snapshot(ENG)).head == head


@driven
async def test_an_edit_elsewhere_comes_back_with_its_date_over_a_read_only_file(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a = await server.clone(a_api, tmp_path / "a")
    b = await server.clone(b_api, tmp_path / "b")
    dated(tmp_path / "a" / "cash.xlsx", b"v1 of the lead", MARCH_15, readonly=True)
    await a.sync(a_api)
    await b.sync(b_api)
    on_b = tmp_path / "b" / "cash.xlsx"
    osfs.set_readonly(on_b, False)
    on_b.write_bytes(b"v2 of the lead, from bob")
    edited_at = on_b.stat().st_mtime_ns - 3 * 10**9
    os.utime(on_b, ns=(edited_at, edited_at))
    assert (await b.sync(b_api)).uploaded == 1
    # alice's copy still holds v1 read-only: the pull replaces it and takes bob's date and
    # attribute (writable now)
    assert (await a.sync(a_api)).downloaded == 1
    on_a = tmp_path / "a" / "cash.xlsx"
    assert on_a.read_bytes() == b"v2 of the lead, from bob"
    assert on_a.stat().st_mtime_ns == edited_at and not osfs.is_readonly(on_a.stat())
    assert a.conflicts() == [] and b.conflicts() == []


@driven
async def test_a_same_size_edit_of_a_pulled_file_is_still_sent(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a = await server.clone(a_api, tmp_path / "a")
    b = await server.clone(b_api, tmp_path / "b")
    dated(tmp_path / "a" / "tb.csv", b"100", MARCH_15)
    await a.sync(a_api)
    await b.sync(b_api)
    (tmp_path / "b" / "tb.csv").write_bytes(b"999")  # same size, same inode, a new date
    assert (await b.sync(b_api)).uploaded == 1
    await a.sync(a_api)
    assert (tmp_path / "a" / "tb.csv").read_bytes() == b"999"


@driven
async def test_a_touch_alone_makes_no_version_and_a_future_date_does_not_ping_pong(
    server: Server, tmp_path: Path
) -> None:
    a_api, b_api = await server.api("alice"), await server.api("bob")
    a = await server.clone(a_api, tmp_path / "a")
    dated(tmp_path / "a" / "memo.txt", b"text", MARCH_15)
    dated(tmp_path / "a" / "wrong clock.txt", b"from a laptop with a bad clock", MAY_1_2031)
    await a.sync(a_api)
    head = (await a_api.snapshot(ENG)).head
    os.utime(tmp_path / "a" / "memo.txt", ns=(MARCH_15, MARCH_15 + 86_400 * 10**9))
    assert (await a.sync(a_api)).uploaded == 0
    assert (await a_api.snapshot(ENG)).head == head  # the date alone made no version
    b = await server.clone(b_api, tmp_path / "b")  # a clone writes dates too
    assert (tmp_path / "b" / "memo.txt").stat().st_mtime_ns == MARCH_15
    assert (tmp_path / "b" / "wrong clock.txt").stat().st_mtime_ns == MAY_1_2031
    for copy, api in [(b, b_api), (a, a_api), (b, b_api)]:
        report = await copy.sync(api)
        assert (report.uploaded, report.downloaded) == (0, 0)
    assert (await a_api.snapshot(ENG)).head == head


def test_the_planner_decides_the_same_with_or_without_dates() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)

    def put(path: str, seq: int, content: str, mtime_ns: int | None) -> Change:
        return Change(seq, path, "put", content, 1, None, "bob", None, when,
                      mtime_ns=mtime_ns, readonly=mtime_ns is not None)

    local = {"edited.txt": LocalEntry("c" * 64, 1), "same.txt": LocalEntry("a" * 64, 1)}
    base = {"edited.txt": BaseEntry(1, "a" * 64, 1), "same.txt": BaseEntry(2, "a" * 64, 1)}
    dated_plan = plan(local, base, [put("edited.txt", 3, "b" * 64, MARCH_15), put("same.txt", 4, "d" * 64, MARCH_15)])
    plain_plan = plan(local, base, [put("edited.txt", 3, "b" * 64, None), put("same.txt", 4, "d" * 64, None)])
    strip = lambda p: [(w.path, w.seq, w.content) for w in p.pull_writes]  # noqa: E731
    assert strip(dated_plan) == strip(plain_plan) == [("same.txt", 4, "d" * 64)]
    assert [c.path for c in dated_plan.conflicts] == [c.path for c in plain_plan.conflicts] == ["edited.txt"]
    assert [(w.mtime_ns, w.readonly) for w in dated_plan.pull_writes] == [(MARCH_15, True)]
    assert (dated_plan.conflicts[0].remote.mtime_ns, plain_plan.pull_writes[0].mtime_ns) == (MARCH_15, None)


def test_osfs_sets_and_reads_dates_and_the_read_only_attribute(tmp_path: Path) -> None:
    path = tmp_path / "ledger.xlsx"
    path.write_bytes(b"x")
    os.chmod(path, 0o664)
    osfs.set_mtime(path, MARCH_15)
    assert path.stat().st_mtime_ns == MARCH_15
    osfs.set_readonly(path, True)
    assert osfs.is_readonly(path.stat()) and stat.S_IMODE(path.stat().st_mode) == 0o444
    osfs.set_mtime(path, MARCH_15 + 1)  # the owner may still date a read-only file
    assert path.stat().st_mtime_ns == MARCH_15 + 1
    osfs.set_readonly(path, False)
    assert not osfs.is_readonly(path.stat()) and stat.S_IMODE(path.stat().st_mode) == 0o644
