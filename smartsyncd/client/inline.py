"""Small uploads that ride in the commit (issue 15; the daemon's side is web/inlinechunks.py).

When the copy report's answer advertises it (``"inline"``: the most raw chunk bytes a commit
may carry) and what a push must upload is no more than that, the chunks are not sent ahead
in their own request: they are encoded as an upload would be (zstd, or a delta against the
synced version's base copy; client/chunkpacking.py) and go, base64, as the commit's
``"chunks"``. A server that refuses them (a bad delta base, a lower limit) has the push
upload them the usual way on its next attempt.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from smartsyncd.client.chunkpacking import encode_upload
from smartsyncd.client.wire import UploadItem
from smartsyncd.runtime.blocking import RunBlocking

INLINE_CHUNKS = 64  # chunks a commit may carry (docs/protocol.md; web/inlinechunks.py)


def encode_inline(items: Sequence[UploadItem]) -> str:
    """The ``chunks`` field of a commit for ``items`` (blocking: compression)."""
    return base64.b64encode(encode_upload(list(items))).decode("ascii")


class InlineUpload:
    """The chunks one push holds for its commit instead of uploading them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # raw bytes, as the server advertised
        self._held: str | None = None

    def fits(self, raw_bytes: int, chunks: int) -> bool:
        """Whether an upload of ``chunks`` chunks, ``raw_bytes`` in all, can go inline."""
        return 0 < raw_bytes <= self.limit and chunks <= INLINE_CHUNKS

    async def hold(self, run: RunBlocking, items: Sequence[UploadItem]) -> int:
        """Encode ``items`` (in a thread) for the next commit; the bytes they will take."""
        encoded: str = await run(encode_inline, items)
        self._held = encoded
        return len(encoded)

    def take(self) -> str | None:
        """What the next commit carries (once)."""
        held, self._held = self._held, None
        return held
