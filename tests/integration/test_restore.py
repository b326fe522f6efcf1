"""A restored server must not strand its copies (issue 17), through the real daemon, the real
``smartsync-admin backup``/``restore`` and the real client library.

Three copies sync to seq 5; the store is put back to its state at seq 2, either by copying its
data folder back (as after a NAS snapshot restore: identity and generation come back too, so
only the record token can tell) or by ``backup`` (taken online) + ``restore``. A colleague then
commits enough after the restore to pass the copies' seq again (4 records: seq 3-6), editing a
file a copy also edited before the restore. Each copy then syncs: no local file is lost, the
server gets what it lacked, the differing version becomes a conflict copy, the post-restore
files arrive, and after another round every copy equals the server, as ``verify`` proves
with the store's signing key, which the backup and the folder copy carry along.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from daemon import Daemon, running_daemon
from reliability import PASSWORD, add_engagements, add_users, copy_files, fsck
from twisted.internet import reactor

from smartsyncd.client.backoff import Backoff
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = running_daemon(tmp_path)
    try:
        add_users(d, ["alice", "bob", "carol", "dave"])
        add_engagements(d, ["audit"], {u: "editor" for u in ("alice", "bob", "carol", "dave")})
        yield d
    finally:
        d.stop()


async def api_for(d: Daemon, user: str) -> ServerAPI:
    api = ServerAPI(
        d.url, reactor=reactor, policy=PinnedPolicy(d.fingerprint),
        backoff=Backoff(initial=0.05, maximum=0.2), max_attempts=4, timeout=20,
    )
    await api.login(user, PASSWORD)
    return api


def server_files(d: Daemon) -> dict[str, str]:
    token = d.login("alice", PASSWORD)
    status, answer = d.request("GET", "/v1/engagements/audit/snapshot", token=token)
    assert status == 200, answer
    return {f["path"]: f["content"] for f in answer["files"]}


def head_now(d: Daemon) -> int:
    status, answer = d.request("GET", "/v1/engagements/audit", token=d.login("alice", PASSWORD))
    assert status == 200, answer
    return int(answer["head"])


def start_on_same_port(d: Daemon, port: int) -> None:
    d.listen = f"ssl:{port}:interface=127.0.0.1"
    d.start()


@pytest.mark.parametrize("how", ["folder-copied-back", "backup-and-restore"])
@pytest_twisted.ensureDeferred
async def test_copies_reconcile_after_the_store_is_restored(daemon: Daemon, tmp_path: Path, how: str) -> None:
    d = daemon
    apis = {u: await api_for(d, u) for u in ("alice", "bob", "carol")}
    copies = {u: await SyncCopy.clone(apis[u], "audit", tmp_path / u) for u in apis}
    try:
        (tmp_path / "alice" / "a.txt").write_bytes(b"a: first version")
        await copies["alice"].sync(apis["alice"])  # seq 1
        (tmp_path / "bob" / "b.txt").write_bytes(b"b: bob's file")
        await copies["bob"].sync(apis["bob"])  # seq 2
        for u in copies:
            await copies[u].sync(apis[u])
            # identical to the server's signed content root; the copy accepts the store's key
            assert (await copies[u].verify(apis[u])).identical
        # the state the store goes back to (seq 2)
        saved = tmp_path / "saved"
        port = d.port
        if how == "folder-copied-back":
            d.stop()
            shutil.copytree(d.data_dir, saved)
            start_on_same_port(d, port)
        else:
            done = d.admin("backup", str(saved))  # online, while the daemon runs
            assert done.returncode == 0, done.stderr
        # after the backup: alice edits a.txt and adds c.txt (seq 3-4), carol adds d.txt (5)
        (tmp_path / "alice" / "a.txt").write_bytes(b"a: alice's second version")
        (tmp_path / "alice" / "c.txt").write_bytes(b"c: alice's new file")
        await copies["alice"].sync(apis["alice"])
        (tmp_path / "carol" / "d.txt").write_bytes(b"d: carol's new file")
        await copies["carol"].sync(apis["carol"])
        for u in copies:
            report = await copies[u].sync(apis[u])
            assert report.last_seq == 5
        before = {u: copy_files(tmp_path / u) for u in copies}

        # the store goes back to seq 2
        d.stop()
        if how == "folder-copied-back":
            shutil.rmtree(d.data_dir)
            shutil.copytree(saved, d.data_dir)
        else:
            shutil.rmtree(d.data_dir)
            done = d.admin("restore", str(saved))
            assert done.returncode == 0, done.stderr
            assert "generation 2" in done.stdout
        start_on_same_port(d, port)
        fsck(d)
        assert set(server_files(d)) == {"a.txt", "b.txt"}

        # dave (a colleague) works on the restored server: 4 records, past the copies' seq 5
        dave_api = await api_for(d, "dave")
        dave = await SyncCopy.clone(dave_api, "audit", tmp_path / "dave")
        copies["dave"], apis["dave"] = dave, dave_api
        (tmp_path / "dave" / "e.txt").write_bytes(b"e: added after the restore")
        await dave.sync(dave_api)
        (tmp_path / "dave" / "a.txt").write_bytes(b"a: dave's version after the restore")
        await dave.sync(dave_api)
        for name in ("f.txt", "g.txt"):
            (tmp_path / "dave" / name).write_bytes(f"{name}: dave".encode())
            await dave.sync(dave_api)
        head = (await dave_api.changes("audit", 0))[0]
        assert head >= 6  # the old copies' seq 5 is a record of the new log: only the token tells

        for u in ("alice", "bob", "carol"):
            await copies[u].sync(apis[u])
            now = copy_files(tmp_path / u)
            # nothing local is lost: every file and version a copy had is still there
            assert set(before[u].values()) <= set(now.values()), (u, sorted(now))
            # the post-restore files arrived
            assert now["e.txt"] == b"e: added after the restore" and now["g.txt"] == b"g.txt: dave"
            assert now["a.txt"] == b"a: dave's version after the restore"

        server = server_files(d)
        # the server got what it lacked (c.txt, d.txt) and alice's lost edit as a conflict copy
        assert {"a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt", "g.txt"} <= set(server)
        conflicts = [p for p in server if p.startswith("a (conflict")]
        assert conflicts, sorted(server)

        for _ in range(2):  # everyone follows the new log: all copies equal the server
            for u in copies:
                await copies[u].sync(apis[u])
        final = copy_files(tmp_path / "alice")
        for u in copies:
            assert copy_files(tmp_path / u) == final, u
        assert set(final) == set(server_files(d))
        assert b"a: alice's second version" in final.values()
        for u in copies:  # the restored store signs with the key the copies accepted before
            proof = await copies[u].verify(apis[u])
            assert proof.identical and proof.seq == head_now(d), (u, proof.differences)
        fsck(d)
    finally:
        for c in copies.values():
            c.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_procedure_of_operations_md(tmp_path: Path) -> None:
    """docs/operations.md's PostgreSQL procedure, run as written: pg_dump first, then the pack
    folder; more work after it; restore the packs, then the database, then db new-generation.
    The copies reconcile and the restored server serves every file byte for byte."""
    import subprocess

    from pg import PG_BIN, PgCluster

    pg = PgCluster().start()
    d: Daemon | None = None
    copies: dict[str, SyncCopy] = {}
    try:
        dbname = pg.create_database("restore")
        d = running_daemon(tmp_path, config_text=f"[database]\nurl = {pg.url(dbname)}\n")
        add_users(d, ["alice", "bob"])
        add_engagements(d, ["audit"], {"alice": "editor", "bob": "editor"})
        apis = {u: await api_for(d, u) for u in ("alice", "bob")}
        copies = {u: await SyncCopy.clone(apis[u], "audit", tmp_path / u) for u in apis}
        (tmp_path / "alice" / "a.txt").write_bytes(b"a: first")
        (tmp_path / "alice" / "big.bin").write_bytes(bytes(range(256)) * 4000)
        await copies["alice"].sync(apis["alice"])
        await copies["bob"].sync(apis["bob"])

        backup = tmp_path / "backup"
        backup.mkdir()
        dump = subprocess.run(
            [str(PG_BIN / "pg_dump"), "--format=custom", f"--file={backup / 'metadata.dump'}", pg.url(dbname)],
            capture_output=True, text=True,
        )
        assert dump.returncode == 0, dump.stderr
        shutil.copytree(d.data_dir / "chunks", backup / "chunks")  # after the dump
        shutil.copytree(d.data_dir / "tls", backup / "tls")

        (tmp_path / "bob" / "b.txt").write_bytes(b"b: after the backup")
        (tmp_path / "bob" / "a.txt").write_bytes(b"a: bob's edit after the backup")
        await copies["bob"].sync(apis["bob"])
        await copies["alice"].sync(apis["alice"])
        before = {u: copy_files(tmp_path / u) for u in copies}

        # the machine is lost: restore packs first, then the database, then a new generation
        port = d.port
        d.stop()
        shutil.rmtree(d.data_dir)
        shutil.copytree(backup / "chunks", d.data_dir / "chunks")
        shutil.copytree(backup / "tls", d.data_dir / "tls")
        pg.sql(f'DROP DATABASE "{dbname}"')
        pg.sql(f'CREATE DATABASE "{dbname}"')
        restore = subprocess.run(
            [str(PG_BIN / "pg_restore"), f"--dbname={pg.url(dbname)}", str(backup / "metadata.dump")],
            capture_output=True, text=True,
        )
        assert restore.returncode == 0, restore.stderr
        done = d.admin("db", "new-generation")
        assert done.returncode == 0 and "generation 2" in done.stdout, done.stderr
        fsck(d)
        start_on_same_port(d, port)

        for _ in range(2):
            for u in copies:
                await copies[u].sync(apis[u])
        for u in copies:
            now = copy_files(tmp_path / u)
            assert set(before[u].values()) <= set(now.values()), u
        final = copy_files(tmp_path / "alice")
        assert copy_files(tmp_path / "bob") == final
        # every file the server lists is served byte for byte (a fresh clone of it)
        fresh_api = await api_for(d, "alice")
        fresh = await SyncCopy.clone(fresh_api, "audit", tmp_path / "fresh")
        copies["fresh"] = fresh
        assert copy_files(tmp_path / "fresh") == final
        assert final["b.txt"] == b"b: after the backup" and final["big.bin"] == bytes(range(256)) * 4000
        fsck(d)
    finally:
        for c in copies.values():
            c.close()
        if d is not None:
            d.stop()
        pg.stop()


def test_restore_refuses_what_it_must_not_overwrite(daemon: Daemon, tmp_path: Path) -> None:
    """restore refuses a non-empty data folder without --force (and then moves it aside, never
    deletes it), refuses an unfinished backup, and backup refuses a non-empty DEST."""
    saved = tmp_path / "saved"
    assert daemon.admin("backup", str(saved)).returncode == 0
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("not ours")
    refused = daemon.admin("backup", str(occupied))
    assert refused.returncode == 1 and "not an empty folder" in refused.stderr
    daemon.stop()
    refused = daemon.admin("restore", str(saved))  # the data folder holds the live store
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    unfinished = tmp_path / "unfinished"
    shutil.copytree(saved, unfinished)
    (unfinished / "BACKUP.json").unlink()
    refused = daemon.admin("restore", "--force", str(unfinished))
    assert refused.returncode == 1 and "not a finished smartsync backup" in refused.stderr
    done = daemon.admin("restore", "--force", str(saved))
    assert done.returncode == 0, done.stderr
    aside = [p for p in daemon.data_dir.parent.iterdir() if ".before-restore-" in p.name]
    assert len(aside) == 1 and (aside[0] / "metadata.sqlite3").exists()
    fsck(daemon)
