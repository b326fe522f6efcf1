"""Central's side of a branch credential: the one narrow path it opens (issue 18).

A request with ``Authorization: SmartsyncBranch <secret>`` (``auth/branchcred.py``) is a
branch office's daemon prefetching an engagement it carries. ``BranchGate.authorize`` lets it
through only for ``POST .../chunks/fetch`` and ``POST .../manifests`` of an engagement the
branch carries (``storage/branches.py``, one read), as the principal ``branch:NAME`` with the
reader role; anything else, a write or any other route included, is a JSON 403 and changes
nothing, except ``POST /v1/branch/reads`` (``web/branchreads.py``: the read events of the
branch's users, for the audit trail; ``branch_of``). The scheme is not ``Bearer``, so the credential never resolves to a user's session:
``Authorizer.check_session`` (sign-in, listings) refuses it outright. Each pass is logged with
the branch's principal (never the secret) and read-audited in the engagement's read chain as
``branch_fetch`` or ``branch_manifests`` by ``branch:NAME`` (the manifests served are also
audited as downloads under it, as for any reader).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from smartsyncd.auth.branchcred import secret_from_header, secret_hash, uses_branch_scheme
from smartsyncd.core.errors import Forbidden
from smartsyncd.storage.api import EngagementRecord, SessionRecord
from smartsyncd.storage.branches import branch_of_secret, carrying_branch, principal
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.readaudit import ReadAudit

log = Logger(namespace="smartsyncd.branch")

_BRANCH_READS = re.compile(rb"/v1/engagements/[^/]+/(chunks/fetch|manifests)")
ONLY_READS = (
    "a branch credential may only fetch the chunks and manifests of engagements its branch"
    " carries; nothing else, and never a write"
)


def claims(request: Request) -> bool:
    """Does the request present a branch credential (well formed or not)?"""
    raw = request.requestHeaders.getRawHeaders(b"authorization")
    return raw is not None and len(raw) > 0 and uses_branch_scheme(raw[0])


class BranchGate:
    """Who a branch credential is, and whether it may make this one read."""

    def __init__(self, store: Any) -> None:
        self._store = store  # run_read and get_engagement (a SqlServerStore, maybe metered)
        self.read_audit: ReadAudit | None = None  # set by the SyncAPI (web/app.py)

    async def branch_of(self, request: Request) -> str:
        """The branch whose credential the request presents (403 if none is valid)."""
        raw = request.requestHeaders.getRawHeaders(b"authorization") or [b""]
        secret = secret_from_header(raw[0])
        if secret is None:
            raise Forbidden("this needs a branch credential (Authorization: SmartsyncBranch ...)")
        branch: str | None = await self._store.run_read(branch_of_secret, secret_hash(secret))
        if branch is None:
            raise Forbidden("unknown or revoked branch credential")
        return branch

    async def authorize(self, request: Request, name: str, operation: str) -> tuple[SessionRecord, EngagementRecord]:
        if operation != "read" or request.method != b"POST" or not _BRANCH_READS.fullmatch(request.path):
            raise Forbidden(ONLY_READS)
        raw = request.requestHeaders.getRawHeaders(b"authorization") or [b""]
        secret = secret_from_header(raw[0])
        if secret is None:
            raise Forbidden("malformed branch credential")
        branch, carried = await self._store.run_read(carrying_branch, secret_hash(secret), name)
        if branch is None:
            raise Forbidden("unknown or revoked branch credential")
        engagement = await self._store.get_engagement(name) if carried else None
        if engagement is None:
            raise Forbidden(f"branch {branch!r} does not carry this engagement; {ONLY_READS}")
        who = principal(branch)
        what = request.path.rsplit(b"/", 1)[-1].decode("ascii")
        log.info("{who} reads {what} of {engagement}", who=who, engagement=name, what=what)
        if self.read_audit is not None:  # one event per request, in the engagement's read chain
            self.read_audit.note(engagement.id, "branch_" + what, who, who, client_address(request))
        now = datetime.now(UTC)
        session = SessionRecord(
            id=who, token_hash="", user=who, groups=(), backend="branch", created_at=now,
            expires_at=now, refreshed_at=now, principal=who,
        )
        return session, engagement
