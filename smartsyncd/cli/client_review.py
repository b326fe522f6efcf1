"""The ``smartsync`` commands of the conflict review queue (docs/workflow.md, "Conflict
review"): ``conflicts`` lists the copy's conflict copies and the server's items (the user's
own, or every open one with ``--all``, which needs the reviewer role), and ``resolve`` lets the
reviewer choose a version or send a merged file, then syncs the copy."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from smartsyncd.cli.client_session import Session
from smartsyncd.client import osfs
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import AuthError, ConflictsLeft, NetworkError, UsageError
from smartsyncd.client.review import describe, upload_merge
from smartsyncd.client.wire import ConflictInfo
from smartsyncd.core.chunking import chunk_buffer
from smartsyncd.core.model import ChunkRef

MAX_MERGE_BYTES = 2 * 1024**3  # read into memory whole: a merged working paper, not a disk image


async def cmd_conflicts(session: Session) -> int:
    """Local conflict copies (no server needed), then the server's items: the user's own open
    and resolved ones, or with ``--all`` every open one. Exit 1 while any is open."""
    args = session.args
    copy = SyncCopy.open(Path(args.directory), exclusive=False)
    names = list(copy.conflicts())
    items: list[ConflictInfo] | None = None
    try:
        api = await session.signed_in_api(copy.server_url)
        items = await api.conflicts(copy.engagement, everyone=args.all, resolved=not args.all)
    except (NetworkError, AuthError) as exc:
        if args.all:
            raise
        session.out.note(f"server not reached ({exc}); listing this copy's conflict copies only")
    open_items = [i for i in items or [] if i.state == "open"]
    lines = list(names) if names else ["No conflict copies."]
    if open_items:
        lines += ["Open conflicts on the server" + (" (all):" if args.all else " (yours):")]
        lines += [f"  {describe(i)}" for i in open_items]
    resolved = [i for i in items or [] if i.state == "resolved"]
    if resolved:
        lines += ["Resolved:"] + [f"  {describe(i)}" for i in resolved]
    data: dict[str, Any] = {"conflicts": names,
                            "items": None if items is None else [i.to_json() for i in items]}
    session.out.result("\n".join(lines), data)
    return ConflictsLeft.exit_code if names or open_items else 0


def _read_merge(path: Path) -> list[tuple[ChunkRef, bytes | memoryview]]:
    if not osfs.is_file(path):
        raise UsageError(f"--merged {path}: no such file")
    if osfs.stat_path(path).st_size > MAX_MERGE_BYTES:
        raise UsageError(f"--merged {path}: larger than {MAX_MERGE_BYTES} bytes")
    return list(chunk_buffer(osfs.read_bytes(path)))


async def cmd_resolve(session: Session) -> int:
    """Resolve item ``ID`` as the reviewer saw it listed, then sync this copy."""
    args = session.args
    choice = "ours" if args.ours else "theirs" if args.theirs else "merged"
    pieces = None if args.merged is None else await deferToThread(_read_merge, Path(args.merged))
    copy = SyncCopy.open(Path(args.directory), exclusive=True)  # it syncs afterwards
    api = await session.signed_in_api(copy.server_url)
    api.copy_id = copy.copy_id
    listed = {i.id: i for i in await api.conflicts(copy.engagement, everyone=True, resolved=True)}
    item = listed.get(args.id)
    if item is None:
        raise UsageError(f"no conflict #{args.id} in {copy.engagement} (see 'smartsync conflicts --all')")
    merged = None if pieces is None else await upload_merge(api, copy.engagement, pieces)
    answer = await api.resolve_conflict(copy.engagement, item, choice, str(uuid.uuid4()), merged)
    report = await copy.sync(api, progress=session.progress)
    session.progress.finish()
    done = answer.conflict
    data = {"conflict": done.to_json(), "head": answer.head, "sync": report.to_json()}
    session.out.result(f"Resolved #{done.id} {done.path}: {done.resolution} "
                       f"(sequence {done.resolved_seq}); {done.copy_path} removed, kept in history.",
                       data)
    return 0
