"""service/hardening.py: which secrets are reported, and the data folder made private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from smartsyncd.service.hardening import readable_by_others, tighten_data_dir


def test_secrets_group_or_others_may_read_are_reported(tmp_path: Path) -> None:
    files = {}
    for name, mode in (("key", 0o600), ("bind", 0o640), ("open", 0o604), ("owner_rw", 0o400)):
        files[name] = tmp_path / name
        files[name].write_text("secret")
        os.chmod(files[name], mode)
    found = readable_by_others([
        ("TLS private key", str(files["key"])),
        ("LDAP bind password file", str(files["bind"])),
        ("other", str(files["open"])),
        ("owner only", str(files["owner_rw"])),
        ("unset", None),
        ("missing", str(tmp_path / "nope")),
    ])
    assert found == [("LDAP bind password file", str(files["bind"]), 0o640),
                     ("other", str(files["open"]), 0o604)]


def test_data_folder_tightened_once(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert tighten_data_dir(str(folder)) is True
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert tighten_data_dir(str(folder)) is False
    assert tighten_data_dir(str(tmp_path / "missing")) is False
