"""RFC 4515 escaping and user-name forms: hostile names must not change the filter's meaning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldaptor.protocols import pureldap

from smartsyncd.auth.ldap import guid_to_str, sid_to_str
from smartsyncd.auth.ldapfilter import (
    BadUserName,
    equals,
    escape_filter_value,
    parse_filter,
    split_user_name,
    user_search_filter,
)
from smartsyncd.testing.ldapserver import sid_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_special_characters_are_escaped() -> None:
    assert escape_filter_value("*)(sAMAccountName=*") == r"\2a\29\28sAMAccountName=\2a"
    assert escape_filter_value("a\\b\x00c") == r"a\5cb\00c"
    assert escape_filter_value("Zoë Müller") == "Zoë Müller"
    assert escape_filter_value("a\tb") == r"a\09b"


@given(st.text())
def test_any_value_parses_back_to_one_equality_match_with_the_same_value(value: str) -> None:
    parsed = parse_filter(equals("sAMAccountName", value)) if value else None
    if parsed is None:
        return
    assert isinstance(parsed, pureldap.LDAPFilter_equalityMatch)
    assert parsed.assertionValue.value == value


def test_injection_stays_one_equality_match() -> None:
    name = split_user_name("*)(sAMAccountName=*", "FIRM")
    text = user_search_filter(
        name, "(objectClass=user)", "sAMAccountName", "userPrincipalName", None
    )
    parsed = parse_filter(text)
    assert isinstance(parsed, pureldap.LDAPFilter_and) and len(parsed.data) == 2
    assert parsed.data[1].assertionValue.value == "*)(sAMAccountName=*"


def test_user_forms() -> None:
    assert split_user_name("alice@firm.example", "FIRM").form == "upn"
    down = split_user_name("firm\\Alice", "FIRM")
    assert (down.form, down.account) == ("downlevel", "Alice")
    assert split_user_name(" alice ", "FIRM").account == "alice"


@pytest.mark.parametrize(
    "typed", ["", "  ", "OTHER\\alice", "FIRM\\", "FIRM\\a\\b", "al\x00ice", "@firm.example", "x@"]
)
def test_names_no_account_can_have_are_refused(typed: str) -> None:
    with pytest.raises(BadUserName):
        split_user_name(typed, "FIRM")


def test_downlevel_needs_a_configured_domain() -> None:
    with pytest.raises(BadUserName):
        split_user_name("FIRM\\alice", None)


def test_implicit_upn_only_for_the_configured_suffix() -> None:
    ours = user_search_filter(
        split_user_name("alice@firm.example", None),
        "(o=u)",
        "sAMAccountName",
        "userPrincipalName",
        "FIRM.example",
    )
    theirs = user_search_filter(
        split_user_name("alice@other.example", None),
        "(o=u)",
        "sAMAccountName",
        "userPrincipalName",
        "firm.example",
    )
    assert "(sAMAccountName=alice)" in ours
    assert "sAMAccountName" not in theirs


def test_sid_and_guid_text_forms() -> None:
    sid = "S-1-5-21-3623811015-3361044348-30300820-1013"
    assert sid_to_str(sid_bytes(sid)) == sid
    assert sid_to_str(b"S-1-5-32-544") == "S-1-5-32-544"
    with pytest.raises(ValueError):
        sid_to_str(sid_bytes(sid)[:-1])
    assert guid_to_str(bytes(range(16))) == "03020100-0504-0706-0809-0a0b0c0d0e0f"
