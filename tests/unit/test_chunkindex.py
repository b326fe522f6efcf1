"""The pull's compact chunk index (client/chunkindex.py): the first location of a hash wins,
paths come back as given, and it holds a fraction of what a dict of strings and tuples did."""

from __future__ import annotations

import sys

from smartsyncd.client.chunkindex import ChunkIndex
from smartsyncd.core.chunking import chunk_hash


def test_first_location_wins_and_round_trips() -> None:
    index = ChunkIndex()
    a, b = chunk_hash(b"a"), chunk_hash(b"b")
    index.setdefault(a, ("Lead/ä.xlsx", 2**40, 65536))
    index.setdefault(a, ("other.xlsx", 0, 65536))
    index.setdefault(b, ("Lead/ä.xlsx", 7, 9))
    assert index[a] == ("Lead/ä.xlsx", 2**40, 65536) and index[b] == ("Lead/ä.xlsx", 7, 9)
    assert a in index and chunk_hash(b"c") not in index and 7 not in index and len(index) == 2


def test_an_entry_costs_well_under_a_dict_of_strings_and_tuples() -> None:
    digests = [chunk_hash(i.to_bytes(4, "big")) for i in range(2000)]
    index = ChunkIndex()
    plain: dict[str, tuple[str, int, int]] = {}
    for i, d in enumerate(digests):
        index.setdefault(d, ("big.zip", i * 32768, 32768))
        plain.setdefault(d, ("big.zip", i * 32768, 32768))

    def size(mapping: dict[object, object]) -> int:
        return sys.getsizeof(mapping) + sum(
            sys.getsizeof(k) + sys.getsizeof(v) + sum(sys.getsizeof(x) for x in v)
            if isinstance(v, tuple) else sys.getsizeof(k) + sys.getsizeof(v)
            for k, v in mapping.items())

    assert size(index._where) * 2 < size(plain)  # type: ignore[arg-type]
