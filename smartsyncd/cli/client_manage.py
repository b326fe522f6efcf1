"""The ``smartsync`` commands of an engagement's admins (issue 17; docs/workflow.md).

``locks break PATH``, ``copies list|abandon``, ``finalize``, ``reopen``, ``grants``, ``grant``
``revoke`` and ``ignore-rules`` (show, ``--set FILE``, ``--clear``), each over ``client.manage.EngagementAdmin``. The engagement is named by
``WHERE``: a sync copy's folder (default: the current one) or ``URL/ENGAGEMENT``, so an admin
needs no copy. A member whose role is not ``admin`` is refused by the server (exit 5, the
message naming the role needed).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from twisted.internet.threads import deferToThread

from smartsyncd.cli.client_args import split_source
from smartsyncd.cli.client_session import Session
from smartsyncd.cli.client_workflow import cmd_locks, copy_path
from smartsyncd.client import osfs
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.errors import UsageError
from smartsyncd.client.manage import CopyInfo, EngagementAdmin, GrantInfo, GrantKind
from smartsyncd.core.ignore import MAX_RULES_BYTES


def _is_url(where: str) -> bool:
    return "://" in where


async def _admin(session: Session, where: str) -> EngagementAdmin:
    """The admin calls for the engagement of a copy folder or of ``URL/ENGAGEMENT``."""
    if _is_url(where):
        url, engagement = split_source(where)
    else:
        copy = SyncCopy.open(Path(where), exclusive=False)
        url, engagement = copy.server_url, copy.engagement
    return EngagementAdmin(await session.signed_in_api(url), engagement)


def _reason(session: Session) -> str:
    reason = (session.args.reason or "").strip()
    if not reason:
        raise UsageError("give --reason: why (it is kept in the audit trail)")
    return reason


async def cmd_locks_or_break(session: Session) -> int:
    """``locks [DIR]`` lists; ``locks break PATH --reason ...`` ends another's check-out."""
    args = session.args
    if args.directory != "break":
        if args.path is not None:
            raise UsageError("'locks' takes one folder (to break a check-out: locks break PATH)")
        return await cmd_locks(session)
    if args.path is None:
        raise UsageError("name the checked-out file or folder: locks break PATH --reason ...")
    if _is_url(args.path):  # URL/ENGAGEMENT/PATH
        parts = urlsplit(args.path)
        engagement, _, rel = parts.path.strip("/").partition("/")
        if not rel:
            raise UsageError("expected URL/ENGAGEMENT/PATH, e.g. https://files.example/acme-2026/TB.xlsx")
        admin = await _admin(session, f"{parts.scheme}://{parts.netloc}/{engagement}")
        rel = unquote(rel)
    else:
        root, rel = copy_path(args.path)
        admin = await _admin(session, str(root))
    lock = await admin.break_lock(rel, _reason(session))
    session.out.result(
        f"Broke the check-out of {lock.path} held by {lock.holder} since {lock.since}.",
        {"engagement": admin.engagement, "lock": {"path": lock.path, "holder": lock.holder,
                                                  "since": lock.since, "expires_at": lock.expires_at}},
    )
    return 0


def _copy_line(c: CopyInfo) -> str:
    state = "active" if c.abandoned_at is None else f"abandoned {c.abandoned_at} by {c.abandoned_by}"
    return (f"{c.copy}\t{c.user}\t{c.host}\t{c.last_contact}\t{c.unsynced}"
            f"\t{c.unsynced_since or '-'}\t{state}")


async def cmd_copies(session: Session) -> int:
    args = session.args
    admin = await _admin(session, args.where)
    if args.action == "list":
        copies = await admin.copies()
        text = "\n".join(["copy\tuser\thost\tlast contact\tunsynced\tsince\tstate",
                          *(_copy_line(c) for c in copies)])
        session.out.result(text, {"engagement": admin.engagement, "copies": [c.to_json() for c in copies]})
        return 0
    c = await admin.abandon_copy(args.copy, wipe=args.wipe)
    then = (" It is wiped at its next contact with the server (its files, settings and stored"
            " sign-in), nothing uploaded first." if args.wipe else "")
    session.out.result(f"Abandoned copy {c.copy} ({c.user} on {c.host}); it can never commit again.{then}",
                       {"engagement": admin.engagement, "copy": c.to_json(), "wipe": args.wipe})
    return 0


