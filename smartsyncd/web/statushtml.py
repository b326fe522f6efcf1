"""HTML of the admin status page (issue 17): pure functions from values to a page.

No I/O, no reactor, no clock (``now`` comes in): web/statuspage.py gathers the values and
serves what these return. Every value that came from a user, a client or the store (titles,
paths, user and host names, request paths, reasons) goes through ``esc`` (``html.escape`` with
quotes) or, inside a URL, ``urlencode`` then ``esc``; the only markup is this module's own.
The page needs no JavaScript; its one style sheet is inline, allowed by its hash in the
Content-Security-Policy (``CSP``), so an injected ``<style>`` or ``<script>`` would not run
even if escaping were ever missed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import urlencode

from smartsyncd.core.locks import Lock
from smartsyncd.storage.api import ChainReport, CopyRecord, SessionRecord
from smartsyncd.storage.statusview import EngagementSummary, StatusOverview
from smartsyncd.web.refusals import Refusal

ROOT = "/status"
MAX_ROWS = 1000  # rows of one table

_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}.num{text-align:right}.warn{color:#a00;font-weight:bold}"
    ".ok{color:#060}nav form{display:inline}nav a{margin-right:1em}"
    "input[type=text],input[type=password]{width:20em}.box{border:1px solid #ccc;padding:1em;"
    "max-width:40em}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def link(page: str, /, **query: str) -> str:
    """A URL under the page's root, query values encoded, escaped for an attribute."""
    url = f"{ROOT}/{page}" if page else ROOT
    return esc(f"{url}?{urlencode(query)}" if query else url)


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str,
          limit: int = MAX_ROWS) -> str:
    """A table of already-escaped cells (``headers`` are this module's own words), at most
    ``limit`` rows: a page of 10,000 parked long-polls or sessions would help nobody."""
    kept = list(rows)
    if not kept:
        return f"<p>{esc(empty)}</p>"
    more = f"<p>{len(kept) - limit} more not shown.</p>" if len(kept) > limit else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in kept[:limit])
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def hidden_csrf(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


def page(title: str, body: str, admin: str | None = None, csrf: str = "") -> str:
    nav = ""
    if admin is not None:
        nav = (
            f'<nav><a href="{link("")}">Overview</a><a href="{link("audit")}">Audit chains</a>'
            f"signed in as <b>{esc(admin)}</b> "
            f'<form method="post" action="{link("signout")}">{hidden_csrf(csrf)}'
            '<button type="submit">Sign out</button></form></nav>'
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} - smartsyncd</title><style>{_STYLE}</style></head>"
        f"<body>{nav}<h1>{esc(title)}</h1>{body}</body></html>"
    )


# -- sign-in and messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class BranchState:
    """A branch office's link to central and its standby's replication lag (service/branch.py)."""

    central_reachable: bool
    lag_seconds: float | None  # None: not measured yet


def _branch(b: BranchState | None) -> str:
    """The branch's state, on the overview and the sign-in page (the same facts as /healthz and
    the admin listener's /metrics, which answer without a session)."""
    if b is None:
        return ""
    link_state = ('<span class="ok">reachable</span>' if b.central_reachable else
                  '<span class="warn">DOWN: reads are served from this branch, writes wait</span>')
    lag = "not measured yet" if b.lag_seconds is None else f"{b.lag_seconds:.2f} s"
    return ("<h2>Branch office</h2>" + table(
        ["Link to central", "Replication lag"], [(link_state, esc(lag))], ""))


def render_signin(csrf: str, message: str | None = None, branch: BranchState | None = None) -> str:
    note = f'<p class="warn">{esc(message)}</p>' if message else ""
    form = (
        f'{note}<form class="box" method="post" action="{link("signin")}">{hidden_csrf(csrf)}'
        '<p><label>User name<br><input type="text" name="user" autocomplete="username"'
        ' required></label></p><p><label>Password<br><input type="password" name="password"'
        ' autocomplete="current-password" required></label></p>'
        '<p><button type="submit">Sign in</button></p></form>'
    ) + _branch(branch)
    return page("smartsyncd status: sign in", form)


def render_message(title: str, text: str, admin: str | None = None, csrf: str = "",
                   ok: bool = True) -> str:
    css = "ok" if ok else "warn"
    back = f'<p><a href="{link("")}">Back to the overview</a></p>' if admin is not None else ""
    return page(title, f'<p class="{css}">{esc(text)}</p>{back}', admin, csrf)


# -- the overview ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """A request in flight on the public listener (an upload, a fetch, a parked poll)."""

    method: str
    route: str
    client: str
    seconds: float
    received: int
    sent: int


