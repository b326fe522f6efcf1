"""What one sync, clone or status found and did: the engine's reports to its caller (the
``smartsync`` CLI prints them, ``--json`` as ``to_json()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SyncReport:
    """What one sync (or clone) did."""

    uploaded: int = 0  # files committed (applied)
    bytes_sent: int = 0  # chunk upload bytes on the wire
    downloaded: int = 0  # files written from the server
    bytes_received: int = 0  # raw bytes of fetched chunks
    deleted_remote: int = 0
    deleted_local: int = 0
    conflicts: list[str] = field(default_factory=list)  # conflict copies made this time
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    conflicts_left: int = 0  # conflict copies present in the folder
    last_seq: int = 0
    unsynced: int = 0  # local changes still not on the server after this sync
    locked: list[str] = field(default_factory=list)  # local edits waiting for another's check-in
    refused: str | None = None  # why the server refused every change (finalized, a reader)

    @property
    def partial(self) -> bool:
        """The sync finished (the pull included), but some local changes could not be sent:
        refused, waiting for another's check-in, or skipped (each path says why)."""
        return bool(self.refused or self.locked or self.skipped)

    def absorb(self, part: SyncReport) -> None:
        """Take in what a push reported on its own (issue 15: a push that went without the
        copy report): its counts added, its lists appended, its unsynced count and refusal."""
        for name in ("uploaded", "bytes_sent", "downloaded", "bytes_received", "deleted_remote",
                     "deleted_local"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.conflicts.extend(part.conflicts)
        self.skipped.extend(part.skipped)
        self.locked.extend(part.locked)
        self.unsynced = part.unsynced
        self.refused = part.refused or self.refused

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        data["partial"] = self.partial
        return data


@dataclass
class StatusReport:
    """What a sync would move now (nothing is changed to find out)."""

    to_upload: list[str] = field(default_factory=list)
    to_delete_remote: list[str] = field(default_factory=list)
    to_download: list[str] = field(default_factory=list)
    to_delete_local: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # local edits a remote change hits
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # by the ignore rules; folders end in /
    # which rule set ignored each of them: built-in, .smartsyncignore or engagement
    ignored_by: dict[str, str] = field(default_factory=dict)
    conflicts_left: int = 0
    last_seq: int = 0
    head: int = 0
    locked: list[dict[str, str]] = field(default_factory=list)  # {path, lock}
    finalized: dict[str, str | None] | None = None  # {at, by, reason} when the engagement is signed off
    deadline: dict[str, str | None] | None = None  # {at, report_date, warning}: assembly deadline

    @property
    def clean(self) -> bool:
        return not (
            self.to_upload or self.to_delete_remote or self.to_download
            or self.to_delete_local or self.conflicts
        )

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        del data["ignored_by"]
        data["ignored"] = [{"path": p, "rules": self.ignored_by.get(p, "")} for p in self.ignored]
        data["clean"] = self.clean
        return data
