"""The client's side of ``smartsync verify`` (client/verify.py) in plain calls: which key is
accepted and when it is pinned, the signature check, and how scan problems name a difference
(an unreadable file is never taken for a deletion; a bad ``.smartsyncignore`` line is a note);
``verify_copy`` over a real folder and state against a server in plain calls."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from smartsyncd.client.copycontext import CopyContext
from smartsyncd.client.errors import ProtocolError, SignatureRefused
from smartsyncd.client.scanner import ScannedFile, Scanner, ScanResult
from smartsyncd.client.state import ClientState, CopyMeta, FileRecord
from smartsyncd.client.verify import check_key, check_signature, describe, verify_copy
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.contentroot import (
    RootStatement,
    compare,
    content_root,
    key_fingerprint,
    statement_bytes,
)
from smartsyncd.core.manifest import make_manifest
from smartsyncd.testing.syncpool import run_sync

A, B = "aa" * 32, "bb" * 32


def _key() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_key_pinned_on_first_use_then_required() -> None:
    _, public = _key()
    _, other = _key()
    assert check_key(public, None, None) is True  # first use: pin it
    assert check_key(public, public.hex(), None) is False  # the pinned one: nothing to do
    with pytest.raises(SignatureRefused, match="accepted key .* before"):
        check_key(other, public.hex(), None)
    # a fingerprint given wins over the pin, and becomes the pin
    assert check_key(other, public.hex(), key_fingerprint(other)) is True
    with pytest.raises(SignatureRefused, match="given"):
        check_key(public, None, key_fingerprint(other))


def test_signature_over_the_statement_bytes() -> None:
    key, public = _key()
    statement = RootStatement("s", 1, "acme", 3, 2, A, "2026-12-05T12:00:00Z")
    check_signature(statement, public, key.sign(statement_bytes(statement)))
    with pytest.raises(SignatureRefused, match="does not check"):
        check_signature(statement, public, key.sign(statement_bytes(statement) + b"x"))
    altered = RootStatement("s", 1, "acme", 4, 2, A, "2026-12-05T12:00:00Z")
    with pytest.raises(SignatureRefused):
        check_signature(altered, public, key.sign(statement_bytes(statement)))


def _entry(path: str, content: str) -> ScannedFile:
    return ScannedFile(content=content, size=1, path=path, mtime_ns=0, inode=0)


def _record(path: str, content: str) -> FileRecord:
    return FileRecord(path=path, seq=1, content=content, size=1, mtime_ns=0, inode=0)


def test_scan_problems_name_the_difference() -> None:
    scan = ScanResult()
    scan.entries = {".smartsyncignore": _entry(".smartsyncignore", A)}
    scan.errors = [("locked.xlsx", "cannot read now (Permission denied); retried next sync"),
                   ("Private", "cannot list folder: Permission denied"),
                   (".smartsyncignore", "line 2: not a valid pattern")]
    server = [(".smartsyncignore", A), ("Private/a.txt", B), ("gone.txt", B), ("locked.xlsx", B)]
    base = {p: _record(p, c) for p, c in server}
    local = {p: e.content for p, e in scan.entries.items()}
    got = {d.path: d.reason for d in describe(compare(local, server), base, scan)}
    # not readable here is never "deleted here": only gone.txt was really removed
    assert got == {"Private/a.txt": "unreadable", "gone.txt": "unsynced_delete", "locked.xlsx": "unreadable"}


def test_a_file_changing_while_read_is_never_identical() -> None:
    scan = ScanResult()
    scan.skipped = [("draft.docx", "changing while being read; retried next sync"),
                    ("link", "symbolic link (not synced)")]
    got = describe(compare({}, [("draft.docx", A)]), {"draft.docx": _record("draft.docx", A)}, scan)
    assert [(d.path, d.reason) for d in got] == [("draft.docx", "unreadable")]


class SignedRoot:
    """A server in plain calls: signs the root of ``files`` and pages its listing."""

    def __init__(self, files: dict[str, str], engagement: str = "acme") -> None:
        self.key, self.public = _key()
        self.files = sorted(files.items())
        self.engagement = engagement
        self.pages = 0

    async def content_root(self, eng: str, seq: int | None = None) -> dict:
        statement = RootStatement("store", 1, self.engagement, 7, len(self.files),
                                  content_root(self.files), "2026-12-05T12:00:00Z")
        return {"statement": statement.to_json(), "head": 7, "public_key": self.public.hex(),
                "signature": self.key.sign(statement_bytes(statement)).hex()}

    async def root_files(self, eng: str, seq: int, after: str | None, limit: int):  # noqa: ANN201
        self.pages += 1
        rest = [f for f in self.files if after is None or f[0] > after]
        return rest[:limit], len(rest) > limit


def _copy(tmp_path: Path, open_file=None) -> CopyContext:  # noqa: ANN001
    state = ClientState.create(tmp_path, CopyMeta("https://h", "acme", "alice", "c1"))
    scanner = Scanner(tmp_path) if open_file is None else Scanner(tmp_path, open_file=open_file)
    return CopyContext(directory=tmp_path, state=state, run=maybeDeferred, scanner=scanner,
                       clock=Clock(), user="alice", engagement="acme", copy_id="c1")


def _content(data: bytes) -> str:
    return make_manifest([r for r, _ in chunk_buffer(data)]).content


def _run(coro: Any) -> Any:
    return run_sync(coro)


def test_library_call_identical_then_changed(tmp_path: Path) -> None:
    big = bytes(range(256)) * 2000  # several chunks
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "Thumbs.db").write_bytes(b"ignored by the built-in rules")
    server = SignedRoot({"a.txt": _content(b"alpha"), "big.bin": _content(big)})
    ctx = _copy(tmp_path)
    report = _run(verify_copy(ctx, server))
    assert report.identical and report.key_pinned_now and server.pages == 0  # no listing needed
    assert report.ignored == ["Thumbs.db"] and report.local_files == 2
    assert ctx.state.root_key() == server.public.hex()
    (tmp_path / "a.txt").write_bytes(b"ALPHA")
    report = _run(verify_copy(ctx, server, page=1))
    assert not report.identical and not report.key_pinned_now and server.pages == 2
    # never synced here, other bytes than the server's: an edit not sent
    assert [(d.path, d.reason) for d in report.differences] == [("a.txt", "unsynced_edit")]
    # another server key: refused, and the pin stays
    with pytest.raises(SignatureRefused):
        _run(verify_copy(ctx, SignedRoot(dict(server.files))))
    assert ctx.state.root_key() == server.public.hex()
    # a statement for another engagement is not taken for this one
    other = SignedRoot({}, engagement="other")
    with pytest.raises(ProtocolError, match="another engagement"):
        _run(verify_copy(ctx, other, expected_key=key_fingerprint(other.public)))


def test_a_local_file_changing_while_read_is_unreadable_not_identical(tmp_path: Path) -> None:
    (tmp_path / "draft.docx").write_bytes(b"x" * 20000)

    class Growing(io.FileIO):
        """A file another program appends to while the copy reads it."""

        grown = False

        def _grow(self) -> None:  # once per open: the file differs from its stat before
            if not self.grown:
                self.grown = True
                with open(self.name, "ab") as w:
                    w.write(b"more")

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            self._grow()
            return data

        def readinto(self, buffer: Any) -> int:
            n = super().readinto(buffer)
            self._grow()
            return n

    def growing(path: str) -> Growing:
        return Growing(path, "rb")

    report = _run(verify_copy(_copy(tmp_path, growing), SignedRoot({})))
    assert not report.identical
    assert [(d.path, d.reason) for d in report.differences] == [("draft.docx", "unreadable")]
