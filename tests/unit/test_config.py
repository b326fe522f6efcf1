"""Config parsing: defaults, file values, relative paths, command-line overrides, bad values."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.python.usage import UsageError

from smartsyncd.service.config import ServerConfig, check_listen, load_config
from smartsyncd.service.tap import Options
from smartsyncd.service.tls import generate_self_signed


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(cwd=str(tmp_path))
    assert config == ServerConfig(data_dir=str(tmp_path / "data"))
    assert config.listen == "ssl:8443"
    assert config.cert_path == str(tmp_path / "data" / "tls" / "cert.pem")
    assert config.key_path == str(tmp_path / "data" / "tls" / "key.pem")
    assert config.self_signed
    assert config.auth_backends == ("local",)
    assert (config.login_failures_per_user, config.login_failures_per_address) == (5, 20)
    assert (config.request_deadline, config.connections_per_address) == (60, 1024)
    assert config.unauthenticated_bytes_per_address == 8 << 20
    assert config.database_url is None and config.storage_path is None
    assert config.json_log_file is None


def test_shipped_example_config_loads_to_the_defaults(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "conf" / "smartsync.ini"
    config = load_config(str(shipped), cwd=str(tmp_path))
    assert config == ServerConfig(data_dir=str(tmp_path / "data"), config_file=str(shipped))


FULL = """\
[server]
data_dir = srv/data
listen = ssl:9443:interface=127.0.0.1
tls_cert = certs/c.pem
tls_key = /abs/k.pem
request_timeout = 45.5
request_deadline = 20
session_lifetime_days = 7

[database]
url = postgresql://sync:secret@db.example/smartsync

[storage]
path = /mnt/chunks

[auth]
backends = local

[limits]
login_failures_per_user = 3
login_failures_per_address = 50
connections_per_address = 16
unauthenticated_bytes_per_address = 1048576

