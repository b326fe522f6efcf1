"""A sync copy's report (docs/workflow.md): how many local changes it holds unsynced, and since
when. Sent alone (``POST .../copies/<copy>/report``) or folded into a commit's body as
``"report"`` (issue 15: one request less per sync), and parsed here for both, before anything
is written: a bad report is a 400 naming the field and changes nothing.

``ReportAnswers`` records a report and writes its answer (locks, sign-off, the rules' ETag,
the head) for both routes. A commit whose report carries ``"expect"`` (issue 15: an edit sync
in one request) is checked here first: when anything the copy assumed no longer holds, nothing
is committed and the refusal carries what the report alone would have answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from smartsyncd.auth.acl import allows
from smartsyncd.core.errors import BadRequest, SyncError
from smartsyncd.core.ignore import EngagementRules, rules_etag
from smartsyncd.core.jsonvalue import JSONDict
from smartsyncd.core.locks import Lock
from smartsyncd.core.model import HistoryCheck
from smartsyncd.storage.api import ChangeLogStore, CopyRecord, EngagementStatus, WorkflowStore
from smartsyncd.storage.lifecycle import deadline_warning
from smartsyncd.storage.wipes import KEY_HEX
from smartsyncd.web.access import Access
from smartsyncd.web.bodies import expect_object, get_int, get_str
from smartsyncd.web.inlinechunks import INLINE_RAW_CAP
from smartsyncd.web.parse import parse_time
from smartsyncd.web.pull import StoreIdentity
from smartsyncd.web.shapes import JsonObject, copy_json, finalized_json, iso_utc, lock_json

EXPECT_VERSION = 1  # advertised in a report's answer: commits may carry ``report.expect``


class ExpectUnmet(SyncError):
    """A commit's ``report.expect`` no longer holds: nothing was committed; ``report`` is what
    the copy report alone would have answered (its report was recorded as that one would be)."""

    code = "expect_unmet"
    status = 409


@dataclass(frozen=True)
class Expect:
    """What a copy assumed when it committed without reporting first: the engagement rules'
    ETag it scanned with, and its state before this commit (the report it did not send)."""

    ignore: str
    unsynced: int
    since: datetime | None


@dataclass(frozen=True)
class CopyReport:
    host: str
    unsynced: int
    since: datetime | None
    key_hash: str | None  # SHA-256 of the copy's secret (authenticates its wipe report)
    expect: Expect | None = None  # a commit's: checked before it applies

    async def record(
        self, store: WorkflowStore, engagement_id: int, copy: str, user: str, session: str | None
    ) -> CopyRecord:
        return await store.report_copy(
            engagement_id, copy, user, self.host, session, self.unsynced, self.since,
            self.key_hash,
        )

    def before(self) -> CopyReport:
        """The report the copy did not send (its state before the commit it expected)."""
        assert self.expect is not None
        return CopyReport(self.host, self.expect.unsynced, self.expect.since, self.key_hash)


def parse_report(raw: object, prefix: str = "") -> CopyReport:
    """A report object; ``prefix`` names where it sits in the body (``"report."``)."""
    body = expect_object(raw, prefix.rstrip(".") or "body")
    host = get_str(body, "host", prefix + "host", max_len=255, non_empty=True)
    unsynced = get_int(body, "unsynced", prefix + "unsynced", minimum=0)
    assert unsynced is not None
    since = _since(body, prefix)
    expect = None
    if prefix and body.get("expect") is not None:  # only a commit's report expects
        raw_expect = expect_object(body["expect"], prefix + "expect")
        where = prefix + "expect."
        before = get_int(raw_expect, "unsynced", where + "unsynced", minimum=0)
        assert before is not None
        expect = Expect(get_str(raw_expect, "ignore", where + "ignore", max_len=128, non_empty=True),
                        before, _since(raw_expect, where))
    return CopyReport(host, unsynced, since, key_hash(body, prefix), expect)


def _since(body: JSONDict, prefix: str) -> datetime | None:
    raw = body.get("since")
    if raw is not None and not isinstance(raw, str):
        raise BadRequest(f"field '{prefix}since' must be an ISO 8601 time or null",
                         field=prefix + "since")
    return None if raw is None else parse_time(raw, prefix + "since")


def key_hash(body: JSONDict, prefix: str = "") -> str | None:
    """The optional ``key_hash``: SHA-256 of the copy's secret, which authenticates its wipe
    report (web/wipes.py)."""
    value = body.get("key_hash")
    if value is None:
        return None
    if not isinstance(value, str) or not KEY_HEX.match(value):
        raise BadRequest(f"field '{prefix}key_hash' must be 64 lowercase hex digits",
                         field=prefix + "key_hash")
    return value


class RulesLookup(Protocol):
    """Where a copy report reads the engagement's ignore rules (for their ETag)."""

    async def ignore_rules(self, engagement_id: int) -> EngagementRules | None: ...


