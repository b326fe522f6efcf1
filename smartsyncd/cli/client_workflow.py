"""The ``smartsync`` commands of the engagement workflow (docs/workflow.md): check-out and
check-in, locks, a file's history and restore, export of the engagement at a moment, and
``verify`` (this copy against the server's signed content root, issue 20)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from smartsyncd.cli.client_args import parse_at, split_source
from smartsyncd.cli.client_session import Session, open_copy
from smartsyncd.client import osfs
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import UsageError
from smartsyncd.client.export import export_engagement
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import normalize_fingerprint
from smartsyncd.client.verify import REASONS, VerifyReport
from smartsyncd.core.errors import SyncError
from smartsyncd.core.locks import parse_duration


def copy_path(path_arg: str) -> tuple[Path, str]:
    """The sync copy holding ``path_arg`` and the path inside it (``/``-separated)."""
    target = Path(path_arg).absolute()
    for root in [target, *target.parents]:
        if osfs.is_file(root / ".smartsync" / "copy.json"):
            if root == target:
                raise UsageError(f"{path_arg} is the copy itself; name a file or folder in it")
            return root, target.relative_to(root).as_posix()
    raise UsageError(f"{path_arg} is not inside a sync copy (no .smartsync folder above it)")


async def _copy_api(
    session: Session, path_arg: str, *, exclusive: bool = False
) -> tuple[SyncCopy, ServerAPI, str]:
    root, rel = copy_path(path_arg)
    copy = SyncCopy.open(root, exclusive=exclusive)
    api = await session.signed_in_api(copy.server_url, copy)
    return copy, api, rel


def _lock_line(lock: dict[str, Any]) -> str:
    until = f" until {lock['expires_at']}" if lock.get("expires_at") else ""
    return f"{lock.get('path')}\t{lock.get('holder')}\tsince {lock.get('since')}{until}"


async def cmd_checkout(session: Session) -> int:
    seconds = None
    if session.args.duration:
        try:
            seconds = max(1, int(parse_duration(session.args.duration).total_seconds()))
        except SyncError as exc:
            raise UsageError(exc.message) from None
    copy, api, rel = await _copy_api(session, session.args.path)
    lock = await api.checkout(copy.engagement, rel, seconds)
    session.out.result(f"Checked out {lock.get('path')}"
                       + (f" until {lock['expires_at']}." if lock.get("expires_at") else "."), lock)
    return 0


async def cmd_checkin(session: Session) -> int:
    copy, api, rel = await _copy_api(session, session.args.path)
    lock = await api.checkin(copy.engagement, rel)
    session.out.result(f"Checked in {lock.get('path')}.", lock)
    return 0


async def cmd_locks(session: Session) -> int:
    copy, api = await open_copy(session, exclusive=False)
    items = await api.locks(copy.engagement)
    session.out.result("\n".join(_lock_line(lk) for lk in items) or "No check-outs.", {"locks": items})
    return 0


async def cmd_history(session: Session) -> int:
    copy, api, rel = await _copy_api(session, session.args.path)
    versions = await api.history(copy.engagement, rel)
    lines = []
    for v in versions:
        number = v.get("version")
        label = f"{number}" if number is not None else "-"
        what = f"{v.get('size')} bytes" if v.get("kind") == "put" else "deleted"
        if v.get("kind") == "put" and not v.get("available", True):
            what += " (past retention)"
        lines.append(f"{label}\t{v.get('user')}\t{v.get('time')}\t{what}")
    session.out.result("\n".join(lines) or f"No versions of {rel}.", {"path": rel, "versions": versions})
    return 0


async def cmd_restore(session: Session) -> int:
    copy, api, rel = await _copy_api(session, session.args.path, exclusive=True)  # it syncs
    answer = await api.restore(copy.engagement, rel, session.args.number, str(uuid.uuid4()))
    results = answer.get("results")
    first = results[0] if isinstance(results, list) and results else {}
    result = first if isinstance(first, dict) else {}
    report = await copy.sync(api, progress=session.progress)
    session.progress.finish()
    data = {"path": rel, "version": session.args.number, "status": result.get("status"),
            "seq": result.get("seq"), "sync": report.to_json()}
    session.out.result(f"Restored version {session.args.number} of {rel} "
                       f"({result.get('status')}, sequence {result.get('seq')}).", data)
    return 0


async def cmd_export(session: Session) -> int:
    url, engagement = split_source(session.args.source)
    at = parse_at(session.args.at)
    api = await session.signed_in_api(url)
    report = await export_engagement(api, engagement, at, Path(session.args.directory))
    data = {"server": url, "engagement": engagement, "at": at.isoformat(), **report.to_json()}
    text = f"Exported {engagement} as of {at.isoformat()} (sequence {report.seq}): {report.files} files."
    if report.missing:
        text += "\n" + "\n".join(f"  past retention, not written: {p}" for p in report.missing)
    session.out.result(text, data)
    return 1 if report.missing else 0


EXIT_DIFFERS = 1  # as diff(1) and cmp(1): the comparison ran and found differences


def describe_verify(report: VerifyReport) -> str:
    """The verdict, then each difference with why, for a person."""
    signed = f"content root {report.root[:16]}..., signed by key {report.fingerprint}"
    if report.identical:
        return (f"This copy is identical to the server's at seq {report.seq} "
                f"({report.files} files; {signed}).")
    lines = [f"This copy differs from the server's at seq {report.seq} "
             f"({len(report.differences)} difference(s), {report.unsynced} not synced yet; {signed}):"]
    for d in report.differences[:200]:
        why = f" ({d.why})" if d.why else ""
        lines.append(f"  {d.path}: {REASONS.get(d.reason, d.reason)}{why}")
    if len(report.differences) > 200:
        lines.append(f"  ... and {len(report.differences) - 200} more (--json lists all)")
    return "\n".join(lines)


async def cmd_verify(session: Session) -> int:
    args = session.args
    expected = normalize_fingerprint(args.key_fingerprint) if args.key_fingerprint else None
    copy, api = await open_copy(session, exclusive=False)  # reads only: works beside a sync
    report = await copy.verify(api, seq=args.seq, expected_key=expected)
    session.out.result(describe_verify(report), report.to_json())
    if report.key_pinned_now:
        session.out.note(f"accepted the server's signing key {report.fingerprint} for this copy "
                         "(compare it with 'smartsync-admin root-key' on the server)")
    if report.skipped:
        session.out.note(f"{len(report.skipped)} path(s) here cannot sync and were left out "
                         "(links, names the server refuses; 'skipped' with --json)")
    if report.ignored:
        session.out.note(f"{len(report.ignored)} ignored path(s) here were left out (.smartsyncignore)")
    if report.seq > report.last_seq and not report.identical:
        session.out.note(f"this copy last synced seq {report.last_seq}; 'smartsync sync' brings it up")
    return 0 if report.identical else EXIT_DIFFERS
