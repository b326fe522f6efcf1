"""TLS trust without a connection: fingerprint forms, CA files and the system store (the probe,
pinning and CA verification against a real TLS server on loopback:
tests/integration/test_trust_loopback.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartsyncd.client.errors import UsageError
from smartsyncd.client.trust import (
    CAPolicy,
    normalize_fingerprint,
)


def test_normalize_fingerprint_forms() -> None:
    hexits = "ab" * 32
    want = ":".join(["AB"] * 32)
    assert normalize_fingerprint(hexits) == want
    assert normalize_fingerprint(want.lower()) == want
    assert normalize_fingerprint(" SHA256:" + want + " ") == want
    for bad in ["", "ab" * 31, "zz" * 32, "ab" * 33]:
        with pytest.raises(UsageError):
            normalize_fingerprint(bad)


def test_ca_policy_needs_a_readable_pem(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        CAPolicy(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="no PEM certificate"):
        CAPolicy(junk)


def test_system_trust_without_any_root_is_a_clear_error() -> None:
    from smartsyncd.client.trust import SystemTrustPolicy

    with pytest.raises(UsageError, match="no trusted root certificates"):
        SystemTrustPolicy(roots=list)


def test_ca_policy_names_the_system_store_by_its_keyword(tmp_path) -> None:
    from smartsyncd.client.trust import SystemTrustPolicy, ca_policy

    assert isinstance(ca_policy("system"), SystemTrustPolicy)
    with pytest.raises(UsageError, match="cannot read CA file"):
        ca_policy(tmp_path / "missing.pem")
