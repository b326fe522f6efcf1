"""Hash chains (core/audit.py): canonical encoding, linking, and verification naming the first
bad record for an edit, a removal, a reorder, a truncation and an unhashed record."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from smartsyncd.core.audit import (
    AUDIT_DOMAIN,
    CHANGE_DOMAIN,
    GENESIS,
    ChainRecord,
    canonical,
    change_fields,
    link,
    record_hash,
    verify_chain,
)


def chain(n: int) -> list[ChainRecord]:
    fields = [
        change_fields(i, f"f{i}.txt", "put", "ab" * 32, i, None, "alice", "s1",
                      f"2026-03-31T17:00:0{i}.000000+00:00", None, f"b{i}")
        for i in range(1, n + 1)
    ]
    return [ChainRecord(i + 1, f, p, h) for i, (f, (p, h)) in enumerate(zip(fields, link(CHANGE_DOMAIN, GENESIS, fields), strict=True))]


def test_canonical_encoding_is_compact_utf8_json() -> None:
    assert canonical([1, "Prüfung", None]) == '[1,"Prüfung",null]'.encode()


def test_links_and_domains() -> None:
    records = chain(3)
    assert records[0].prev_hash == GENESIS
    assert records[1].prev_hash == records[0].record_hash
    assert record_hash(AUDIT_DOMAIN, GENESIS, records[0].fields) != records[0].record_hash


def test_intact_chain_verifies() -> None:
    result = verify_chain(CHANGE_DOMAIN, chain(4), 4)
    assert result.ok and result.records == 4 and result.head_hash == chain(4)[-1].record_hash


def test_edit_is_named() -> None:
    records = chain(4)
    fields = list(records[2].fields)
    fields[6] = "mallory"
    records[2] = replace(records[2], fields=fields)
    assert str(verify_chain(CHANGE_DOMAIN, records, 4).problem) == "record 3: contents do not match its hash (edited)"


def test_removal_reorder_truncation_and_missing_hash() -> None:
    records = chain(5)
    assert "record 3: missing" in str(verify_chain(CHANGE_DOMAIN, records[:2] + records[3:], 5).problem)
    renumbered = records[:2] + [replace(r, seq=r.seq - 1) for r in records[3:]]
    assert "record 3: prev_hash does not match" in str(verify_chain(CHANGE_DOMAIN, renumbered, 4).problem)
    swapped = [records[0], replace(records[2], seq=2), replace(records[1], seq=3), *records[3:]]
    assert str(verify_chain(CHANGE_DOMAIN, swapped, 5).problem).startswith("record 2: prev_hash")
    assert "record 5: missing" in str(verify_chain(CHANGE_DOMAIN, records[:4], 5).problem)
    unhashed = records[:1] + [replace(records[1], record_hash=None)]
    assert "record 2: has no hash" in str(verify_chain(CHANGE_DOMAIN, unhashed, 2).problem)


_FIELD = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)


@given(st.lists(_FIELD, max_size=12))
def test_canonical_is_compact_json_of_the_list(fields: list[object]) -> None:
    """The direct encoding of strings, integers and nulls is byte for byte json.dumps."""
    expected = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert canonical(fields) == expected
