"""The payload of the LISTEN/NOTIFY bridge's notifications (service/pgnotify.py); the bridge
against a real PostgreSQL is in tests/integration/test_pgnotify_bridge.py."""

from __future__ import annotations

from smartsyncd.service.pgnotify import parse_payload


def test_payloads() -> None:
    assert parse_payload("12:345") == (12, 345)
    for bad in ("", "12", "a:1", "1:b", "1:2:3", "-1:2"):
        assert parse_payload(bad) is None
