"""A branch office's credential: the secret its daemon shows central to prefetch (issue 18).

``smartsync-admin branch add NAME`` (on central) draws a secret with ``new_secret`` and prints
it once; the database keeps only ``secret_hash`` (SHA-256, as session tokens are kept). The
branch keeps the secret in a file readable by its owner only (``[branch] credential_file``,
``read_credential``: a file others may read is refused) and sends it as
``Authorization: SmartsyncBranch <secret>``: a scheme of its own, so it can never pass where a
user's ``Bearer`` token is expected (no sign-in, no session, no write). Central answers it only
on the chunk and manifest reads of engagements the branch carries (``web/branchauth.py``).
The secret is never logged.
"""

from __future__ import annotations

import os
import re
import secrets
import stat

from smartsyncd.auth.sessions import hash_token

SCHEME = "SmartsyncBranch"
_PREFIX = "ssbr_"
_HEADER = re.compile(rf"{SCHEME} ({_PREFIX}[A-Za-z0-9_-]{{43}})")


class CredentialFileError(ValueError):
    """The credential file is missing, unreadable, open to others or not a credential."""


def new_secret() -> str:
    """256 random bits, recognisable as a branch secret."""
    return _PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hash_token(secret)


def header_value(secret: str) -> bytes:
    return f"{SCHEME} {secret}".encode("ascii")


def uses_branch_scheme(authorization: bytes | None) -> bool:
    """True for any ``Authorization: SmartsyncBranch ...`` header, well formed or not."""
    return authorization is not None and authorization[: len(SCHEME) + 1].lower() == SCHEME.lower().encode() + b" "


def secret_from_header(authorization: bytes) -> str | None:
    """The secret of a well-formed header, else None."""
    match = _HEADER.fullmatch(authorization.decode("latin-1").strip())
    return match.group(1) if match else None


def write_credential(path: str, secret: str) -> None:
    """Write the secret to a new file only its owner may read (0600), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secret + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_credential(path: str) -> str:
    """The secret in ``path``; ``CredentialFileError`` (never naming the secret) otherwise."""
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialFileError(
                f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
            )
        with open(path, encoding="ascii") as f:
            text = f.read(256).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialFileError(f"cannot read the branch credential {path}: {e}") from None
    if not re.fullmatch(rf"{_PREFIX}[A-Za-z0-9_-]{{43}}", text):
        raise CredentialFileError(
            f"{path} does not hold a branch credential (the line smartsync-admin branch add printed)"
        )
    return text
