"""Per-user settings: folder and file modes, atomic durable writes, URL keys, damage handling."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from smartsyncd.client.errors import UsageError
from smartsyncd.client.userconfig import UserConfig, config_dir, server_key

FP = ":".join(["AB"] * 32)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_dir_follows_xdg_and_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = config_dir()
    assert folder == tmp_path / "xdg" / "smartsync"
    assert mode(folder) == 0o700


def test_config_dir_defaults_to_home_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_dir() == tmp_path / ".config" / "smartsync"


def test_existing_loose_folder_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    config_dir(folder)
    assert mode(folder) == 0o700


def test_round_trip_and_file_mode(tmp_path: Path) -> None:
    config = UserConfig.load(tmp_path / "cfg")
    config.pin("https://Files.Example:8443/", FP)
    config.set_token("https://files.example:8443", "alice", "secret-token")
    config.set_ca_file("https://other.example", "/etc/ca.pem")
    config.save()
    assert mode(config.path) == 0o600
    again = UserConfig.load(tmp_path / "cfg")
    entry = again.server("https://files.example:8443")
    assert (entry.fingerprint, entry.user, entry.token) == (FP, "alice", "secret-token")
    assert again.server("https://other.example:443").ca_file == "/etc/ca.pem"
    assert again.server("https://new.example").fingerprint is None
    again.forget_token("https://files.example:8443")
    again.save()
    final = UserConfig.load(tmp_path / "cfg").server("https://files.example:8443")
    assert final.token is None and final.fingerprint == FP


def test_save_replaces_atomically_leaving_no_temp(tmp_path: Path) -> None:
    config = UserConfig.load(tmp_path)
    config.pin("https://a.example", FP)
    config.save()
    inode_before = config.path.stat().st_ino
    config.set_token("https://a.example", "bob", "t2")
    config.save()
    # A new file was renamed over the old one (never rewritten in place)...
    assert config.path.stat().st_ino != inode_before
    # ...and no temp file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert json.loads(config.path.read_text())["servers"]["https://a.example"]["token"] == "t2"


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = UserConfig.load(tmp_path)
    config.pin("https://a.example", FP)
    config.save()
    before = config.path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    config.set_token("https://a.example", "bob", "t2")
    with pytest.raises(OSError):
        config.save()
    monkeypatch.undo()
    assert config.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="damaged"):
        UserConfig.load(tmp_path)
    (tmp_path / "config.json").write_text('{"servers": {"https://a.example": {"token": 5}}}')
    with pytest.raises(UsageError, match="damaged"):
        UserConfig.load(tmp_path)


def test_server_key_canonical_forms() -> None:
    assert server_key("https://Files.Example:443/") == "https://files.example"
    assert server_key("https://[::1]:8443") == "https://[::1]:8443"
    for bad in ["http://a.example", "files.example", "https://", "https://a:notaport"]:
        with pytest.raises(UsageError):
            server_key(bad)


def test_keychain_opt_in_round_trips_and_never_writes_a_token(tmp_path: Path) -> None:
    """With the token in the OS keychain the file names the keychain, never a token (even one
    left in memory), and a reload keeps the opt-in."""
    config = UserConfig.load(tmp_path)
    entry = config._entry("https://sync.example.com")
    entry.user, entry.keychain, entry.token = "alice", "smartsync", "leaked-if-written"
    config.save()
    raw = config.path.read_text()
    assert "leaked-if-written" not in raw and '"keychain": "smartsync"' in raw
    again = UserConfig.load(tmp_path).server("https://sync.example.com")
    assert (again.keychain, again.user, again.token) == ("smartsync", "alice", None)
