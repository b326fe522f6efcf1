"""Prove that this copy holds what the server holds at a change number (issue 20; the
``smartsync verify`` command and ``SyncCopy.verify``).

1. The server's signed statement of the content root at seq N (default: its head).
2. Its key: the one this copy accepted before (pinned in the copy's state on first use, after a
   signature that checks), or the fingerprint given by the caller (which then becomes the pin).
   Another key, or a signature that does not check, stops here (``SignatureRefused``, exit 4).
3. Every file of the folder read and hashed afresh (``Scanner.scan`` with no base: the state
   database's stat cache and content ids are not trusted), ignored paths left out as a sync
   leaves them out; the root of what is on disk (``core.contentroot``).
4. Equal roots: identical. Else the server's (path, content id) pairs at N, a page at a time
   (checked against the signed root), name each difference, and the copy's last synced state
   says why (an unsynced local edit, a file only on the server...). No file content is fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from smartsyncd.client.copycontext import CopyContext
from smartsyncd.client.errors import ProtocolError, SignatureRefused
from smartsyncd.client.scanner import Scanner, ScanResult
from smartsyncd.client.state import FileRecord
from smartsyncd.client.wire import JSONObject, obj
from smartsyncd.client.wire import field as wire_field
from smartsyncd.core.contentroot import (
    Difference,
    RootStatement,
    classify,
    compare,
    content_root,
    key_fingerprint,
    statement_bytes,
)
from smartsyncd.core.ignore import IGNORE_FILE
from smartsyncd.core.manifest import is_hash

PAGE = 5000
_HEX_KEY = 64  # an Ed25519 public key: 32 bytes
_HEX_SIGNATURE = 128

REASONS = {
    "unsynced_new": "new here, not synced yet",
    "unsynced_edit": "edited here, not synced yet",
    "unsynced_delete": "deleted here, not synced yet",
    "server_only": "only on the server",
    "local_only": "only here",
    "server_differs": "different content (the server holds another version)",
    "ignored_here": "only on the server (this copy's ignore rules leave it out)",
    "unreadable": "could not be read here",
}


class RootServer(Protocol):
    """What verifying needs of ``ServerAPI``."""

    async def content_root(self, eng: str, seq: int | None = None) -> JSONObject: ...
    async def root_files(
        self, eng: str, seq: int, after: str | None, limit: int
    ) -> tuple[list[tuple[str, str]], bool]: ...


@dataclass(frozen=True)
class Found:
    """One difference and why it exists (``REASONS`` says it in words)."""

    path: str
    kind: str  # only_here | only_on_server | different_content | unreadable
    reason: str  # a key of REASONS
    local: str | None  # content id here
    server: str | None  # content id on the server at the seq
    why: str | None = None  # what the scan said of a path it could not read


@dataclass
class VerifyReport:
    identical: bool
    engagement: str
    seq: int  # the server's change number compared with
    head: int
    last_seq: int  # what this copy last synced
    files: int  # live files on the server at seq
    local_files: int
    root: str
    local_root: str
    fingerprint: str  # of the key that signed
    key_pinned_now: bool  # this run accepted the key (first use, or the fingerprint given)
    differences: list[Found] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # e.g. bad .smartsyncignore lines
    statement: dict[str, str | int] = field(default_factory=dict)  # as signed: keep it with the signature
    signature: str = ""

    @property
    def unsynced(self) -> int:
        return sum(1 for d in self.differences if d.reason.startswith("unsynced_"))

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = dict(self.__dict__)
        data["differences"] = [asdict(d) for d in self.differences]
        data["skipped"] = [{"path": p, "why": w} for p, w in self.skipped]
        data["notes"] = [{"path": p, "why": w} for p, w in self.notes]
        data["unsynced"] = self.unsynced
        return data


def _parse(answer: JSONObject) -> tuple[RootStatement, bytes, bytes, int]:
    raw = obj(answer.get("statement"), "root statement")
    what = "root statement"
    statement = RootStatement(
        store=wire_field(raw, "store", str, what), generation=wire_field(raw, "generation", int, what),
        engagement=wire_field(raw, "engagement", str, what), seq=wire_field(raw, "seq", int, what),
        files=wire_field(raw, "files", int, what), root=wire_field(raw, "root", str, what),
        signed_at=wire_field(raw, "signed_at", str, what),
    )
    public = wire_field(answer, "public_key", str, "root")
    signature = wire_field(answer, "signature", str, "root")
    if not is_hash(statement.root) or len(public) != _HEX_KEY or len(signature) != _HEX_SIGNATURE:
        raise ProtocolError("root: the root, key or signature is not of the right length")
    try:
        return statement, bytes.fromhex(public), bytes.fromhex(signature), wire_field(answer, "head", int, "root")
    except ValueError:
        raise ProtocolError("root: the key or signature is not hex") from None


def check_signature(statement: RootStatement, public: bytes, signature: bytes) -> None:
    """``SignatureRefused`` unless ``signature`` is ``public``'s over the statement's bytes."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, statement_bytes(statement))
    except (InvalidSignature, ValueError):
        raise SignatureRefused(
            f"the server's signature over the content root at seq {statement.seq} does not check"
            f" with its key {key_fingerprint(public)}: the answer was altered, or the server is"
            " not the one that holds that key"
        ) from None


