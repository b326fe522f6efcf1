"""The last refusals and errors the public site answered, for the admin status page (issue 17).

``meter_site`` (web/metrics.py), the one place every answered request passes, hands each answer
with a status of 400 or more to ``RecentRefusals.add``; the status page lists them newest
first. A bounded ring on the reactor thread: memory stays fixed whatever a client sends, and
the request path is cut to ``MAX_PATH`` characters (the page escapes it when it renders).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

KEEP = 200
MAX_PATH = 300


@dataclass(frozen=True)
class Refusal:
    at: float  # Unix time of the answer
    method: str
    path: str
    status: int
    client: str


class RecentRefusals:
    """The last ``keep`` answers with a status of 400 or more."""

    def __init__(self, keep: int = KEEP) -> None:
        self._ring: deque[Refusal] = deque(maxlen=keep)
        self.total = 0

    def add(self, at: float, method: str, path: bytes, status: int, client: str) -> None:
        if status < 400:
            return
        text = path.decode("utf-8", "replace")
        if len(text) > MAX_PATH:
            text = text[:MAX_PATH] + "..."
        self._ring.append(Refusal(at, method, text, status, client))
        self.total += 1

    def newest_first(self, limit: int = 50) -> list[Refusal]:
        out: list[Refusal] = []
        for refusal in reversed(self._ring):
            if len(out) >= limit:
                break
            out.append(refusal)
        return out
