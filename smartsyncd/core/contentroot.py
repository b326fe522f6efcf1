"""The engagement content root: one hash that stands for every live file at a change number
(pure; issue 20, "proof that two copies are identical").

Input: the (path, content id) of every live file, paths in the server's normalized form
(``core.paths.normalize_path``: NFC, as every copy stores them, whatever its disk's case or
normalization rules). The order given does not matter; duplicate or non-normalized paths are
refused. Encoding (BLAKE3-256 everywhere, each kind of hash with its own domain tag so a leaf
can never be read as a node or the reverse):

- leaf = BLAKE3(``LEAF_DOMAIN`` || u32 big-endian length of the path's UTF-8 || the path's
  UTF-8 || the 32 raw bytes of the content id);
- the leaves sorted by path (UTF-8 bytewise, i.e. code point order) are hashed in pairs,
  left to right; an odd last node moves up a level unchanged (the tree shape of RFC 6962);
  node = BLAKE3(``NODE_DOMAIN`` || left || right);
- no file: root = BLAKE3(``EMPTY_DOMAIN``).

The server signs a ``RootStatement`` (store, engagement, seq, file count, root, time) as
``STATEMENT_DOMAIN`` followed by its canonical JSON (``statement_bytes``); a client or a
reviewer rebuilds those bytes from the fields it received. ``compare`` lists what differs
between two listings; ``classify`` names a difference against what a copy last synced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import blake3

from smartsyncd.core.manifest import is_hash
from smartsyncd.core.paths import normalize_path

LEAF_DOMAIN = b"smartsync-root-leaf-v1\n"
NODE_DOMAIN = b"smartsync-root-node-v1\n"
EMPTY_DOMAIN = b"smartsync-root-empty-v1\n"
STATEMENT_DOMAIN = b"smartsync-root-statement-v1\n"


def leaf_hash(path: str, content: str) -> bytes:
    """The leaf of one file (see the module docstring)."""
    raw = path.encode("utf-8")
    return blake3.blake3(
        LEAF_DOMAIN + len(raw).to_bytes(4, "big") + raw + bytes.fromhex(content)
    ).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(NODE_DOMAIN + left + right).digest()


def sorted_files(files: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``files`` checked (normalized paths, content ids of 64 lowercase hex digits, each path
    once) and sorted by path; ``ValueError`` names the first problem."""
    out = sorted(files)
    previous: str | None = None
    for path, content in out:
        if path == previous:
            raise ValueError(f"path {path!r} is listed twice")
        if normalize_path(path) != path:
            raise ValueError(f"path {path!r} is not in normalized (NFC) form")
        if not is_hash(content):
            raise ValueError(f"content id of {path!r} is not 64 lowercase hex digits")
        previous = path
    return out


def content_root(files: Iterable[tuple[str, str]]) -> str:
    """The hex root over ``files`` ((path, content id) pairs, in any order)."""
    level = [leaf_hash(path, content) for path, content in sorted_files(files)]
    if not level:
        return blake3.blake3(EMPTY_DOMAIN).hexdigest()
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0].hex()


@dataclass(frozen=True)
class RootStatement:
    """What the server signs: "store ``store`` (generation ``generation``) held, in engagement
    ``engagement`` at change ``seq``, ``files`` live files whose content root is ``root``",
    stated at ``signed_at`` (ISO 8601 UTC)."""

    store: str
    generation: int
    engagement: str
    seq: int
    files: int
    root: str
    signed_at: str

    def to_json(self) -> dict[str, str | int]:
        return {
            "store": self.store, "generation": self.generation, "engagement": self.engagement,
            "seq": self.seq, "files": self.files, "root": self.root, "signed_at": self.signed_at,
        }


def statement_bytes(statement: RootStatement) -> bytes:
    """The signed bytes: the domain tag, then compact JSON with sorted keys (ASCII only)."""
    body = json.dumps(statement.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return STATEMENT_DOMAIN + body.encode("ascii")


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the 32 raw bytes of an Ed25519 public key, in the colon form of the
    certificate fingerprints (``AB:CD:...``)."""
    digest = hashlib.sha256(public_key).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


# -- what differs ----------------------------------------------------------------------------

DiffKind = Literal["only_here", "only_on_server", "different_content"]
# a difference named against the copy's last synced state (``classify``)
Reason = Literal[
    "unsynced_new",  # created here, not sent yet
    "unsynced_edit",  # edited here, not sent yet
    "unsynced_delete",  # deleted here, not sent yet
    "server_only",  # on the server, never in this copy (or not pulled yet)
    "local_only",  # here, synced once, not on the server at that seq
    "server_differs",  # this copy holds what it last synced; the server's differs
    "ignored_here",  # on the server; this copy's ignore rules leave it out
]


@dataclass(frozen=True)
class Difference:
    path: str
    kind: DiffKind
    local: str | None  # content id here (None: not here)
    server: str | None  # content id on the server at the seq (None: not there)


def compare(local: Mapping[str, str], server: Iterable[tuple[str, str]]) -> list[Difference]:
    """Every path whose content differs between ``local`` and ``server``, sorted by path."""
    seen: set[str] = set()
    out: list[Difference] = []
    for path, content in server:
        seen.add(path)
        here = local.get(path)
        if here is None:
            out.append(Difference(path, "only_on_server", None, content))
        elif here != content:
            out.append(Difference(path, "different_content", here, content))
    out.extend(
        Difference(path, "only_here", content, None)
        for path, content in local.items()
        if path not in seen
    )
    out.sort(key=lambda d: d.path)
    return out


def classify(diff: Difference, synced: str | None, ignored: bool = False) -> Reason:
    """Why ``diff`` exists, given the content this copy last synced at its path (``synced``,
    None if it never did) and whether its ignore rules leave the path out."""
    if diff.kind == "only_on_server":
        if ignored:
            return "ignored_here"
        return "unsynced_delete" if synced is not None else "server_only"
    if diff.kind == "only_here":
        return "unsynced_new" if synced is None else (
            "local_only" if diff.local == synced else "unsynced_edit"
        )
    return "server_differs" if diff.local == synced else "unsynced_edit"
