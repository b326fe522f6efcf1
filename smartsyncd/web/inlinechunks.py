"""Small uploads that ride in the commit (issue 15: one request less per small edit).

A commit body may carry ``"chunks"``: the base64 of a chunk stream (docs/protocol.md, "Chunk
stream format"; deltas included) of about ``INLINE_RAW_BYTES`` as sent (a client judges its
encoded stream by it; an older one, the raw bytes) and at most ``INLINE_RAW_CAP`` raw bytes
once decoded, which bounds what one commit makes the daemon decompress and hold. Before the
commit's transaction the daemon checks it as a chunk upload is checked (the engagement is not
finalized: else 423; every record decompresses, capped, and hashes to its name: else 400
``bad_chunk`` naming the chunk) and stores the chunks durably (pack fsync, rename, folder
fsync, one indexing transaction), off the reactor as an upload's are. A refused body stores
nothing and commits nothing. The copy report's answer advertises the limit (``"inline"``); a
client that did not see it uploads first, as before.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from smartsyncd.core import chunkstream
from smartsyncd.core.errors import BadRequest, TooLarge
from smartsyncd.storage.api import ChunkStore
from smartsyncd.web.access import Access, Authorizer
from smartsyncd.web.deltas import DeltaBases
from smartsyncd.web.pool import RunBlocking

INLINE_RAW_BYTES = 32 * 1024  # chunk stream bytes a commit may carry (advertised: "inline")
# raw bytes they may decode to (advertised: "inline_raw"): an edit inside a large chunk is a
# small delta of up to four whole chunks (issue 15)
INLINE_RAW_CAP = 1024 * 1024
INLINE_RECORDS = 64  # chunks a commit may carry (as client/inline.py knows)
# a record's payload is never larger than its raw bytes (raw is sent when zstd does not help,
# a delta only when smaller), so an older client's stream of INLINE_RAW_BYTES raw fits this
_SENT_LIMIT = INLINE_RAW_BYTES + chunkstream.HEADER_BYTES * INLINE_RECORDS


@dataclass(frozen=True)
class InlineChunks:
    """What storing a commit's chunks works with (the upload's services)."""

    authorizer: Authorizer
    chunks: ChunkStore
    deltas: DeltaBases
    run_blocking: RunBlocking

    async def store(self, access: Access, value: object) -> int:
        """Check and durably store the chunks of a commit's ``chunks`` field; how many."""
        records = parse_inline(value)
        await self.authorizer.refuse_if_finalized(access)
        eid = access.engagement.id
        prefixes = await self.deltas.upload_bases(eid, records)
        verified = await self.run_blocking(chunkstream.verify_records, records, prefixes)
        upload = self.chunks.open_upload(eid, user=access.session.user)
        try:
            await upload.append(verified)
            await upload.finish(len(records))
        except BaseException:
            await upload.abort()
            raise
        return len(records)


def parse_inline(value: object) -> list[chunkstream.Record]:
    """The records of a ``chunks`` field (no decompression yet): 400 when it is not base64
    of a well-formed chunk stream, 413 over the limits."""
    if not isinstance(value, str):
        raise BadRequest("field 'chunks' must be a base64 chunk stream", field="chunks")
    if len(value) > _SENT_LIMIT * 4 // 3 + 4:
        raise TooLarge(f"inline chunks over {INLINE_RAW_BYTES} bytes: upload them first",
                       limit=INLINE_RAW_BYTES)
    try:
        body = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("field 'chunks' is not valid base64", field="chunks") from None
    if len(body) > _SENT_LIMIT:
        raise TooLarge(f"inline chunks over {INLINE_RAW_BYTES} bytes: upload them first",
                       limit=INLINE_RAW_BYTES)
    records = chunkstream.decode_records(body, INLINE_RECORDS)
    if sum(raw_len for _h, _codec, raw_len, _payload in records) > INLINE_RAW_CAP:
        raise TooLarge(f"inline chunks over {INLINE_RAW_CAP} raw bytes: upload them first",
                       limit=INLINE_RAW_CAP)
    return records