class ReportAnswers:
    """Records copy reports and writes their answers: for the report route, and for a commit
    whose expectations failed (``refuse_if_unmet``)."""

    def __init__(
        self,
        store: WorkflowStore,
        rules: RulesLookup,
        log: tuple[ChangeLogStore, StoreIdentity] | None,
        inline: int,
        now: Callable[[], datetime],
    ) -> None:
        """``log``: where a report that names the copy's place in the log (``history``) reads
        the head it answers with (None: such reports are answered without it); ``inline``: the
        raw chunk bytes a commit may carry, advertised in the answer."""
        self._store = store
        self._rules = rules
        self._log = log
        self._inline = inline
        self._now = now

    async def answer(
        self, access: Access, copy: str, report: CopyReport, check: HistoryCheck | None,
        found: tuple[EngagementStatus, list[Lock], EngagementRules | None] | None = None,
    ) -> JsonObject:
        """Record ``report`` and write the answer; ``found``: status, locks and rules already
        read for this request."""
        eid, session = access.engagement.id, access.session
        record = await report.record(self._store, eid, copy, session.user, session.id)
        if found is None:
            found = (await self._store.engagement_status(eid), await self._store.list_locks(eid),
                     await self._rules.ignore_rules(eid))
        status, locks, rules = found
        answer: JsonObject = {
            "copy": copy_json(record),
            "finalized": finalized_json(status),
            "locks": [lock_json(lock) for lock in locks],
            "deadline": deadline_json(status, record.unsynced, self._now()),
            # the rules' ETag: a copy whose kept rules are older fetches them before pushing
            "ignore": rules_etag(rules.digest if rules else None),
        }
        if check is not None and self._log is not None:
            # checked as the changes feed checks it (409 history_diverged: a restored store);
            # a copy at the head asks nothing more this sync (issue 15: a no-op sync is one
            # request)
            changelog, identity = self._log
            answer["head"], _ = await changelog.changes_since(eid, check.seq, 1, check=check)
            answer["store"], answer["generation"] = await identity.get()
            del answer["copy"]  # the copy's own record: this client never reads it back
            if self._inline:
                answer["inline"] = self._inline  # small uploads may ride in the commit
                answer["inline_raw"] = INLINE_RAW_CAP  # ``inline`` counts bytes as sent
                if allows(access.role, "write"):  # a reader's commit is refused anyway
                    answer["expect"] = EXPECT_VERSION  # a small edit may skip the report
                    if report.key_hash is not None:  # kept (the first one named stays)
                        answer["keyed"] = True  # its commits need not name it again
        return answer

    async def refuse_if_unmet(
        self, access: Access, copy: str, report: CopyReport, check: HistoryCheck | None,
        paths: Iterable[str],
    ) -> None:
        """Raise ``ExpectUnmet`` with the report's answer when the engagement was finalized,
        another user's lock covers one of ``paths``, or its rules are not the ones the copy
        scanned with. Only reads, unless it refuses (then the report is recorded as the report
        alone would have been). The commit's transaction checks locks and sign-off again."""
        assert report.expect is not None
        eid, user = access.engagement.id, access.session.user
        status = await self._store.engagement_status(eid)
        locks = await self._store.list_locks(eid)
        rules = await self._rules.ignore_rules(eid)
        others = [lock for lock in locks if lock.holder != user]
        why = None
        if status.finalized_at is not None:
            why = "the engagement was finalized"
        elif rules_etag(rules.digest if rules else None) != report.expect.ignore:
            why = "the engagement's ignore rules changed"
        elif others and any(lock.covers(path) for path in paths for lock in others):
            why = "another user checked out a path of it"
        if why is None:
            return
        answer = await self.answer(access, copy, report.before(), check, (status, locks, rules))
        raise ExpectUnmet(f"nothing committed: {why}; sync again with this report", report=answer)


def deadline_json(status: EngagementStatus, unsynced: int, now: datetime) -> JsonObject | None:
    """The assembly deadline (issue 20) and, near it, a warning for a copy with unsynced work."""
    if status.assembly_deadline is None:
        return None
    return {
        "at": iso_utc(status.assembly_deadline),
        "report_date": None if status.report_date is None else iso_utc(status.report_date),
        "warning": deadline_warning(status.assembly_deadline, status.finalized, unsynced, now),
    }