@dataclass(frozen=True)
class OverviewPage:
    admin: str
    csrf: str
    now: datetime
    overview: StatusOverview | None  # None: the store could not be read (``store_error``)
    store_error: str | None
    sessions: Sequence[SessionRecord]
    transfers: Sequence[Transfer]
    refusals: Sequence[Refusal]
    refusals_total: int
    disk: Mapping[str, tuple[int, int] | None]  # folder -> (free, size); None: unreadable
    warn_bytes: int
    connections: int
    parked: int
    branch: BranchState | None = None  # on a branch office's daemon


def _engagement_state(e: EngagementSummary) -> str:
    s = e.status
    parts = []
    if s.disposed_at is not None:
        parts.append(f"disposed {when(s.disposed_at)} by {esc(s.disposed_by)}")
    elif s.finalized_at is not None:
        parts.append(f"finalized {when(s.finalized_at)} by {esc(s.finalized_by)}")
    else:
        parts.append("open")
    if s.assembly_deadline is not None:
        parts.append(f"assembly deadline {when(s.assembly_deadline)}")
    if s.legal_hold is not None:
        parts.append(f'<span class="warn">legal hold</span> by {esc(s.legal_hold_by)}: '
                     f"{esc(s.legal_hold)}")
    keep = "all versions" if s.retention_days is None else f"{s.retention_days} days"
    parts.append(f"retention {keep}")
    return "<br>".join(parts)


def _quota(e: EngagementSummary) -> str:
    if e.quota_bytes is None:
        return "-"
    used = max(e.live_bytes, e.stored_bytes)
    css = ' class="warn"' if used >= e.quota_bytes * 0.9 else ""
    return f"<span{css}>{size(used)} of {size(e.quota_bytes)}</span>"


def _engagements(o: StatusOverview) -> str:
    rows = [
        (f"{esc(e.name)}<br><small>{esc(e.title)}</small>", f'<span class="num">{e.head}</span>',
         f"{e.files} file(s), {size(e.live_bytes)}<br><small>stored {size(e.stored_bytes)}</small>",
         when(e.last_change), _engagement_state(e), _quota(e))
        for e in o.engagements
    ]
    more = "<p>More engagements exist than are shown.</p>" if o.more else ""
    return table(["Engagement", "Head", "Size", "Last change", "State", "Quota use"], rows,
                 "No engagements yet.") + more


def _locks(o: StatusOverview) -> str:
    rows = []
    for e in o.engagements:
        for lock in e.locks:
            until = "until checked in" if lock.expires_at is None else when(lock.expires_at)
            action = link("confirm-break", engagement=e.name, path=lock.path)
            rows.append((esc(e.name), esc(lock.path), esc(lock.holder), when(lock.since), until,
                         f'<a href="{action}">Break...</a>'))
    return table(["Engagement", "Path", "Held by", "Since", "Expires", ""], rows,
                 "No check-outs.")


def _copies(o: StatusOverview, now: datetime) -> str:
    rows = []
    for e in o.engagements:
        for c in e.copies:
            if c.abandoned_at is not None:
                state, action = f"abandoned {when(c.abandoned_at)} by {esc(c.abandoned_by)}", ""
            else:
                state = "active"
                url = link("confirm-abandon", engagement=e.name, copy=c.copy_id)
                action = f'<a href="{url}">Abandon...</a>'
            unsynced = str(c.unsynced)
            if c.unsynced:
                unsynced = f'<span class="warn">{c.unsynced}</span> since {when(c.unsynced_since)}'
            rows.append((esc(e.name), esc(c.user), esc(c.host), when(c.last_contact), unsynced,
                         state, esc(c.copy_id), action))
    return table(["Engagement", "User", "Host", "Last contact", "Unsynced", "State", "Copy", ""],
                 rows, "No sync copies.")


def _sessions(sessions: Sequence[SessionRecord], now: datetime) -> str:
    live = sorted((s for s in sessions if s.expires_at > now), key=lambda s: s.created_at,
                  reverse=True)
    rows = [(esc(s.user), esc(s.backend), when(s.created_at), when(s.expires_at), esc(s.id))
            for s in live]
    return table(["User", "Via", "Signed in", "Expires", "Session"], rows, "No sessions.")


def _transfers(transfers: Sequence[Transfer]) -> str:
    longest = sorted(transfers, key=lambda t: t.seconds, reverse=True)
    rows = [(esc(t.method), esc(t.route), esc(t.client), f"{t.seconds:.1f} s",
             size(t.received), size(t.sent)) for t in longest]
    return table(["Method", "Route", "Client", "Running for", "Received", "Sent"], rows,
                 "Nothing in flight (parked long-polls are counted above).", limit=100)


def _refusals(refusals: Sequence[Refusal], total: int) -> str:
    rows = []
    for r in refusals:
        css = ' class="warn"' if r.status >= 500 else ""
        at = when(datetime.fromtimestamp(r.at, UTC))
        rows.append((at, f"<span{css}>{r.status}</span>", esc(r.method), esc(r.path),
                     esc(r.client)))
    note = f"<p>{total} refusals and errors since the daemon started.</p>"
    return note + table(["Time", "Status", "Method", "Path", "Client"], rows,
                        "No refusals or errors.")