def check_key(public: bytes, pinned: str | None, expected: str | None) -> bool:
    """Whether the key is to be pinned now; ``SignatureRefused`` when it is not the one
    expected (``expected``: a fingerprint, colon form) or accepted before (``pinned``)."""
    fingerprint = key_fingerprint(public)
    if expected is not None:
        if fingerprint != expected:
            raise SignatureRefused(
                f"the server signed with key {fingerprint}, not the {expected} given: nothing"
                " is proven (check the fingerprint 'smartsync-admin root-key' prints)"
            )
        return pinned != public.hex()
    if pinned is not None and pinned != public.hex():
        was = key_fingerprint(bytes.fromhex(pinned))
        raise SignatureRefused(
            f"the server signed with key {fingerprint}, but this copy accepted key {was} before:"
            " nothing is proven. If the firm replaced its key, confirm the new fingerprint with"
            " the administrator ('smartsync-admin root-key') and run 'smartsync verify"
            f" --key-fingerprint {fingerprint}'"
        )
    return pinned is None


async def _listing(api: RootServer, eng: str, seq: int, page: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        pairs, more = await api.root_files(eng, seq, after, page)
        if pairs and after is not None and pairs[0][0] <= after:
            raise ProtocolError("root files: a page does not follow the one before")
        out += pairs
        if not more:
            return out
        if not pairs:
            raise ProtocolError("root files: an empty page says more follow")
        after = pairs[-1][0]


def _unreadable(path: str, problems: Mapping[str, str]) -> str | None:
    """Why ``path`` could not be looked at (itself or a folder on its way), or None."""
    if "." in problems:
        return problems["."]
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        why = problems.get("/".join(parts[:i]))
        if why is not None:
            return why
    return None


def _unread(scan: ScanResult) -> list[tuple[str, str]]:
    """What the scan could not read: its errors, less the problems of a ``.smartsyncignore``
    that was read (a bad line: the file itself is compared like any other), and the files that
    kept changing while read (the other skipped names can never sync: links, bad names)."""
    errors = [(p, w) for p, w in scan.errors if not (p == IGNORE_FILE and p in scan.entries)]
    return errors + [(p, w) for p, w in scan.skipped if w.startswith("changing while being read")]


def describe(
    diffs: list[Difference], base: Mapping[str, FileRecord], scan: ScanResult
) -> list[Found]:
    """Each difference, with why it exists."""
    problems = {path: why for path, why in [*scan.skipped, *_unread(scan)]}
    out: list[Found] = []
    for d in diffs:
        synced = base.get(d.path)
        why = _unreadable(d.path, problems) if d.local is None else None
        reason = "unreadable" if why is not None else classify(
            d, synced.content if synced else None, ignored=scan.rules.ignores(d.path)
        )
        out.append(Found(d.path, d.kind, reason, d.local, d.server, why))
    return out


async def verify_copy(
    ctx: CopyContext, api: RootServer, *, seq: int | None = None, expected_key: str | None = None,
    page: int = PAGE,
) -> VerifyReport:
    """Compare the copy in ``ctx`` with the server's signed root at ``seq`` (see the module
    docstring); nothing is changed but the pinned key (first use, or ``expected_key``)."""
    await ctx.run(ctx.state.check_marker)
    statement, public, signature, head = _parse(await api.content_root(ctx.engagement, seq))
    pin_now = check_key(public, await ctx.run(ctx.state.root_key), expected_key)
    check_signature(statement, public, signature)
    if statement.engagement != ctx.engagement or (seq is not None and statement.seq != seq):
        raise ProtocolError("root: the statement names another engagement or change number")
    if pin_now:
        await ctx.run(ctx.state.set_root_key, public.hex())
    # every file read afresh: no base, so no stat cache (the engine's scanner's hooks kept)
    fresh = Scanner(ctx.directory, open_file=ctx.scanner.open_file, retries=ctx.scanner.retries)
    scan: ScanResult = await ctx.run(fresh.scan, {})
    local = {path: entry.content for path, entry in scan.entries.items()}
    local_root = await ctx.run(content_root, list(local.items()))
    differences: list[Found] = []
    unread = _unread(scan)
    if local_root != statement.root or unread:
        listing = await _listing(api, ctx.engagement, statement.seq, page)
        if await ctx.run(content_root, listing) != statement.root:
            raise ProtocolError("root files: the listing does not add up to the signed root")
        base: dict[str, FileRecord] = await ctx.run(ctx.state.all_files)
        differences = describe(compare(local, listing), base, scan)
        listed = {d.path for d in differences}
        differences += [
            Found(path, "unreadable", "unreadable", None, None, why)
            for path, why in unread if path not in listed and path != "."
        ]
    return VerifyReport(
        identical=not differences, engagement=ctx.engagement, seq=statement.seq, head=head,
        last_seq=await ctx.last_seq(), files=statement.files, local_files=len(local),
        root=statement.root, local_root=local_root, fingerprint=key_fingerprint(public),
        key_pinned_now=pin_now, differences=differences, ignored=sorted(scan.ignored),
        skipped=sorted(scan.skipped), notes=[e for e in scan.errors if e not in unread],
        statement=statement.to_json(), signature=signature.hex(),
    )
