"""The store's Ed25519 key that signs engagement content roots (issue 20; docs/deployment.md).

One key per store, made on first use in the store's shared storage folder:
``<[storage] path>/keys/root-signing-ed25519.pem`` (PKCS #8 PEM, mode 0600, folder 0700).
That folder is the one every daemon of a PostgreSQL deployment mounts, so they all sign with
the same key; with SQLite it is ``DATA/chunks``. The key is kept out of the database on
purpose: a database dump or replica (and whoever reads them) does not carry it.

First use by two daemons at once: each writes its own key to a temp file and ``link``s it to
the final name, which succeeds for exactly one (an atomic create-if-absent, also over NFS);
the other drops its key and reads the winner's. A key file readable by group or others is
refused, naming the fix. Blocking: the store runs it on its file pool.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smartsyncd.core.contentroot import key_fingerprint
from smartsyncd.core.errors import Unavailable
from smartsyncd.storage.durable import ensure_dir, fsync_dir

KEY_FOLDER = "keys"
KEY_FILE = "root-signing-ed25519.pem"


@dataclass(frozen=True)
class RootSigner:
    """The private key and what is published of it."""

    key: Ed25519PrivateKey
    public: bytes  # the 32 raw bytes
    path: str

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def key_path(storage_root: str) -> str:
    return os.path.join(storage_root, KEY_FOLDER, KEY_FILE)


def _signer(key: Ed25519PrivateKey, path: str) -> RootSigner:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return RootSigner(key=key, public=raw, path=path)


def _load(path: str) -> RootSigner:
    fd = os.open(path, os.O_RDONLY)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    if mode & 0o077:
        raise Unavailable(
            f"the root signing key {path} is readable by others (mode {mode:o}): chmod 600 it"
        )
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise Unavailable(f"{path} is not an Ed25519 private key")
    return _signer(key, path)


def load_signer(storage_root: str, create: bool = True) -> RootSigner | None:
    """The store's signer; made first if ``create`` and there is none (else None)."""
    path = key_path(storage_root)
    try:
        return _load(path)
    except FileNotFoundError:
        if not create:
            return None
    folder = os.path.dirname(path)
    ensure_dir(folder, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temp = os.path.join(folder, f".{KEY_FILE}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if another daemon's key got there first: use that one
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    fsync_dir(folder)
    return _load(path)