def _disk(disk: Mapping[str, tuple[int, int] | None], warn_bytes: int) -> str:
    rows = []
    for label, space in disk.items():
        if space is None:
            rows.append((esc(label), '<span class="warn">cannot be read</span>', "-", ""))
            continue
        free, total = space
        low = free < warn_bytes
        state = '<span class="warn">LOW</span>' if low else '<span class="ok">ok</span>'
        rows.append((esc(label), size(free), size(total), state))
    return f"<p>Warning threshold: {size(warn_bytes)} free.</p>" + table(
        ["Folder", "Free", "Size", ""], rows, "No storage folders.")


def render_overview(v: OverviewPage) -> str:
    if v.overview is None:
        store = f'<p class="warn">The store could not be read: {esc(v.store_error)}</p>'
        locks = copies = ""
    else:
        store = _engagements(v.overview)
        locks, copies = _locks(v.overview), _copies(v.overview, v.now)
    body = (
        f"<p>As of {when(v.now)}: {v.connections} open connections, {v.parked} parked"
        " long-polls.</p>"
        f"{_branch(v.branch)}"
        f"<h2>Storage folders</h2>{_disk(v.disk, v.warn_bytes)}"
        f"<h2>Engagements</h2>{store}"
        f"<h2>Check-outs</h2>{locks}"
        f"<h2>Sync copies</h2>{copies}"
        f"<h2>Sessions</h2>{_sessions(v.sessions, v.now)}"
        f"<h2>Transfers in progress</h2>{_transfers(v.transfers)}"
        f"<h2>Recent refusals and errors</h2>{_refusals(v.refusals, v.refusals_total)}"
    )
    return page("smartsyncd status", body, v.admin, v.csrf)


# -- the audit chains and the two actions ------------------------------------------------------


def render_audit(admin: str, csrf: str, reports: Sequence[ChainReport]) -> str:
    bad = [r for r in reports if r.problem is not None]
    summary = (f'<p class="warn">{len(bad)} of {len(reports)} chains damaged.</p>' if bad
               else f'<p class="ok">All {len(reports)} chains intact.</p>')
    rows = [
        (esc(r.chain), str(r.records),
         '<span class="ok">intact</span>' if r.problem is None
         else f'<span class="warn">{esc(r.problem)}</span>', f"<small>{esc(r.head_hash)}</small>")
        for r in reports
    ]
    body = summary + table(["Chain", "Records", "State", "Head hash"], rows, "No chains.")
    return page("Audit chains", body, admin, csrf)


def _confirm(admin: str, csrf: str, title: str, action: str, fields: Mapping[str, str],
             facts: str, button: str, reason: bool = False) -> str:
    inputs = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">'
                     for k, v in fields.items())
    ask = ('<p><label>Reason (kept in the audit log)<br><input type="text" name="reason"'
           ' required maxlength="1000"></label></p>') if reason else ""
    form = (
        f'<div class="box">{facts}<form method="post" action="{link(action)}">'
        f'{hidden_csrf(csrf)}{inputs}<input type="hidden" name="confirm" value="yes">{ask}'
        f'<p><button type="submit">{esc(button)}</button> <a href="{link("")}">Cancel</a></p>'
        "</form></div>"
    )
    return page(title, form, admin, csrf)


def render_confirm_break(admin: str, csrf: str, engagement: str, lock: Lock) -> str:
    facts = (
        f"<p>Break the check-out of <b>{esc(lock.path)}</b> in <b>{esc(engagement)}</b>, held "
        f"by <b>{esc(lock.holder)}</b> since {when(lock.since)}?</p><p>Their edits are not "
        "lost: they stay in their copy, and if someone else changes the file first, their next"
        " sync keeps theirs as a conflict copy.</p>"
    )
    return _confirm(admin, csrf, "Break a check-out", "break",
                    {"engagement": engagement, "path": lock.path}, facts, "Break the check-out",
                    reason=True)


def render_confirm_abandon(admin: str, csrf: str, engagement: str, copy: CopyRecord) -> str:
    warn = ""
    if copy.unsynced:
        warn = (f'<p class="warn">This copy reported {copy.unsynced} unsynced change(s) since '
                f"{when(copy.unsynced_since)}: they will never reach the server.</p>")
    facts = (
        f"<p>Abandon the sync copy <b>{esc(copy.copy_id)}</b> of <b>{esc(copy.user)}</b> on "
        f"<b>{esc(copy.host)}</b> in <b>{esc(engagement)}</b> (last contact "
        f"{when(copy.last_contact)})? Its session ends and it can never commit again.</p>{warn}"
    )
    return _confirm(admin, csrf, "Abandon a sync copy", "abandon",
                    {"engagement": engagement, "copy": copy.copy_id}, facts, "Abandon the copy")
