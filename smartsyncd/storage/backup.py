"""``smartsync-admin backup DEST`` / ``restore DEST`` for a SQLite store (docs/operations.md).

Backup, while the daemon runs: the database first, through SQLite's online backup API
(``Connection.backup``: one consistent snapshot, even with commits going on), then every pack
that snapshot references (packs are write-once, and a pack is durable before its rows are
committed, so each one the snapshot names exists), the content root signing key (copies pin
it, ``storage/rootkey``), then the TLS folder (copies pin the certificate), and ``BACKUP.json`` last: a folder without it is an unfinished backup and
restore refuses it. A referenced pack gone meanwhile (gc collected it after the snapshot) fails
the backup: run it again.

Every storage volume is covered: packs of engagements on the default volume go to
``DEST/chunks``, those on volume V to ``DEST/volumes/V``; restore puts each back on the
configured volume of that name (refusing, before copying anything, when one is not configured).

Restore, with the daemon stopped, into the configured data folder: refused when that folder
holds anything unless ``force`` (then its contents are moved aside, never deleted). Files are
copied durably (temp, fsync, rename, fsync the folder); the caller then opens the store and
starts a new generation, so every copy reconciles (``storage/history.py``).

Everything here blocks: run it in a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from smartsyncd.storage.durable import ensure_dir, fsync_dir, write_durably
from smartsyncd.storage.rootkey import key_path

MARKER = "BACKUP.json"
DB_NAME = "metadata.sqlite3"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore that cannot be made (one line for the admin)."""


def _copy_durably(src: str, dst: str, mode: int | None = None) -> int:
    ensure_dir(os.path.dirname(dst))
    tmp = dst + ".restore-tmp"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(tmp, mode if mode is not None else os.stat(src).st_mode & 0o777)
    os.replace(tmp, dst)
    fsync_dir(os.path.dirname(dst))
    return os.path.getsize(dst)


def _pack_path(root: str, engagement_id: int, name: str) -> str:
    return os.path.join(root, str(engagement_id), name[:2], name + ".pack")


def _volume_roots(packs_root: str | Mapping[str, str]) -> dict[str, str]:
    return {"default": packs_root} if isinstance(packs_root, str) else dict(packs_root)


def _backup_folder(dest: str, volume: str) -> str:
    return os.path.join(dest, "chunks") if volume == "default" else os.path.join(dest, "volumes", volume)


def backup_sqlite(db_path: str, packs_root: str | Mapping[str, str], tls_dir: str, dest: str) -> dict[str, object]:
    """Write a backup of the store into ``dest`` (new or empty); returns its description.
    ``packs_root``: the pack folder, or every volume's folder by name."""
    roots = _volume_roots(packs_root)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise BackupError(f"{dest} exists and is not an empty folder")
    if not os.path.exists(db_path):
        raise BackupError(f"no database at {db_path}")
    ensure_dir(dest, mode=0o700)
    target = os.path.join(dest, DB_NAME)
    src = sqlite3.connect(db_path)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one consistent snapshot of the live database
        finally:
            dst.close()
    finally:
        src.close()
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    check = sqlite3.connect(target)
    try:
        packs = check.execute("SELECT engagement_id, id FROM packs ORDER BY engagement_id, id").fetchall()
        store_id, generation = check.execute("SELECT store_id, generation FROM store_meta").fetchone()
        heads = dict(check.execute("SELECT name, head FROM engagements").fetchall())
        placed = {int(i): v or "default" for i, v in check.execute("SELECT id, volume FROM engagements")}
    finally:
        check.close()
    missing = sorted(set(placed.values()) - set(roots))
    if missing:
        raise BackupError(f"engagements live on volumes not in [storage] volumes: {', '.join(missing)}")
    total = 0
    for engagement_id, name in packs:  # after the snapshot: every pack it names
        volume = placed[int(engagement_id)]
        source = _pack_path(roots[volume], int(engagement_id), str(name))
        if not os.path.exists(source):
            raise BackupError(
                f"pack {name} is gone (collected, or its engagement moved, after the snapshot?): "
                "run the backup again"
            )
        target = _pack_path(_backup_folder(dest, volume), int(engagement_id), str(name))
        total += _copy_durably(source, target)
    signing_key = key_path(roots["default"])  # content roots stay signed by the same key (issue 20)
    if os.path.exists(signing_key):
        _copy_durably(signing_key, key_path(os.path.join(dest, "chunks")), 0o600)
    if os.path.isdir(tls_dir):
        for entry in sorted(os.listdir(tls_dir)):
            path = os.path.join(tls_dir, entry)
            if os.path.isfile(path):
                _copy_durably(path, os.path.join(dest, "tls", entry))
    info: dict[str, object] = {
        "format": FORMAT, "created": datetime.now(UTC).isoformat(), "store": store_id,
        "generation": generation, "packs": len(packs), "pack_bytes": total, "heads": heads,
        "volumes": sorted(set(placed.values())),
    }
    write_durably(os.path.join(dest, MARKER), json.dumps(info, indent=1).encode(), mode=0o600)
    fsync_dir(dest)
    return info


def restore_sqlite(
    source: str, data_dir: str, db_path: str, packs_root: str | Mapping[str, str], force: bool
) -> dict[str, object]:
    """Copy a backup made by ``backup_sqlite`` into ``data_dir``; returns its description."""
    roots = _volume_roots(packs_root)
    try:
        with open(os.path.join(source, MARKER), "rb") as f:
            info = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise BackupError(f"{source} is not a finished smartsync backup ({MARKER}: {e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise BackupError(f"{source}: unknown backup format")
    saved = os.path.join(source, "volumes")
    backed_up = sorted(os.listdir(saved)) if os.path.isdir(saved) else []
    unknown = [v for v in backed_up if v not in roots]
    if unknown:
        raise BackupError(f"the backup holds volumes not in [storage] volumes: {', '.join(unknown)}")
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        if not force:
            raise BackupError(
                f"{data_dir} is not empty: restore into an empty data folder, or give --force "
                "(its contents are then moved aside, not deleted)"
            )
        aside = f"{data_dir.rstrip(os.sep)}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(data_dir, aside)
        fsync_dir(os.path.dirname(os.path.abspath(data_dir)))
    ensure_dir(data_dir, mode=0o700)
    for volume in ["default", *backed_up]:
        chunks = _backup_folder(source, volume)
        for folder, _dirs, files in os.walk(chunks):
            for name in files:
                src = os.path.join(folder, name)
                _copy_durably(src, os.path.join(roots[volume], os.path.relpath(src, chunks)))
    for root in roots.values():
        ensure_dir(root)
    tls = os.path.join(source, "tls")
    if os.path.isdir(tls):
        for name in os.listdir(tls):
            _copy_durably(os.path.join(tls, name), os.path.join(data_dir, "tls", name))
    _copy_durably(os.path.join(source, DB_NAME), db_path, 0o600)  # the database last
    return info
