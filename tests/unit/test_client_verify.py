"""The client's side of ``smartsync verify`` (client/verify.py) in plain calls: which key is
accepted and when it is pinned, the signature check, and how scan problems name a difference
(an unreadable file is never taken for a deletion; a bad ``.smartsyncignore`` line is a note)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smartsyncd.client.errors import SignatureRefused
from smartsyncd.client.scanner import ScannedFile, ScanResult
from smartsyncd.client.state import FileRecord
from smartsyncd.client.verify import check_key, check_signature, describe
from smartsyncd.core.contentroot import RootStatement, compare, key_fingerprint, statement_bytes

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
    got = {d["path"]: d["reason"] for d in describe(compare(local, server), base, scan)}
    # not readable here is never "deleted here": only gone.txt was really removed
    assert got == {"Private/a.txt": "unreadable", "gone.txt": "unsynced_delete", "locked.xlsx": "unreadable"}
