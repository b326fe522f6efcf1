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


class NotLiftable(Exception):
    """A large array under the key stopped parsing entry by entry after it was packed in part:
    the caller lifts the whole body in one go instead (``lift_manifests``), which leaves such an
    array to the strict parser."""


# what the stream waits for before judging an entry or a key: longer ones (long runs of
# whitespace in them) are judged as they are, so a key is then not lifted and an array not
# packed, and the strict parser reads them instead (the same result, with more memory)
_LOOKAHEAD = 128


class StreamLifter:
    """``lift_manifests`` over a body given in pieces (``feed``, then ``finish``): the same
    result for any split of the same bytes, holding the body without its large arrays, the
    packed lists and one piece, never the whole body. Linear: each byte is scanned a bounded
    number of times (a small array is kept as text until it reaches ``min_entries`` entries).
    ``NotLiftable`` from ``feed`` or ``finish``: see that class."""

    def __init__(self, marker: str, min_entries: int, max_entries: int, key: bytes = b"manifest") -> None:
        self._key_re = _KEYS[key]
        self._replacement = b'"' + key + b'":"' + marker.encode("ascii")
        self._min, self._max = min_entries, max_entries
        self._buf = b""
        self._pos = 0  # self._buf[:self._pos] is handled
        self._out: list[bytes] = []
        self._lifted: list[PackedChunks] = []
        # in an array: where its key starts in self._buf (while it is kept as text), its
        # key's end, and its entries so far
        self._array: PackedBuilder | None = None
        self._key_start = self._key_end = 0

    def feed(self, piece: bytes) -> None:
        keep = self._key_start if self._array is not None and len(self._array) < self._min else self._pos
        self._key_end -= keep
        self._key_start -= keep
        self._pos -= keep
        self._buf = self._buf[keep:] + piece
        self._run(final=False)

    def finish(self) -> tuple[bytes, list[PackedChunks]]:
        """The body with the lifted arrays replaced by ``"<marker><i>"``, and those arrays."""
        self._run(final=True)
        self._out.append(self._buf[self._pos :])
        self._buf = b""
        return b"".join(self._out), self._lifted

    def _run(self, final: bool) -> None:
        buf = self._buf
        while True:
            if self._array is None:
                found = self._key_re.search(buf, self._pos)
                if found is None:
                    # text that may start a key stays for the next piece
                    if not final:
                        self._flush(max(self._pos, len(buf) - _LOOKAHEAD))
                    return
                self._flush(found.start())
                self._array, self._key_start, self._key_end = PackedBuilder(), found.start(), found.end()
                self._pos = found.end()
                if _EMPTY.match(buf, self._pos):
                    self._not_lifted()
                continue
            if not self._entries(buf, final):
                return

    def _entries(self, buf: bytes, final: bool) -> bool:
        """Scan entries; False when the piece ran out in the middle of the array."""
        builder = self._array
        assert builder is not None
        match = _ENTRY.match
        pos = self._pos
        while True:
            entry = match(buf, pos)
            if entry is None:
                if not final and len(buf) - pos < _LOOKAHEAD:
                    self._pos = pos
                    return False
                self._pos = pos
                self._not_lifted()
                return True
            size = int(entry.group(2))
            if size > MAX_CHUNK or len(builder) >= self._max:
                self._pos = pos
                self._not_lifted()
                return True
            builder.append_digest(bytes.fromhex(entry.group(1).decode("ascii")), size)
            pos = entry.end()
            if entry.group(3) == b"]":
                self._pos = pos
                if len(builder) < self._min:
                    self._not_lifted()
                    self._flush(pos)  # checked whole: nothing in it is a key
                else:
                    self._out.append(self._replacement + str(len(self._lifted)).encode() + b'"')
                    self._lifted.append(builder.done())
                    self._array = None
                return True

    def _not_lifted(self) -> None:
        """The array stays in the body as text, from its key on; the search for keys goes on
        after the key (as ``lift_manifests``'s does)."""
        assert self._array is not None
        if len(self._array) >= self._min:
            raise NotLiftable("a large array did not parse entry by entry")
        self._array = None
        self._pos = self._key_start
        self._flush(self._key_end)

    def _flush(self, upto: int) -> None:
        if upto > self._pos:
            self._out.append(self._buf[self._pos : upto])
            self._pos = upto
