"""``smartsync-admin backup DEST``, ``restore DEST [--force]`` and ``db new-generation``.

Backup and restore are for a SQLite store (``storage/backup.py``); a PostgreSQL deployment
follows docs/operations.md (pg_dump, then the pack folder; restore the packs, then the
database, then ``db new-generation``). Every restore or rollback of the store must end with a
new generation, so copies that synced past the restored state reconcile instead of being
stranded (docs/reliability.md, "Restores"): ``restore`` does it itself.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from twisted.internet.threads import deferToThread

from smartsyncd.service.config import ServerConfig
from smartsyncd.storage.backup import BackupError, backup_sqlite, restore_sqlite


def add_parsers(commands: Any) -> None:
    backup = commands.add_parser(
        "backup", help="copy the SQLite store (consistent, while it runs) and its packs to DEST"
    )
    backup.add_argument("dest", help="a new or empty folder")
    restore = commands.add_parser(
        "restore", help="bring a backup back into the data folder (daemon stopped); new generation"
    )
    restore.add_argument("dest", help="a folder written by 'backup'")
    restore.add_argument(
        "--force", action="store_true", help="restore over a non-empty data folder (moved aside)"
    )


def _paths(config: ServerConfig) -> tuple[str, dict[str, str]]:
    """The database file, and every storage volume's folder by name."""
    from smartsyncd.storage.sqlite import DB_FILENAME

    return os.path.join(config.data_dir, DB_FILENAME), config.volume_folders


async def new_generation(store: Any, out: TextIO) -> int:
    store_id, generation = await store.bump_generation()
    out.write(f"store {store_id}: generation {generation} (copies reconcile on their next sync)\n")
    return 0


async def run_backup(reactor: Any, args: argparse.Namespace, config: ServerConfig, out: TextIO) -> int:
    from smartsyncd.cli.context import AdminError

    if config.database_url:
        raise AdminError(
            "backup/restore handle SQLite stores; for PostgreSQL follow docs/operations.md "
            "(pg_dump, then the pack folder)"
        )
    db_path, packs = _paths(config)
    try:
        if args.command == "backup":
            info = await deferToThread(backup_sqlite, db_path, packs, config.tls_dir, args.dest)
            out.write(
                f"backup in {args.dest}: store {info['store']} generation {info['generation']}, "
                f"{info['packs']} packs ({info['pack_bytes']} bytes)\n"
            )
            return 0
        info = await deferToThread(restore_sqlite, args.dest, config.data_dir, db_path, packs, args.force)
    except (BackupError, OSError) as e:
        raise AdminError(str(e)) from None
    from smartsyncd.storage.sqlite import open_server_store

    store = await open_server_store(
        config.data_dir, reactor=reactor, storage_path=config.storage_path, volumes=dict(config.volumes)
    )
    try:
        out.write(f"restored {args.dest} (made {info.get('created')}) into {config.data_dir}\n")
        return await new_generation(store, out)
    finally:
        await store.close()
