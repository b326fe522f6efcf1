"""The routes of the signed engagement content root (issue 20; docs/protocol.md "Content root").

- ``GET /v1/root-key``: the store's Ed25519 public key and its fingerprint (no sign-in: it is
  public; a copy pins it, an auditor compares the fingerprint ``smartsync-admin root-key``
  prints);
- ``GET /v1/engagements/E/root?seq=N`` (role ``read``): the content root of the live files at
  change N (default: the head), in a statement signed by that key;
- ``GET /v1/engagements/E/root/files?seq=N&after=P&limit=L`` (``read``): the (path, content id)
  pairs the root is made of, a page at a time in path order, so a copy can name what differs
  without downloading any file.

The listing is read on the store's read connection, the root hashed on the CPU pool; roots are
cached per (engagement, seq, store generation), which never change once written. Both reads are
audit events (``verify``, ``verify-list``) like downloads and exports (web/readaudit.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from klein import Klein
from twisted.web.server import Request

from smartsyncd.core.contentroot import RootStatement, content_root, statement_bytes
from smartsyncd.core.paths import normalize_path
from smartsyncd.storage.api import ChangeLogStore
from smartsyncd.storage.lifecycle_store import LifecycleStore, lifecycle_of
from smartsyncd.storage.rootkey import RootSigner
from smartsyncd.web.access import Access, Authorizer, add_route, engagement_route
from smartsyncd.web.bodies import query_int, query_str
from smartsyncd.web.clientaddr import client_address
from smartsyncd.web.errors import send_json
from smartsyncd.web.pool import RunBlocking
from smartsyncd.web.pull import StoreIdentity
from smartsyncd.web.readaudit import ReadAudit
from smartsyncd.web.shapes import iso_utc

PAGE_DEFAULT = 5000
PAGE_MAX = 10000  # about 1 MB of JSON per page
_CACHED_ROOTS = 256
_NO_SEQ = -1


class ContentRootRoutes:
    """The signed root and its listing, over the store's lifecycle face."""

    def __init__(
        self,
        store: object,
        changelog: ChangeLogStore,
        identity: StoreIdentity,
        run_blocking: RunBlocking,
        read_audit: ReadAudit,
        now: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._changelog = changelog
        self._identity = identity
        self._run_blocking = run_blocking
        self._read_audit = read_audit
        self._now = now
        self._roots: OrderedDict[tuple[int, int, str, int], tuple[int, str]] = OrderedDict()

    def _lifecycle(self) -> LifecycleStore:
        return lifecycle_of(self._store)  # a store without it answers 400, naming why

    async def _signer(self) -> RootSigner:
        signer = await self._lifecycle().root_signer()
        assert signer is not None  # made on first use
        return signer

    async def root_key(self, request: Request) -> bytes:
        signer = await self._signer()
        return send_json(
            request,
            {"algorithm": "ed25519", "public_key": signer.public.hex(), "fingerprint": signer.fingerprint},
        )

    async def _root_at(self, engagement_id: int, seq: int | None) -> tuple[int, int, int, str]:
        """(seq, head, file count, root); the listing is read and hashed only when the root
        of that seq is not cached."""
        store_id, generation = await self._identity.get()
        head = await self._changelog.head(engagement_id)
        at = head if seq is None else seq
        key = (engagement_id, at, store_id, generation)
        cached = self._roots.get(key)
        if cached is not None and at <= head:
            self._roots.move_to_end(key)
            return at, head, *cached
        at, head, listing = await self._lifecycle().content_listing(engagement_id, at)
        root = await self._run_blocking(content_root, listing)
        self._roots[key] = (len(listing), root)
        if len(self._roots) > _CACHED_ROOTS:
            self._roots.popitem(last=False)
        return at, head, len(listing), root

    async def root(self, request: Request, access: Access) -> bytes:
        raw = query_int(request, "seq", _NO_SEQ, 0)
        signer = await self._signer()
        eng = access.engagement
        at, head, count, root = await self._root_at(eng.id, None if raw == _NO_SEQ else raw)
        store_id, generation = await self._identity.get()
        statement = RootStatement(
            store=store_id, generation=generation, engagement=eng.name, seq=at, files=count,
            root=root, signed_at=iso_utc(self._now(), False),
        )
        signature = signer.sign(statement_bytes(statement))
        self._read_audit.note(eng.id, "verify", access.session.user, access.session.id,
                              client_address(request), seq=at, root=root, files=count)
        return send_json(
            request,
            {
                "statement": statement.to_json(), "head": head, "signature": signature.hex(),
                "algorithm": "ed25519", "public_key": signer.public.hex(),
                "fingerprint": signer.fingerprint,
            },
        )

    async def files(self, request: Request, access: Access) -> bytes:
        seq = query_int(request, "seq", 0, 0)
        if query_str(request, "seq") is None:
            seq = await self._changelog.head(access.engagement.id)
        limit = query_int(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        raw_after = query_str(request, "after")
        after = None if raw_after is None else normalize_path(raw_after)
        eid = access.engagement.id
        page, more = await self._lifecycle().content_listing_page(eid, seq, after, limit)
        self._read_audit.note(eid, "verify-list", access.session.user, access.session.id,
                              client_address(request), seq=seq, after=after, files=len(page))
        return send_json(
            request, {"seq": seq, "files": [[path, content] for path, content in page], "more": more}
        )


def add_content_root_routes(app: Klein, authorizer: Authorizer, routes: ContentRootRoutes) -> None:
    """Register the public key route and the two engagement routes behind ``authorizer``."""
    add_route(app, "/v1/root-key", ["GET"], routes.root_key, "root_key")
    eng = "/v1/engagements/<engagement:eng>"
    engagement_route(app, authorizer, "read", eng + "/root", methods=["GET"])(routes.root)
    engagement_route(app, authorizer, "read", eng + "/root/files", methods=["GET"])(routes.files)
