"""The JSON of a copy's report (sent alone or folded into a commit) and the UTC time format
the client's requests use. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime


def report_body(
    host: str, unsynced: int, since: datetime | None, key_hash: str | None
) -> dict[str, object]:
    """A copy's report: alone (``report_copy``) or folded into a commit."""
    body: dict[str, object] = {
        "host": host, "unsynced": unsynced, "since": None if since is None else iso_time(since),
    }
    if key_hash is not None:
        body["key_hash"] = key_hash
    return body


def iso_time(when: datetime) -> str:
    """``when`` in UTC as the server reads it (microseconds, ``Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