[log]
json_file = logs/events.json
"""


def test_every_file_value_is_read_and_paths_resolve_against_the_files_folder(
    tmp_path: Path,
) -> None:
    conf = write(tmp_path / "etc" / "smartsync.ini", FULL)
    config = load_config(conf, cwd=str(tmp_path / "elsewhere"))
    etc = tmp_path / "etc"
    assert config.data_dir == str(etc / "srv" / "data")
    assert config.listen == "ssl:9443:interface=127.0.0.1"
    assert config.tls_cert == str(etc / "certs" / "c.pem")
    assert config.tls_key == "/abs/k.pem"
    assert not config.self_signed
    assert config.request_timeout == 45.5
    assert config.session_lifetime_days == 7
    assert config.database_url == "postgresql://sync:secret@db.example/smartsync"
    assert config.storage_path == "/mnt/chunks"
    assert config.login_failures_per_user == 3
    assert config.login_failures_per_address == 50
    assert (config.request_deadline, config.connections_per_address) == (20, 16)
    assert config.unauthenticated_bytes_per_address == 1 << 20
    assert config.json_log_file == str(etc / "logs" / "events.json")
    assert config.config_file == conf


def test_command_line_overrides_the_file_and_resolves_against_the_working_folder(
    tmp_path: Path,
) -> None:
    conf = write(tmp_path / "etc" / "smartsync.ini", FULL)
    config = load_config(
        conf, data_dir="mydata", listen="ssl:0:interface=127.0.0.1", cwd=str(tmp_path / "wd")
    )
    assert config.data_dir == str(tmp_path / "wd" / "mydata")
    assert config.listen == "ssl:0:interface=127.0.0.1"
    assert config.request_timeout == 45.5  # the rest of the file still applies


AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []  # CI runs as root


def test_twistd_options_parse_into_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(["--data-dir", "d", "--listen", "ssl:1234", "--port-file", "p", *AS_ROOT])
    assert options.server_config.data_dir == str(tmp_path / "d")
    assert options.server_config.listen == "ssl:1234"
    assert options["port-file"] == str(tmp_path / "p")


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:8443",
        "tcp6:8443",
        "unix:/tmp/sock",
        "TCP:0",
        "ssl",
        "ssl:",
        "ssl:0:sslmethod=TLSv1_METHOD",
    ],
)
def test_non_tls_or_unsafe_listen_strings_are_refused(listen: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--listen"):
        load_config(listen=listen, cwd=str(tmp_path))
    with pytest.raises(ValueError):
        check_listen(listen)


def test_twistd_options_refuse_plain_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="TLS only"):
        Options().parseOptions(["--listen", "tcp:0", *AS_ROOT])


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nrequest_timeout = soon\n", "[server] request_timeout"),
        ("[server]\nrequest_timeout = -1\n", "[server] request_timeout"),
        ("[server]\nrequest_timeout = nan\n", "[server] request_timeout"),
        ("[server]\nsession_lifetime_days = 0\n", "[server] session_lifetime_days"),
        ("[server]\nlisten = tcp:8443\n", "[server] listen"),
        ("[server]\ntls_cert = c.pem\n", "tls_cert and tls_key"),
        ("[limits]\nlogin_failures_per_user = 0\n", "[limits] login_failures_per_user"),
        ("[limits]\nlogin_failures_per_address = 2.5\n", "[limits] login_failures_per_address"),
        ("[limits]\nconnections_per_address = 0\n", "[limits] connections_per_address"),
        ("[server]\nrequest_deadline = -1\n", "[server] request_deadline"),
        ("[auth]\nbackends = local, kerberos\n", "[auth] backends"),
        ("[auth]\nbackends = ,\n", "[auth] backends"),
        ("[auth]\nbackends = local,local\n", "[auth] backends"),
        ("[auth]\nbackends = local, ldap\n", "[auth] backends"),
        ("[database]\nurl = mysql://x\n", "[database] url"),
        ("[storage]\nvolumes = /mnt/nas1\n", "[storage] volumes"),
        ("[storage]\nvolumes = default:/mnt/nas1\n", "[storage] volumes"),
        ("[storage]\nvolumes = a:/x a:/y\n", "[storage] volumes"),
        ("[storage]\nvolumes = Big!:/x\n", "[storage] volumes"),
        ("[server]\ndatadir = x\n", "[server] datadir"),
        ("[sever]\ndata_dir = x\n", "[sever]"),
        ("no section header\n", "smartsync.ini"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_key(text: str, named: str, tmp_path: Path) -> None:
    conf = write(tmp_path / "smartsync.ini", text)
    with pytest.raises(UsageError) as raised:
        load_config(conf, cwd=str(tmp_path))
    assert named in str(raised.value)


def test_storage_volumes_are_named_folders_beside_the_default(tmp_path: Path) -> None:
    conf = write(tmp_path / "etc" / "c.ini", "[storage]\npath = /srv/chunks\nvolumes = nas1:/mnt/nas1, nas2:rel\n")
    config = load_config(conf, cwd=str(tmp_path))
    assert config.volume_folders == {
        "default": "/srv/chunks", "nas1": "/mnt/nas1", "nas2": str(tmp_path / "etc" / "rel"),
    }
    assert load_config(cwd=str(tmp_path)).volume_folders == {"default": str(tmp_path / "data" / "chunks")}


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.ini"), cwd=str(tmp_path))


def test_empty_values_mean_the_default(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.ini", "[server]\nlisten =\ndata_dir =\n[database]\nurl =\n")
    config = load_config(conf, cwd=str(tmp_path))
    assert config.listen == "ssl:8443"
    assert config.data_dir == str(tmp_path / "data")
    assert config.database_url is None


def test_ldap_section_is_handed_to_the_directory_backend(tmp_path: Path) -> None:
    cert_pem, _key = generate_self_signed(["dc1.firm.example"], [], datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    conf = write(
        tmp_path / "c.ini",
        "[auth]\nbackends = local, ldap\n[ldap]\nurls = ldaps://dc1.firm.example\n"
        "base_dn = DC=firm,DC=example\nca_file = ca.pem\n",
    )
    config = load_config(conf, cwd=str(tmp_path))
    assert config.auth_backends == ("local", "ldap")
    assert config.ldap is not None
    assert config.ldap.urls == ["ldaps://dc1.firm.example"]
    assert config.ldap.ca_file == str(tmp_path / "ca.pem")


def test_a_bad_ldap_value_is_a_usage_error(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.ini", "[ldap]\nurls = ftp://dc1\nbase_dn = DC=x\n")
    with pytest.raises(UsageError, match=r"\[ldap\]"):
        load_config(conf, cwd=str(tmp_path))


def test_proxy_protocol_is_yes_or_no(tmp_path: Path) -> None:
    config = tmp_path / "s.ini"
    config.write_text("[server]\nproxy_protocol = yes\n")
    assert load_config(str(config)).proxy_protocol is True
    config.write_text("[server]\nproxy_protocol = perhaps\n")
    with pytest.raises(UsageError, match=r"\[server\] proxy_protocol: bad value 'perhaps'"):
        load_config(str(config))


def test_admin_endpoint_and_drain_time_are_read(tmp_path: Path) -> None:
    assert load_config(cwd=str(tmp_path)).admin_listen is None  # off unless configured
    assert load_config(cwd=str(tmp_path)).drain_seconds == 30
    path = write(
        tmp_path / "s.ini",
        "[admin]\nlisten = tcp:9100:interface=127.0.0.1\n[server]\ndrain_seconds = 5\n",
    )
    config = load_config(path, cwd=str(tmp_path))
    assert config.admin_listen == "tcp:9100:interface=127.0.0.1"
    assert config.drain_seconds == 5
    config = load_config(write(tmp_path / "t.ini", "[admin]\nlisten = ssl:9443\n"), cwd=str(tmp_path))
    assert config.admin_listen == "ssl:9443"


@pytest.mark.parametrize(
    "text, named",
    [
        ("[admin]\nlisten = unix:/tmp/x\n", "[admin] listen"),
        ("[admin]\nlisten = tcp:\n", "[admin] listen"),
        ("[admin]\nlisten = ssl:9443:sslmethod=TLSv1_METHOD\n", "[admin] listen"),
        ("[admin]\nport = 9100\n", "[admin] port"),
        ("[server]\ndrain_seconds = -1\n", "[server] drain_seconds"),
    ],
)
def test_bad_admin_settings_are_usage_errors(text: str, named: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(named)):
        load_config(write(tmp_path / "s.ini", text), cwd=str(tmp_path))


def test_warn_free_mb_is_read(tmp_path: Path) -> None:
    assert load_config(cwd=str(tmp_path)).warn_free_mb == 1024
    config = load_config(write(tmp_path / "s.ini", "[storage]\nwarn_free_mb = 50\n"), cwd=str(tmp_path))
    assert config.warn_free_mb == 50
    with pytest.raises(UsageError, match=re.escape("[storage] warn_free_mb")):
        load_config(write(tmp_path / "t.ini", "[storage]\nwarn_free_mb = 0\n"), cwd=str(tmp_path))


def test_status_page_admins_are_read(tmp_path: Path) -> None:
    config = load_config(cwd=str(tmp_path))
    assert (config.admin_users, config.admin_groups) == ((), ())  # nobody unless configured
    cert_pem, _key = generate_self_signed(["dc1.firm.example"], [], datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    ldap = ("[auth]\nbackends = local, ldap\n[ldap]\nurls = ldaps://dc1.firm.example\n"
            "base_dn = DC=firm,DC=example\nca_file = ca.pem\n")
    text = ("[admin]\nlisten = ssl:9443\nusers = ops, it-lead  backup\n"
            "groups = CN=SmartSync Admins,OU=Groups,DC=firm,DC=example\n"
            "  S-1-5-21-1-2-3-512; IT Staff\n")
    config = load_config(write(tmp_path / "s.ini", ldap + text), cwd=str(tmp_path))
    assert config.admin_users == ("ops", "it-lead", "backup")
    assert config.admin_groups == (
        "CN=SmartSync Admins,OU=Groups,DC=firm,DC=example", "S-1-5-21-1-2-3-512", "IT Staff")
    # groups are the directory's: without the ldap backend they could never match
    with pytest.raises(UsageError, match=re.escape("[admin] groups needs 'ldap'")):
        load_config(write(tmp_path / "t.ini", "[admin]\ngroups = IT Staff\n"), cwd=str(tmp_path))
