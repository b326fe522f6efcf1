"""Small uploads that ride in the commit (issue 15; the daemon's side is web/inlinechunks.py).

When the copy report's answer advertises it (``"inline"``: the most raw chunk bytes a commit
may carry) and what a push must upload is no more than that, the chunks are not sent ahead
in their own request: they are encoded as an upload would be (zstd, or a delta against the
synced version's base copy; client/chunkpacking.py) and go, base64, as the commit's
``"chunks"``. A server that refuses them (a bad delta base, a lower limit) has the push
upload them the usual way on its next attempt.

A newer server (``"inline_raw"`` in the answer) counts ``inline`` in bytes as sent: a 100 KB
chunk edited in one line is a delta of a few hundred bytes and rides along too, as long as
the raw total stays within ``inline_raw``. Whether it fits is known only once encoded: a push
that does not fit uploads first, or (``strict``: a commit that skipped the report) gives up
before anything is sent (``NotCarried``), and the sync reports first.
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


class NotCarried(Exception):
    """A strict push's chunks, once encoded, are over what a commit may carry."""


def encode_within(items: Sequence[UploadItem], limit: int) -> str | None:
    """``encode_inline``, or None when the chunk stream is over ``limit`` bytes (blocking)."""
    stream = encode_upload(list(items))
    return base64.b64encode(stream).decode("ascii") if len(stream) <= limit else None


class InlineUpload:
    """The chunks one push holds for its commit instead of uploading them."""

    def __init__(self, limit: int, raw: int = 0, strict: bool = False) -> None:
        self.limit = limit  # as the server advertised: bytes as sent, or raw when not ``raw``
        self.raw = raw  # the raw bytes they may decode to (0: an older server)
        self.strict = strict
        self._held: str | None = None

    def fits(self, raw_bytes: int, chunks: int) -> bool:
        """Whether an upload of ``chunks`` chunks, ``raw_bytes`` in all, may go inline (with a
        newer server, if its encoding turns out small enough: ``hold``)."""
        return 0 < raw_bytes <= (self.raw or self.limit) and chunks <= INLINE_CHUNKS

    async def hold(self, run: RunBlocking, items: Sequence[UploadItem]) -> int | None:
        """Encode ``items`` (in a thread) for the next commit; the bytes they will take, or
        None when over the limit as sent (upload them instead; ``NotCarried`` when strict)."""
        encoded: str | None
        if self.raw:
            encoded = await run(encode_within, items, self.limit)
        else:
            encoded = await run(encode_inline, items)
        if encoded is None:
            if self.strict:
                raise NotCarried(f"chunks over {self.limit} bytes encoded")
            return None
        self._held = encoded
        return len(encoded)

    def take(self) -> str | None:
        """What the next commit carries (once)."""
        held, self._held = self._held, None
        return held
