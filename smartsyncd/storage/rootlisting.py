"""The live files of an engagement at a change number, as the content root needs them (issue 20).

(path, content id) of every live file after change ``seq``: at the head, the ``files`` table;
before it (or once the engagement was disposed of, which empties ``files``), the last change of
each path up to ``seq`` in the change log (which keeps every record, also past retention and
after disposal: a copy kept elsewhere can still be proven to be the disposed final file). Head and rows are read in one read
transaction, so a commit landing meanwhile changes neither. Paths come back sorted bytewise
(the order of ``core.contentroot``). ``listing_page`` reads a page after a path, for a client
locating differences. Synchronous, over a ``MetadataDB``.
"""

from __future__ import annotations

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage.db import MetadataDB, hex_or_none

Listing = list[tuple[str, str]]


def _at(db: MetadataDB, engagement_id: int, seq: int | None) -> tuple[int, int, bool]:
    """(the seq asked, or the head; the head; whether the ``files`` table can answer)."""
    head = db.engagement_head(engagement_id)
    if seq is not None and seq > head:
        raise BadRequest(f"seq {seq} is past the engagement's head {head}", field="seq")
    at = head if seq is None else seq
    # disposal empties ``files`` but keeps the log: the log says what the engagement held
    disposed = db.one("SELECT disposed_at FROM engagements WHERE id = ?", (engagement_id,))[0]
    return at, head, at == head and disposed is None


def _rows(db: MetadataDB, engagement_id: int, seq: int, at_head: bool, after: str | None,
          limit: int | None) -> Listing:
    params: list[object] = [engagement_id]
    if at_head:
        sql = "SELECT path, content FROM files WHERE engagement_id = ? AND content IS NOT NULL"
        if after is not None:
            sql += " AND path > ?"
            params.append(after)
    else:
        sql = (
            "SELECT c.path, c.content FROM changes c"
            " JOIN (SELECT path, MAX(seq) AS last_seq FROM changes WHERE engagement_id = ?"
            " AND seq <= ?" + (" AND path > ?" if after is not None else "")
            + " GROUP BY path) l ON l.path = c.path AND l.last_seq = c.seq"
            " WHERE c.engagement_id = ? AND c.kind = 'put'"
        )
        params += [seq, *([after] if after is not None else []), engagement_id]
    sql += " ORDER BY path" if at_head else " ORDER BY c.path"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    rows = db.all(sql, tuple(params))
    return [(str(r[0]), hex_or_none(r[1]) or "") for r in rows]


def listing_at(db: MetadataDB, engagement_id: int, seq: int | None) -> tuple[int, int, Listing]:
    """(seq, head, every live file at seq); ``seq`` None: the head."""

    def tx() -> tuple[int, int, Listing]:
        at, head, from_files = _at(db, engagement_id, seq)
        return at, head, _rows(db, engagement_id, at, from_files, None, None)

    return db.read(tx)


def listing_page(
    db: MetadataDB, engagement_id: int, seq: int, after: str | None, limit: int
) -> tuple[Listing, bool]:
    """Up to ``limit`` live files at ``seq`` whose path sorts after ``after``; and whether
    more follow."""

    def tx() -> tuple[Listing, bool]:
        at, _head, from_files = _at(db, engagement_id, seq)
        rows = _rows(db, engagement_id, at, from_files, after, limit + 1)
        return rows[:limit], len(rows) > limit

    return db.read(tx)
