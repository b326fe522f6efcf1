"""Where each chunk of a synced file sits locally (hash -> path, offset, size), so a pull copies
a chunk it already has instead of fetching it. Kept compact because it grows with every local
chunk (a 20 GiB file is about 650,000): a key is the digest's first 16 bytes, a value 16 packed
bytes with the path as a number, about 120 bytes an entry against about 300 for a dict of
strings and tuples. A prefix collision is harmless: what is read locally is checked against the
full hash (``localfs.read_chunk``) and fetched when it does not match."""

from __future__ import annotations

import struct

_VALUE = struct.Struct("<IQI")  # path number, offset, size
KEY_BYTES = 16

Location = tuple[str, int, int]


class ChunkIndex:
    """hash (hex) -> (path, offset, size); the first location recorded for a hash wins."""

    def __init__(self) -> None:
        self._where: dict[bytes, bytes] = {}
        self._paths: list[str] = []
        self._numbers: dict[str, int] = {}

    @staticmethod
    def _key(digest: str) -> bytes:
        return bytes.fromhex(digest[: KEY_BYTES * 2])

    def setdefault(self, digest: str, location: Location) -> None:
        key = self._key(digest)
        if key in self._where:
            return
        path, offset, size = location
        number = self._numbers.get(path)
        if number is None:
            number = self._numbers[path] = len(self._paths)
            self._paths.append(path)
        self._where[key] = _VALUE.pack(number, offset, size)

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self._key(digest) in self._where

    def __getitem__(self, digest: str) -> Location:
        number, offset, size = _VALUE.unpack(self._where[self._key(digest)])
        return self._paths[number], offset, size

    def __len__(self) -> int:
        return len(self._where)
