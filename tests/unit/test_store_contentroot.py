"""The content root's listing and signing key in the store (issue 20), on SQLite and PostgreSQL
(the fixtures of test_storage.py): the live files at the head and at every earlier change,
pages in path order, a seq past the head refused; the key made once, 0600, shared by two stores
on one storage folder (two daemons of a PostgreSQL deployment), the same when two threads make
it at once, and refused when others may read it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_storage import (  # noqa: F401 - fixtures of the store suite
    T0,
    backend,
    commit,
    full,
    on_sync_store,
    pg_cluster,
    put,
    sync_store,
    upload_file,
)

from smartsyncd.core.contentroot import content_root
from smartsyncd.core.errors import BadRequest, Unavailable
from smartsyncd.core.model import ProposedChange
from smartsyncd.storage.rootkey import key_path, load_signer
from smartsyncd.testing.syncpool import open_sync_store, run_sync


@on_sync_store
async def test_listing_at_every_change(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(store, e.id, b"one")
    c2, s2, r2 = await upload_file(store, e.id, b"two")
    c3, s3, r3 = await upload_file(store, e.id, b"three")
    await commit(store, e.id, "b1", [put("Zeta.txt", None, c1, s1), put("Ärzte/b.txt", None, c2, s2)],
                 {"Zeta.txt": full(c1, r1), "Ärzte/b.txt": full(c2, r2)})
    await commit(store, e.id, "b2", [ProposedChange(path="Zeta.txt", kind="delete", base=1)])
    await commit(store, e.id, "b3", [put("Ärzte/b.txt", 2, c3, s3), put("a.txt", None, c1, s1)],
                 {"Ärzte/b.txt": full(c3, r3), "a.txt": full(c1, r1)})
    expected = {
        0: [],
        1: [("Zeta.txt", c1)],
        2: [("Zeta.txt", c1), ("Ärzte/b.txt", c2)],
        3: [("Ärzte/b.txt", c2)],
        4: [("Ärzte/b.txt", c3)],
        5: [("a.txt", c1), ("Ärzte/b.txt", c3)],
    }
    for seq, files in expected.items():
        assert await store.content_listing(e.id, seq) == (seq, 5, files), seq
    assert await store.content_listing(e.id, None) == (5, 5, expected[5])
    assert content_root(expected[5]) == content_root((await store.content_listing(e.id, None))[2])
    page, more = await store.content_listing_page(e.id, 2, None, 1)
    assert (page, more) == ([("Zeta.txt", c1)], True)
    page, more = await store.content_listing_page(e.id, 2, "Zeta.txt", 1)
    assert (page, more) == ([("Ärzte/b.txt", c2)], False)
    assert await store.content_listing_page(e.id, 5, "a.txt", 10) == ([("Ärzte/b.txt", c3)], False)
    with pytest.raises(BadRequest, match="past the engagement's head"):
        await store.content_listing(e.id, 6)


def test_one_key_for_two_stores_on_one_storage_folder(backend, tmp_path: Path) -> None:  # noqa: F811
    a = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    b = open_sync_store(str(backend.data_dir), backend.url, now=lambda: T0)
    try:
        assert run_sync(a.root_signer(create=False)) is None  # nothing made by asking
        first = run_sync(a.root_signer())
        second = run_sync(b.root_signer())
        assert first is not None and second is not None and first.public == second.public
        path = key_path(str(backend.data_dir / "chunks"))
        assert first.path == path and os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        signature = first.sign(b"statement")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        Ed25519PublicKey.from_public_bytes(second.public).verify(signature, b"statement")
    finally:
        run_sync(a.close())
        run_sync(b.close())


def test_two_makers_at_once_end_with_one_key(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    made: list[bytes] = []

    def make() -> None:
        start.wait()
        signer = load_signer(str(tmp_path))
        assert signer is not None
        made.append(signer.public)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 1
    assert sorted(os.listdir(tmp_path / "keys")) == ["root-signing-ed25519.pem"]  # no temp left


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    signer = load_signer(str(tmp_path))
    assert signer is not None
    os.chmod(signer.path, 0o644)
    with pytest.raises(Unavailable, match="chmod 600"):
        load_signer(str(tmp_path))


@on_sync_store
async def test_the_root_outlives_disposal(store) -> None:
    e = await store.create_engagement("acme", "")
    c1, s1, r1 = await upload_file(store, e.id, b"final file")
    await commit(store, e.id, "b1", [put("report.pdf", None, c1, s1)], {"report.pdf": full(c1, r1)})
    before = await store.content_listing(e.id, None)
    await store.finalize(e.id, "admin:root", "signed off", False)
    await store.dispose(e.id, "admin:root")  # no retention applies: disposed of at once
    assert await store.content_listing(e.id, None) == before == (1, 1, [("report.pdf", c1)])
    assert await store.content_listing_page(e.id, 1, None, 10) == ([("report.pdf", c1)], False)
