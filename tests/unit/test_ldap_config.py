"""The [ldap] section: defaults, file reading, and clear errors naming the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartsyncd.auth.ldapconfig import AD_USER_FILTER, LdapConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def base(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "bind.secret").write_text("s3cret\n")
    return {
        "urls": "ldaps://dc1.firm.example:636 ldaps://dc2.firm.example",
        "ca_file": "ca.pem",
        "base_dn": "DC=firm,DC=example",
        "bind_dn": "CN=svc,CN=Users,DC=firm,DC=example",
        "bind_password_file": "bind.secret",
        "netbios_domain": "FIRM",
        "upn_suffix": "firm.example",
    }


def test_issue_example_parses_with_defaults(base: dict[str, str], tmp_path: Path) -> None:
    cfg = LdapConfig.from_section(base, str(tmp_path))
    assert cfg.urls == ["ldaps://dc1.firm.example:636", "ldaps://dc2.firm.example"]
    assert cfg.ca_file == str(tmp_path / "ca.pem")
    assert cfg.bind_password == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert (cfg.user_filter, cfg.group_mode, cfg.start_tls, cfg.allow_insecure) == (
        AD_USER_FILTER,
        "ad-chain",
        True,
        False,
    )
    assert (cfg.connect_timeout, cfg.timeout) == (5.0, 10.0)


def test_options(base: dict[str, str], tmp_path: Path) -> None:
    base.update(
        group_mode="memberof",
        timeout="2.5",
        refresh_interval="5",
        start_tls="no",
        allow_insecure="yes",
        urls="ldap://a, ldap://b",
    )
    cfg = LdapConfig.from_section(base, str(tmp_path))
    assert cfg.urls == ["ldap://a", "ldap://b"]
    assert (cfg.group_mode, cfg.timeout, cfg.refresh_interval, cfg.start_tls) == (
        "memberof",
        2.5,
        5.0,
        False,
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"urls": ""}, "urls"),
        ({"urls": "http://dc1"}, "urls"),
        ({"urls": "ldaps://dc1/DC=x"}, "urls"),
        ({"urls": "ldap://dc1", "start_tls": "no"}, "start_tls"),
        ({"start_tls": "maybe"}, "start_tls"),
        ({"ca_file": "missing.pem"}, "ca_file"),
        ({"bind_password_file": "missing"}, "bind_password_file"),
        ({"group_mode": "magic"}, "group_mode"),
        ({"user_filter": "(&(a=b)"}, "user_filter"),
        ({"timeout": "soon"}, "timeout"),
        ({"connect_timeout": "0"}, "connect_timeout"),
        ({"bind_pasword_file": "x"}, "bind_pasword_file"),
        ({"base_dn": " "}, "base_dn"),
    ],
)
def test_bad_values_name_the_key(
    base: dict[str, str], tmp_path: Path, change: dict[str, str], key: str
) -> None:
    base.update(change)
    with pytest.raises(ValueError, match=key):
        LdapConfig.from_section(base, str(tmp_path))


def test_empty_secret_file_is_an_error(base: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bind.secret").write_text("\n")
    with pytest.raises(ValueError, match="bind_password_file"):
        LdapConfig.from_section(base, str(tmp_path))
