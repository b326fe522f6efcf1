"""Decomposed (NFD) names through the real ``smartsync`` CLI and the real daemon, on ext4 (Linux
keeps a name's bytes as given, as macOS volumes that store NFD do): alice's copy makes ``café``
decomposed, bob's sees it composed, edits go both ways, and three more syncs move nothing
(issue 16)."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, running_daemon
from reliability import add_engagements, add_users, fsck
from test_case_insensitive import Copy

pytestmark = pytest.mark.integration

NFC = "café.txt"
NFD = unicodedata.normalize("NFD", NFC)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = running_daemon(tmp_path / "daemon")
    try:
        add_users(d, ["alice", "bob"])
        add_engagements(d, ["acme"], {"alice": "editor", "bob": "editor"})
        yield d
        fsck(d)
    finally:
        d.stop()


def listing(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n != ".smartsync")


def moved(report: dict) -> tuple[int, int, int, int]:
    return (report["uploaded"], report["downloaded"], report["deleted_remote"],
            report["deleted_local"])


def test_nfd_name_syncs_as_nfc_both_ways_without_ping_pong(
    server: Daemon, tmp_path: Path
) -> None:
    url = f"{server.url}/acme"
    alice = Copy(server, "alice", tmp_path / "alice", tmp_path / "alice-copy")
    bob = Copy(server, "bob", tmp_path / "bob", tmp_path / "bob-copy")
    alice.clone(url)
    bob.clone(url)

    alice.write(NFD, b"menu v1")
    assert alice.sync()["uploaded"] == 1
    assert bob.sync()["downloaded"] == 1
    assert listing(bob.root) == [NFC]
    assert (bob.root / NFC).read_bytes() == b"menu v1"

    bob.write(NFC, b"menu v2 from bob")
    bob.sync()
    assert alice.sync()["downloaded"] == 1
    assert listing(alice.root) == [NFD]  # written in place, under alice's spelling
    assert (alice.root / NFD).read_bytes() == b"menu v2 from bob"

    alice.write(NFD, b"menu v3 from alice")
    assert alice.sync()["uploaded"] == 1
    assert bob.sync()["downloaded"] == 1
    assert (bob.root / NFC).read_bytes() == b"menu v3 from alice"

    for _round in range(3):
        assert moved(alice.sync()) == (0, 0, 0, 0)
        assert moved(bob.sync()) == (0, 0, 0, 0)
    assert listing(alice.root) == [NFD] and listing(bob.root) == [NFC]
    assert alice.status()["clean"] and bob.status()["clean"]
