"""scrypt password hashes: format, round trip, and refusal of anything unexpected."""

from __future__ import annotations

import base64

from smartsyncd.auth.passwords import hash_password, verify_password


def test_hash_format_and_round_trip() -> None:
    stored = hash_password("correct horse")
    kind, n, r, p, salt, digest = stored.split("$")
    assert (kind, n, r, p) == ("scrypt", str(2**17), "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert verify_password("correct horse", stored)


def test_wrong_password_is_refused() -> None:
    stored = hash_password("correct horse")
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)
    assert not verify_password("Correct horse", stored)


def test_salt_makes_every_hash_different() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert verify_password("same", a) and verify_password("same", b)


def test_non_ascii_password() -> None:
    stored = hash_password("Prüfung€2026")
    assert verify_password("Prüfung€2026", stored)
    assert not verify_password("Prufung€2026", stored)


def test_unknown_or_malformed_formats_are_false() -> None:
    good = hash_password("pw")
    kind, n, r, p, salt, digest = good.split("$")
    bad = [
        "",
        "pw",
        "bcrypt$2b$12$abc",
        good.replace("scrypt", "SCRYPT", 1),
        "$".join(["scrypt", "x", r, p, salt, digest]),
        "$".join(["scrypt", "1000", r, p, salt, digest]),  # n not a power of two
        "$".join(["scrypt", str(2**30), r, p, salt, digest]),  # absurd cost
        "$".join(["scrypt", n, r, p, "not base64!", digest]),
        "$".join(["scrypt", n, r, p, salt, ""]),
        good + "$extra",
    ]
    for stored in bad:
        assert verify_password("pw", stored) is False, stored


def test_lone_surrogate_password_does_not_crash() -> None:
    assert verify_password("\ud800", hash_password("pw")) is False
