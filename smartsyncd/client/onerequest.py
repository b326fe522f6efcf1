"""An edit sync in one request (issue 15; the daemon's side is web/copyreport.py).

A sync reports to the server first (client/contact.py): the answer says whether others' locks
hold local edits back, whether the engagement was signed off, whether its ignore rules moved,
and where the log's head is. A server whose report answer offers it (``"expect"``, kept as an
``Offer`` in the copy's state folder from one run of the command to the next) also takes a
commit that carries the report with what the copy assumed instead: the rules' ETag it scanned
with, its place in the log (the commit's ``history``) and the report it did not send. Only a
small push goes that way (``small_push``: its chunks surely fit in the commit), so nothing
large travels before the checks.

The server applies such a commit only while all that holds. Otherwise nothing is committed and
the refusal (``409 expect_unmet``) carries what the report alone would have answered: the sync
goes on with it exactly as after a report (``push_alone`` hands it back), one request in all
as before. Any other refusal forgets the offer (the next sync reports first), and a server
that stops offering it is asked the old way from its next report on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple

from smartsyncd.client import contact, osfs
from smartsyncd.client.copycontext import CopyContext, log
from smartsyncd.client.early import EarlyUpload
from smartsyncd.client.errors import ServerRefused
from smartsyncd.client.http import report_body
from smartsyncd.client.inline import INLINE_CHUNKS, InlineUpload, NotCarried
from smartsyncd.client.localfs import atomic_write_bytes
from smartsyncd.client.progress import Progress
from smartsyncd.client.push import Push
from smartsyncd.client.reports import SyncReport
from smartsyncd.client.scanner import ScannedFile, ScanResult
from smartsyncd.client.server import Server
from smartsyncd.client.state import STATE_DIR, FileRecord
from smartsyncd.client.wire import CopyContact, HistoryMark, parse_contact
from smartsyncd.core.ignore import EngagementRules, rules_etag
from smartsyncd.core.model import is_folder
from smartsyncd.core.planner import Plan

OFFER_NAME = "server-offer.json"
EXPECT_UNMET = "expect_unmet"


class Found(NamedTuple):
    """A sync's look at the folder (client/scan.py ``survey``)."""

    scan: ScanResult
    early: EarlyUpload
    plan: Plan
    waiting: list[str]  # paths with local changes not on the server
    since: datetime | None  # the oldest edit among them


@dataclass(frozen=True)
class Offer:
    """What the server at ``url`` last offered in a report's answer: commits that carry up to
    ``inline`` chunk bytes (as sent, decoding to at most ``raw``; raw when ``raw`` is 0: an
    older server) and check a report's ``expect`` (version ``expect``); ``keyed``: it holds
    the copy's key hash, which the reports commits carry then leave out."""

    url: str
    inline: int
    expect: int
    raw: int = 0
    keyed: bool = False


def offered(api: Server, answer: CopyContact) -> Offer | None:
    """The offer of a report's answer (None: it makes none)."""
    if answer.inline <= 0 or answer.expect < 1:
        return None
    return Offer(api.base_url, answer.inline, answer.expect, answer.inline_raw, answer.keyed)


def read_offer(directory: Path) -> Offer | None:
    """The offer kept in the copy's state folder (blocking); None when none or unreadable."""
    try:
        data = json.loads(osfs.read_small_file(directory / STATE_DIR / OFFER_NAME, 4096))
        offer = Offer(str(data["url"]), int(data["inline"]), int(data["expect"]),
                      int(data.get("raw", 0)), data.get("keyed") is True)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return offer if offer.inline > 0 and offer.expect >= 1 else None


def keep_offer(directory: Path, offer: Offer | None) -> None:
    """Keep ``offer`` for the next run (blocking); None forgets it."""
    path = directory / STATE_DIR / OFFER_NAME
    if offer is None:
        osfs.unlink(path, missing_ok=True)
        return
    body = {"url": offer.url, "inline": offer.inline, "expect": offer.expect, "raw": offer.raw,
            "keyed": offer.keyed}
    atomic_write_bytes(path, json.dumps(body).encode("utf-8"))


