"""Large ``"manifest"`` arrays lifted out of a JSON commit body before it is parsed (pure).

``json.loads`` of a 20 GB file's manifest (about 600,000 ``["hash", size]`` pairs, 45 MB of
text) makes a list, a 64-character string and often an int per entry: about 250 bytes per
chunk, 150 MB on the daemon while the commit is parsed. ``lift_manifests`` scans the body's
bytes instead: each ``"manifest":[...]`` array of at least ``min_entries`` well-formed entries
is packed as it is read (core/packed.py, 40 bytes per entry) and replaced in the body by the
string ``marker + index``; the caller puts the packed lists back where those strings are
(web/parse.py). ``"manifest":[`` can only be a key and its array in JSON (inside a string
every quote is escaped), and an array that does not parse here entry by entry (a bad hash, a
size out of range, another spelling) is left in the body as it was, for the strict parser to
refuse and name. The marker is the caller's random string, so a body cannot forge one. The client lifts the
``"chunks"`` arrays of a manifests answer the same way (client/wire.py ``manifests_json``).
"""

from __future__ import annotations

import re

from smartsyncd.core.chunking import MAX_CHUNK
from smartsyncd.core.packed import PackedBuilder, PackedChunks

_KEYS = {key: re.compile(b'"' + key + rb'"\s*:\s*\[') for key in (b"manifest", b"chunks")}
_ENTRY = re.compile(rb'\s*\[\s*"([0-9a-f]{64})"\s*,\s*([1-9][0-9]{0,9})\s*\]\s*([,\]])')
_EMPTY = re.compile(rb"\s*\]")


def lift_manifests(
    body: bytes, marker: str, min_entries: int, max_entries: int, key: bytes = b"manifest"
) -> tuple[bytes, list[PackedChunks]]:
    """``body`` with each large, well-formed manifest array under ``key`` (``manifest`` in a
    commit, ``chunks`` in a manifests answer) replaced by ``"<marker><i>"``, and the packed
    lists by ``i``. Arrays of fewer than ``min_entries`` or more than ``max_entries`` entries
    stay as they are."""
    if b'"' + key + b'"' not in body:
        return body, []
    out: list[bytes] = []
    lifted: list[PackedChunks] = []
    done = 0  # body[:done] is in ``out`` already
    for found in _KEYS[key].finditer(body):
        if found.start() < done:
            continue
        packed, end = _scan_array(body, found.end(), max_entries)
        if packed is None or len(packed) < min_entries:
            continue
        out.append(body[done : found.start()])
        out.append(b'"' + key + b'":"' + marker.encode("ascii") + str(len(lifted)).encode() + b'"')
        lifted.append(packed)
        done = end
    if not lifted:
        return body, []
    out.append(body[done:])
    return b"".join(out), lifted


def _scan_array(body: bytes, pos: int, max_entries: int) -> tuple[PackedChunks | None, int]:
    """The entries of the array whose ``[`` ends at ``pos``, and the offset after its ``]``;
    None when it is not a list of well-formed entries only."""
    if _EMPTY.match(body, pos):
        return None, pos
    builder = PackedBuilder()
    match = _ENTRY.match
    while True:
        entry = match(body, pos)
        if entry is None:
            return None, pos
        size = int(entry.group(2))
        if size > MAX_CHUNK or len(builder) >= max_entries:
            return None, pos
        builder.append_digest(bytes.fromhex(entry.group(1).decode("ascii")), size)
        pos = entry.end()
        if entry.group(3) == b"]":
            return builder.done(), pos
