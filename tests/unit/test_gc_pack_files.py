"""gc's deletion of pack files (storage/sqlstore.py ``_drop_packs``), on real files.

Packs are named by their records, so the same chunks uploaded again in the same order, right
after gc dropped their rows, land in a new file under the dropped pack's name with fresh rows.
gc deletes files only after its transaction; a dropped pack's file written since gc began is
that new upload's and must stay.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from smartsyncd.storage.gc import drop_packs as _drop_packs
from smartsyncd.storage.packs import PackStore

ENGAGEMENT = 7


def _pack(packs: PackStore, name: str, age_seconds: float) -> str:
    path = packs.path_for(ENGAGEMENT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(b"pack bytes")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_a_dropped_pack_written_before_gc_began_is_deleted(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path))
    old = _pack(packs, "aa" * 32, age_seconds=3600)
    _drop_packs(packs, ENGAGEMENT, ["aa" * 32], set(), cutoff=time.time() - 600, gc_started=time.time() - 1)
    assert not os.path.exists(old)


def test_a_dropped_pack_written_again_since_gc_began_is_kept(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path))
    gc_started = time.time() - 5
    rewritten = _pack(packs, "bb" * 32, age_seconds=1)  # re-uploaded during gc's transaction
    _drop_packs(packs, ENGAGEMENT, ["bb" * 32], set(), cutoff=time.time() - 600, gc_started=gc_started)
    assert Path(rewritten).read_bytes() == b"pack bytes"


def test_a_dropped_pack_already_gone_is_no_error(tmp_path: Path) -> None:
    packs = PackStore(str(tmp_path))
    assert _drop_packs(packs, ENGAGEMENT, ["cc" * 32], set(), cutoff=time.time(), gc_started=time.time()) == 0