async def cmd_finalize(session: Session) -> int:
    admin = await _admin(session, session.args.where)
    answer = await admin.finalize(_reason(session), session.args.force)
    for c in answer.unsynced_copies:
        session.out.note(f"warning: copy {c.copy} ({c.user} on {c.host}) holds {c.unsynced} unsynced change(s)")
    info = answer.finalized
    session.out.result(f"Finalized {admin.engagement} at {info.at}: {info.reason}",
                       {"engagement": admin.engagement, "finalized": info.to_json(),
                        "unsynced_copies": [c.to_json() for c in answer.unsynced_copies]})
    return 0


async def cmd_reopen(session: Session) -> int:
    admin = await _admin(session, session.args.where)
    reason = _reason(session)
    await admin.reopen(reason)
    session.out.result(f"Reopened {admin.engagement}: {reason}",
                       {"engagement": admin.engagement, "finalized": None, "reason": reason})
    return 0


def _shown(g: GrantInfo) -> str:
    if g.principal in (g.name, "local:" + g.name):
        return g.name
    return f"{g.name} ({g.principal})"


def _grantee(session: Session) -> tuple[GrantKind, str]:
    if session.args.user is not None:
        return "user", session.args.user
    return "group", session.args.group


async def cmd_grants(session: Session) -> int:
    admin = await _admin(session, session.args.where)
    grants = await admin.grants()
    text = "\n".join(f"{g.kind}\t{_shown(g)}\t{g.role}" for g in grants) or "No grants."
    session.out.result(text, {"engagement": admin.engagement, "grants": [g.to_json() for g in grants]})
    return 0


async def cmd_grant(session: Session) -> int:
    admin = await _admin(session, session.args.where)
    kind, name = _grantee(session)
    g = await admin.grant(kind, name, session.args.role)
    session.out.result(f"Granted {g.role} on {admin.engagement} to {g.kind} {_shown(g)}.",
                       {"engagement": admin.engagement, "grant": g.to_json()})
    return 0


async def cmd_revoke(session: Session) -> int:
    admin = await _admin(session, session.args.where)
    kind, name = _grantee(session)
    revoked = await admin.revoke(kind, name)
    text = "\n".join(f"Revoked {g.role} on {admin.engagement} from {g.kind} {_shown(g)}." for g in revoked)
    session.out.result(text, {"engagement": admin.engagement, "revoked": [g.to_json() for g in revoked]})
    return 0


async def cmd_ignore_rules(session: Session) -> int:
    """Show the engagement-wide ignore rules, or set them from a file, or clear them."""
    admin = await _admin(session, session.args.where)
    args = session.args
    if args.clear or args.set is not None:
        text = None if args.clear else await deferToThread(_read_rules_file, args.set)
        digest = await admin.set_ignore_rules(text)
        said = f"Cleared the ignore rules of {admin.engagement}." if text is None else (
            f"Set the ignore rules of {admin.engagement} (digest {digest}).")
        session.out.result(said, {"engagement": admin.engagement, "digest": digest})
        return 0
    rules, digest = await admin.ignore_rules()
    session.out.result((rules or "No engagement ignore rules.").rstrip("\n"),
                       {"engagement": admin.engagement, "rules": rules, "digest": digest})
    return 0


def _read_rules_file(name: str) -> str:
    try:
        data = osfs.read_bytes(Path(name))
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > MAX_RULES_BYTES:
        raise UsageError(f"{name} is over {MAX_RULES_BYTES} bytes; nothing changed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text; nothing changed") from None