def small_push(
    push: Plan, entries: Mapping[str, ScannedFile], base: Mapping[str, FileRecord], limit: int
) -> bool:
    """Whether ``push`` may fit one commit carrying its chunks: at most ``INLINE_CHUNKS``
    changes, and the chunks its puts may upload (whole files when new, the chunks an edit
    does not share with its synced version) at most ``INLINE_CHUNKS`` of ``limit`` raw bytes
    in all. It over-counts (chunks the server may have already), never under. Whether their
    encoding fits what the server takes as sent is known only once encoded (``push_alone``)."""
    if push.push_empty or len(push.push_puts) + len(push.push_deletes) > INLINE_CHUNKS:
        return False
    known = {r.content for r in base.values()}
    wanted: dict[str, int] = {}
    for put in push.push_puts:
        if is_folder(put.content) or put.content in known:
            continue  # only the id travels
        entry, old = entries.get(put.path), base.get(put.path)
        if entry is None or entry.chunks is None:
            return False
        had = {c.hash for c in old.chunks} if old is not None and old.chunks else set()
        wanted.update((c.hash, c.size) for c in entry.chunks if c.hash not in had)
        if len(wanted) > INLINE_CHUNKS:
            return False
    return sum(wanted.values()) <= limit


def expectation(
    rules: EngagementRules | None, unsynced: int, since: datetime | None
) -> dict[str, object]:
    """A report's ``expect``: the ETag of the rules the copy scanned with, and the report it
    did not send (its unsynced count before the commit, and since when)."""
    before = report_body("", unsynced, since, None)  # the report not sent, as it would go
    return {"ignore": rules_etag(rules.digest if rules else None),
            "unsynced": before["unsynced"], "since": before["since"]}


async def unmet_answer(api: Server, e: ServerRefused) -> CopyContact | None:
    """The report's answer an ``expect_unmet`` refusal carries (nothing was committed; the
    server recorded the report the copy did not send); None for any other refusal."""
    if e.code != EXPECT_UNMET:
        return None
    answer = parse_contact(e.details.get("report"))
    if api.keeper is not None and answer.head is not None:
        await api.keeper.seen(HistoryMark(None, None, answer.store, answer.generation))
    return answer


async def push_alone(
    ctx: CopyContext, api: Server, offer: Offer, found: Found, base: dict[str, FileRecord],
    report: SyncReport, prog: Progress, rules: EngagementRules | None,
) -> tuple[Push | None, CopyContact | None]:
    """Push ``found``'s changes in a commit that carries the copy report and what this sync
    assumed (``rules``: the engagement rules it scanned with). The push when it went through
    (``report`` has what it did); else None and the report's answer the server refused it
    with (None: report now, as before). Nothing was committed then: only the bytes that went
    and files moved aside (a name clash on an earlier attempt) are in ``report``."""
    part = SyncReport()  # taken in only when the push went through
    push = Push(ctx, api, found.scan, base, part, prog, found.plan, present=found.early.present)
    expect = expectation(rules, len(found.waiting), found.since)
    push.fold_report = partial(contact.folded, ctx, since=found.since, expect=expect,
                               keyed=offer.keyed)
    push.inline = InlineUpload(offer.inline, offer.raw, strict=True)
    answer = None
    try:
        await push.run()
    except NotCarried as e:  # nothing was sent: the sync reports first, as for a large push
        log.info("not one request: {why}", why=e)
        return None, None
    except ServerRefused as e:
        answer = await unmet_answer(api, e)
        if answer is None:  # not for this to settle: the next sync reports first
            await ctx.run(keep_offer, ctx.directory, None)
            raise
        log.info("commit not made ({why}); going on with the report's answer", why=e.message)
    else:
        if part.refused is None:
            report.bytes_sent += found.early.bytes_sent
            report.skipped.extend(found.scan.skipped)
            report.skipped.extend(found.scan.errors)
            report.absorb(part)
            return push, None
        # finalized, or no longer an editor, since the last report: report now, as before
    report.bytes_sent += part.bytes_sent
    report.conflicts.extend(part.conflicts)
    return None, answer
