"""Local account password hashing: scrypt with a random salt, in a self-describing string.

Format: ``scrypt$n$r$p$salt_b64$hash_b64`` (standard base64): the cost is stored per hash, so
hashes made with an older, lower cost still verify, and ``needs_rehash`` tells the sign-in to
store a new one. The cost is OWASP's current minimum for scrypt (N=2^17, r=8, p=1: 128 MiB and
about 0.3 s of CPU here; it was N=2^14, 16 MiB). Both hashing functions are blocking: callers
run them in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

N = 2**17
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Bounds on parameters read back from a stored hash, so a corrupt or hostile row cannot make
# one verification take minutes or gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 256 * 1024 * 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEM, dklen=dklen
    )


def hash_password(password: str) -> str:
    """Return a new salted scrypt hash of ``password`` in the ``scrypt$...`` format."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    return "$".join(
        (
            "scrypt",
            str(N),
            str(R),
            str(P),
            base64.b64encode(salt).decode("ascii"),
            base64.b64encode(digest).decode("ascii"),
        )
    )


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for a mismatch or any unknown format."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return False
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return False
    if not salt or not 16 <= len(expected) <= 64:
        return False
    try:
        actual = _scrypt(password, salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` is a scrypt hash made with less than today's cost."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return False
    return n < N or r < R or p < P
